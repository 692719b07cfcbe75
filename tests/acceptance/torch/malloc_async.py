"""Acceptance: PyTorch on the driver's stream-ordered allocator (PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync,
set here before torch starts): a small MLP fitted to one batch for a few steps (fp32, TF32 off, fixed seeds), tensors
of many sizes allocated and freed in a loop, a tensor used on a second stream (record_stream), empty_cache (a pool
trim), and a forward pass captured as a CUDA graph (torch.cuda.graph: its intermediate tensors are cudaMallocAsync /
cudaFreeAsync under stream capture, so graph allocation and free nodes) replayed twice on new inputs, each replay
equal to the same forward pass run eagerly (rtol 1e-5). CPU checks: the first step's loss against the same step on
the CPU, rtol 1e-4; the trained weights' sum within 1e-3 relative (at least 1e-3 absolute); the loop's checksum
exact. Native vs remote: losses, sums and the graph replays' sums rtol 1e-6, the loop's checksum exact."""

from __future__ import annotations

import os

os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"

import torch  # noqa: E402
from _common import emit_values, finish, setup  # noqa: E402

setup()


def model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).to(device)


def train(device: str, steps: int) -> tuple[list[float], float]:
    m = model(device)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 256, generator=g).to(device)  # one batch, fitted step by step: its loss must go down
    y = torch.randint(0, 10, (64,), generator=g).to(device)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, sum(p.double().sum().item() for p in m.parameters())


backend = torch.cuda.get_allocator_backend()
losses, wsum = train("cuda", 5)
cpu_losses, cpu_wsum = train("cpu", 5)

checksum = 0
for i in range(200):  # many sizes, allocated and freed in stream order
    t = torch.full((1 + (i * 7919) % 50000,), i % 13, dtype=torch.int32, device="cuda")
    checksum += int(t.sum().item())
want = sum((1 + (i * 7919) % 50000) * (i % 13) for i in range(200))

side = torch.cuda.Stream()
a = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    b = a * 2
    b.record_stream(side)
torch.cuda.current_stream().wait_stream(side)
bsum = b.double().sum().item()
del a, b
torch.cuda.synchronize()
torch.cuda.empty_cache()

# a forward pass captured as a CUDA graph with the async backend, replayed on new inputs
gm = model("cuda").eval()
static_x = torch.zeros(64, 256, device="cuda")
warm = torch.cuda.Stream()
warm.wait_stream(torch.cuda.current_stream())
with torch.no_grad(), torch.cuda.stream(warm):
    for _ in range(3):
        gm(static_x)
torch.cuda.current_stream().wait_stream(warm)
graph = torch.cuda.CUDAGraph()
with torch.no_grad(), torch.cuda.graph(graph):
    static_y = gm(static_x)
replay_sums, replays_match = [], True
for k in range(2):
    xk = torch.randn(64, 256, generator=torch.Generator().manual_seed(10 + k)).to("cuda")
    static_x.copy_(xk)
    graph.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        eager = gm(xk)
    replays_match = replays_match and bool(torch.allclose(static_y, eager, rtol=1e-5, atol=1e-6))
    replay_sums.append(float(static_y.double().sum().item()))
del graph, static_y
torch.cuda.synchronize()

print("allocator backend", backend)
checks = {
    "the cudaMallocAsync backend is in use": backend == "cudaMallocAsync",
    "first loss vs CPU": abs(losses[0] - cpu_losses[0]) <= 1e-4 * abs(cpu_losses[0]),
    "trained weights vs CPU": abs(wsum - cpu_wsum) <= 1e-3 * max(1.0, abs(cpu_wsum)),
    "loss went down": losses[-1] < losses[0],
    "alloc/free loop checksum": checksum == want,
    "second stream result": bsum == float(2 * sum(range(1 << 20))),
    "CUDA graph captured with the async backend, replayed twice, equals eager": replays_match
    and replay_sums[0] != replay_sums[1],
}
emit_values(
    {
        "losses": losses,
        "weights_sum": wsum,
        "loop_checksum": checksum,
        "side_sum": bsum,
        "graph_replay_sums": replay_sums,
    },
    {"losses": {"rtol": 1e-6}, "weights_sum": {"rtol": 1e-6}, "graph_replay_sums": {"rtol": 1e-6}},
)
finish(checks)
