"""fargpu: GPU-as-a-service. An unmodified CUDA program runs on a host with no GPU; its driver calls are
forwarded by the fargpu libcuda stub to a node server that replays them on a real (or simulated) GPU."""

__version__ = "0.1.0"
