"""fargpu: GPU-as-a-service. An unmodified CUDA program runs on a host with no GPU; its driver calls are
forwarded by the fargpu libcuda stub to a node server that replays them on a real (or simulated) GPU."""

import os

__version__ = "0.1.0"

# gRPC's fork support makes fork() run gRPC's handlers, which restart its threads in the child; fargpu never needs
# them (its processes that fork exec at once, and workers start through posix_spawn: server/spawn.py). The C core
# takes this up early (set after grpc was imported it had no effect), so it is set here, before any fargpu module
# imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
