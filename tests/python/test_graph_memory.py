"""Graph memory nodes and borrowed graphs through fargpu, on the simulated device, with ctypes against the stub:
what the acceptance programs cannot show natively (the emulation's own rules, client_stub/graph_mem.c).

- An allocation node's memory counts against the lease's quota (an allocation node over it fails with
  CUDA_ERROR_OUT_OF_MEMORY) and shows in the graph-memory attributes.
- It lives while a graph holding its node does: a clone keeps it after the original goes, and it goes with the
  last of them; a launch without a free node hands it to the application, which frees it with cuMemFree; a
  cuMemFree while its graphs live only marks it free.
- A child graph with memory nodes is refused, as the driver refuses it.
- A child graph handed out by cuGraphChildGraphNodeGetGraph belongs to its node: the session refuses to destroy
  it, it can be changed in place, and its id dies with its parent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cuda_ctypes import TYPED_PRELUDE
from e2e_helpers import start_server, stop_server

MiB = 1 << 20

SNIPPET = (
    TYPED_PRELUDE
    + r"""
ctx0()
class AllocParams(ctypes.Structure):  # CUDA_MEM_ALLOC_NODE_PARAMS: pool properties (88 bytes), access, size, dptr
    _fields_ = [("allocType", ctypes.c_int), ("handleTypes", ctypes.c_int), ("locType", ctypes.c_int),
                ("locId", ctypes.c_int), ("rest", ctypes.c_ubyte * 72), ("accessDescs", V),
                ("accessDescCount", ctypes.c_size_t), ("bytesize", ctypes.c_size_t), ("dptr", U64)]
assert ctypes.sizeof(AllocParams) == 120
def graph():
    g = V(); ok(cu.cuGraphCreate(ctypes.byref(g), 0), "graph"); return g
def alloc_node(g, n):
    p = AllocParams(allocType=1, locType=1, locId=0, bytesize=n)
    node = V()
    r = cu.cuGraphAddMemAllocNode(ctypes.byref(node), g, None, ctypes.c_size_t(0), ctypes.byref(p))
    return r, node, p.dptr
def used():
    v = U64(); ok(cu.cuDeviceGetGraphMemAttribute(0, 0, ctypes.byref(v)), "attr"); return v.value >> 20
def readable(p):
    b = ctypes.create_string_buffer(16)
    return cu.cuMemcpyDtoH_v2(b, U64(p), ctypes.c_size_t(16)) == 0
def launch(g):
    e = V(); ok(cu.cuGraphInstantiateWithFlags(ctypes.byref(e), g, ctypes.c_ulonglong(0)), "inst")
    ok(cu.cuGraphLaunch(e, None), "launch"); ok(cu.cuCtxSynchronize(), "sync"); return e

g = graph()
r, a, p = alloc_node(g, 16 << 20); ok(r, "alloc node")
print("over quota", alloc_node(g, 128 << 20)[0])
print("used", used())
ok(cu.cuMemsetD8_v2(U64(p), ctypes.c_ubyte(7), ctypes.c_size_t(16 << 20)), "memset")
t = ctypes.c_int(); ok(cu.cuGraphNodeGetType(a, ctypes.byref(t)), "type"); print("type", t.value)
c = V(); ok(cu.cuGraphClone(ctypes.byref(c), g), "clone")
ca = V(); ok(cu.cuGraphNodeFindInClone(ctypes.byref(ca), a, c), "find")
ok(cu.cuGraphNodeGetType(ca, ctypes.byref(t)), "type"); print("clone type", t.value)
ok(cu.cuGraphDestroy(g), "destroy")
print("after the original went", used(), readable(p))
ok(cu.cuGraphDestroy(c), "destroy clone")
print("after the clone went", used(), readable(p))

g = graph(); r, a, p = alloc_node(g, 8 << 20); ok(r, "alloc node")
e = launch(g)
ok(cu.cuGraphExecDestroy(e), "exec destroy"); ok(cu.cuGraphDestroy(g), "destroy")
print("handed over", used(), readable(p))
print("freed by the application", cu.cuMemFree_v2(U64(p)), used(), readable(p))

g = graph(); r, a, p = alloc_node(g, 8 << 20); ok(r, "alloc node")
fr = V(); ok(cu.cuGraphAddMemFreeNode(ctypes.byref(fr), g, ctypes.byref(a), ctypes.c_size_t(1), U64(p)), "free node")
e = launch(g)
print("free while held", cu.cuMemFree_v2(U64(p)), used(), readable(p))
parent = graph(); ch = V()
print("child with memory nodes", cu.cuGraphAddChildGraphNode(ctypes.byref(ch), parent, None, ctypes.c_size_t(0), g))
ok(cu.cuGraphExecDestroy(e), "exec destroy"); ok(cu.cuGraphDestroy(g), "destroy")
print("all gone", used(), readable(p))

child = graph(); x = V()
ok(cu.cuGraphAddEmptyNode(ctypes.byref(x), child, None, ctypes.c_size_t(0)), "empty")
ok(cu.cuGraphAddChildGraphNode(ctypes.byref(ch), parent, None, ctypes.c_size_t(0), child), "child node")
b = V(); ok(cu.cuGraphChildGraphNodeGetGraph(ch, ctypes.byref(b)), "get child")
print("destroy a borrowed graph", cu.cuGraphDestroy(b))
ok(cu.cuGraphAddEmptyNode(ctypes.byref(x), b, None, ctypes.c_size_t(0)), "change in place")
n = ctypes.c_size_t(0); ok(cu.cuGraphGetNodes(b, None, ctypes.byref(n)), "nodes"); print("child nodes", n.value)
ok(cu.cuGraphDestroy(parent), "destroy parent")
print("borrowed after its parent", cu.cuGraphGetNodes(b, None, ctypes.byref(n)))
print("END")
"""
)


def test_graph_memory_rules_and_borrowed_graphs(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--vram-quota", str(64 * MiB))
    try:
        r = subprocess.run([sys.executable, "-P", "-c", SNIPPET], env=s.client_env(), capture_output=True,
                           text=True, timeout=60, cwd="/")
        lines = [ln.strip() for ln in r.stdout.splitlines()]
        why = f"{r.stdout}\n{r.stderr}\n{s.log_text()[-2000:]}"
        assert r.returncode == 0 and lines and lines[-1] == "END", why
        assert "over quota 2" in lines, why  # CUDA_ERROR_OUT_OF_MEMORY: graph memory counts against the quota
        assert "used 16" in lines and "type 10" in lines and "clone type 10" in lines, why  # MEM_ALLOC
        assert "after the original went 16 True" in lines, why
        assert "after the clone went 0 False" in lines, why
        assert "handed over 8 True" in lines and "freed by the application 0 0 False" in lines, why
        assert "free while held 0 8 True" in lines, why
        assert "child with memory nodes 1" in lines, why  # CUDA_ERROR_INVALID_VALUE, as the driver
        assert "all gone 0 False" in lines, why
        assert "destroy a borrowed graph 1" in lines and "child nodes 2" in lines, why
        assert "borrowed after its parent 400" in lines, why  # CUDA_ERROR_INVALID_HANDLE: its id went
    finally:
        stop_server(s)
