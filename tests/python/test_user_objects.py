"""User objects through fargpu (client_stub/userobj.c, server/replay/userobj.c, server/sim/sim_userobj.c), end to
end with the real stub, node agent, worker and simulated device: the object lives on the node, counts the
application's references and those graphs and executables own (retained, moved, released, copied into an
executable), and when the last goes its destructor runs in the client process, once, with its pointer, on the
callback connection. Bad arguments are refused as the driver refuses them (at once for the creation, with the next
synchronising call for the forwarded asynchronous releases)."""

from __future__ import annotations

import time

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
import threading, time
ctx = ctx0()
ran = []
main = threading.get_ident()
DESTROY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
@DESTROY
def destroy(p):
    ran.append((p, threading.get_ident() != main))
def wait_for(n, what):
    ok(cu.cuCtxSynchronize(), "sync " + what)
    deadline = time.monotonic() + 10
    while len(ran) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(ran)
NO_SYNC, MOVE = 1, 1
obj = ctypes.c_void_p()
ok(cu.cuUserObjectCreate(ctypes.byref(obj), ctypes.c_void_p(0x1234), destroy, 1, NO_SYNC), "create")
ok(cu.cuUserObjectRetain(obj, 2), "retain")
ok(cu.cuUserObjectRelease(obj, 2), "release 2")
g = ctypes.c_void_p()
ok(cu.cuGraphCreate(ctypes.byref(g), 0), "graph")
ok(cu.cuGraphRetainUserObject(g, obj, 1, 0), "graph retain")
ok(cu.cuUserObjectRelease(obj, 1), "release the application's")
print("after the application's release", wait_for(0, "a"))
n = ctypes.c_void_p()
ok(cu.cuGraphAddEmptyNode(ctypes.byref(n), g, None, 0), "node")
ex = ctypes.c_void_p()
ok(cu.cuGraphInstantiateWithFlags(ctypes.byref(ex), g, ctypes.c_ulonglong(0)), "instantiate")
ok(cu.cuGraphDestroy(g), "graph destroy")
print("after the graph went", wait_for(0, "b"))
ok(cu.cuGraphLaunch(ex, None), "launch")
ok(cu.cuGraphExecDestroy(ex), "exec destroy")
print("after the executable went", wait_for(1, "c"), ran[0][0] == 0x1234, "on another thread", ran[0][1])
obj2 = ctypes.c_void_p()
ok(cu.cuUserObjectCreate(ctypes.byref(obj2), ctypes.c_void_p(0x5678), destroy, 1, NO_SYNC), "create 2")
g2 = ctypes.c_void_p()
ok(cu.cuGraphCreate(ctypes.byref(g2), 0), "graph 2")
ok(cu.cuGraphRetainUserObject(g2, obj2, 1, MOVE), "graph retain (move)")
print("moved", wait_for(1, "d"))
ok(cu.cuGraphReleaseUserObject(g2, obj2, 1), "graph release")
print("released by the graph", wait_for(2, "e"), ran[1][0] == 0x5678)
print("graph releases more than it holds", cu.cuGraphReleaseUserObject(g2, obj2, 1), cu.cuCtxSynchronize())
bad = ctypes.c_void_p()
print("flags 0", cu.cuUserObjectCreate(ctypes.byref(bad), None, destroy, 1, 0))
print("no destructor", cu.cuUserObjectCreate(ctypes.byref(bad), None, None, 1, NO_SYNC))
print("zero references", cu.cuUserObjectCreate(ctypes.byref(bad), None, destroy, 0, NO_SYNC))
obj3 = ctypes.c_void_p()
ok(cu.cuUserObjectCreate(ctypes.byref(obj3), None, destroy, 1, NO_SYNC), "create 3")
print("release twice the references", cu.cuUserObjectRelease(obj3, 2), cu.cuCtxSynchronize())
ok(cu.cuUserObjectRelease(obj3, 1), "release 3")
print("destructors run", wait_for(3, "f"), "of", len(ran))
time.sleep(0.2)
print("each once", len(ran))
# Left for the session's end: an object the application and a graph still hold.
obj4 = ctypes.c_void_p()
ok(cu.cuUserObjectCreate(ctypes.byref(obj4), None, destroy, 1, NO_SYNC), "create 4")
g4 = ctypes.c_void_p()
ok(cu.cuGraphCreate(ctypes.byref(g4), 0), "graph 4")
ok(cu.cuGraphRetainUserObject(g4, obj4, 1, 0), "graph retain 4")
ok(cu.cuCtxSynchronize(), "sync 4")
'''


def test_user_object_destructors_run_in_the_client(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()[-3000:]
    out = r.stdout.splitlines()
    assert "after the application's release 0" in out and "after the graph went 0" in out, out
    assert "after the executable went 1 True on another thread True" in out, out
    assert "moved 1" in out and "released by the graph 2 True" in out, out
    assert "graph releases more than it holds 0 1" in out, out  # CUDA_ERROR_INVALID_VALUE at the next sync
    assert "flags 0 1" in out and "no destructor 1" in out and "zero references 1" in out, out
    assert "release twice the references 0 1" in out, out
    assert "destructors run 3 of 3" in out and "each once 3" in out, out
    # The worker closes the session with the object still held (its graph goes at the end): no crash.
    deadline = time.monotonic() + 10
    while "(worker exit" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log_text()
    assert "(worker exit 0)" in log, log[-3000:]
