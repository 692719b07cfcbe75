"""Stream capture into an existing graph (cuStreamBeginCaptureToGraph), on the simulated device loaded directly and
through fargpu: the same calls must give the same answers. A capture that the stream's own synchronisation
invalidates leaves the application's graph alive and its own (the node must not forget its id, or the next call on
the graph fails), and a second capture into the same graph from the same node then runs: the launch writes the
captured memset's value. Edge data other than the default is refused by the simulated device (a test double)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cuda_ctypes import SIM_DIRECT
from e2e_helpers import start_server, stop_server

from fargpu import paths

SNIPPET = SIM_DIRECT + r'''
C = U64
N = 1024
d = C(); ok(cu.cuMemAlloc_v2(ctypes.byref(d), ctypes.c_size_t(N * 4)), "alloc")
ok(cu.cuMemsetD32_v2(d, 0, ctypes.c_size_t(N)), "memset")
g = V(); ok(cu.cuGraphCreate(ctypes.byref(g), 0), "graph")
e = V(); ok(cu.cuGraphAddEmptyNode(ctypes.byref(e), g, None, ctypes.c_size_t(0)), "empty")
deps = (V * 1)(e)
out = {}
def begin(edges=None):
    return cu.cuStreamBeginCaptureToGraph(s, g, deps, edges, ctypes.c_size_t(1), 2)  # relaxed
def nodes():
    n = ctypes.c_size_t()
    return [cu.cuGraphGetNodes(g, None, ctypes.byref(n)), n.value]
edge = (ctypes.c_ubyte * 8)(0, 0, 1, 0, 0, 0, 0, 0)  # CUgraphEdgeData with type 1 (programmatic)
out["begin_with_edge_data"] = begin(edge)
out["begin"] = begin()
out["sync_while_capturing"] = cu.cuStreamSynchronize(s)
st = ctypes.c_int(-1)
out["status"] = [cu.cuStreamIsCapturing(s, ctypes.byref(st)), st.value]
g2 = V(1)
out["end_invalidated"] = [cu.cuStreamEndCapture(s, ctypes.byref(g2)), g2.value is None]
out["nodes_after_failure"] = nodes()
out["begin_again"] = begin()
ok(cu.cuMemsetD32Async(d, 7, ctypes.c_size_t(N), s), "captured memset")
info_g = V()
st2 = ctypes.c_int(-1)
out["capture_graph_is_given"] = [cu.cuStreamGetCaptureInfo_v3(s, ctypes.byref(st2), None, ctypes.byref(info_g), None,
                                                             None, None), st2.value, info_g.value == g.value]
g3 = V()
out["end"] = [cu.cuStreamEndCapture(s, ctypes.byref(g3)), g3.value == g.value]
out["nodes_after_capture"] = nodes()
ex = V(); ok(cu.cuGraphInstantiateWithFlags(ctypes.byref(ex), g, C(0)), "instantiate")
ok(cu.cuGraphLaunch(ex, s), "launch"); ok(cu.cuStreamSynchronize(s), "sync")
buf = (ctypes.c_uint32 * N)()
ok(cu.cuMemcpyDtoH_v2(buf, d, ctypes.c_size_t(N * 4)), "dtoh")
out["launched"] = sorted(set(buf))
out["destroy"] = [cu.cuGraphExecDestroy(ex), cu.cuGraphDestroy(g)]
print(json.dumps(out))
'''


def _run(lib: str, env: dict[str, str]) -> dict[str, object]:
    res = subprocess.run([sys.executable, "-P", "-c", SNIPPET, lib], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_capture_into_an_existing_graph_through_fargpu_as_on_the_device(tmp_path: Path) -> None:
    native = _run(str(paths.sim_lib()), dict(os.environ))
    s = start_server(tmp_path)
    try:
        remote = _run("libcuda.so.1", s.client_env())
    finally:
        stop_server(s)
    assert remote == native, (remote, native)
    assert native["begin_with_edge_data"] == 801  # CUDA_ERROR_NOT_SUPPORTED: the simulated device's limit
    assert native["begin"] == 0 and native["sync_while_capturing"] == 900  # STREAM_CAPTURE_UNSUPPORTED
    assert native["status"] == [0, 2]  # CU_STREAM_CAPTURE_STATUS_INVALIDATED
    assert native["end_invalidated"] == [901, True]  # STREAM_CAPTURE_INVALIDATED, no graph handed out
    assert native["nodes_after_failure"] == [0, 1]  # the application's graph, still alive, with its own node
    assert native["begin_again"] == 0 and native["capture_graph_is_given"] == [0, 1, True]
    assert native["end"] == [0, True] and native["nodes_after_capture"] == [0, 2]
    assert native["launched"] == [7] and native["destroy"] == [0, 0]
