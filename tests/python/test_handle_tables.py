"""The worker's handle tables (server/replay/handles.c) past their first capacity: hundreds of events made through
the stub, half destroyed, their slots handed out again, and every live one still names its own event (recorded,
synchronised, queried), on the simulated device."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
ctx0()
def make(n):
    out = []
    for _ in range(n):
        e = ctypes.c_void_p()
        ok(cu.cuEventCreate(ctypes.byref(e), 0), "create")
        out.append(e)
    return out
first = make(300)
assert len({e.value for e in first}) == 300, "ids repeat"
for e in first[::2]:
    ok(cu.cuEventDestroy_v2(e), "destroy")
again = make(400)  # 150 freed slots first, then the table grows past 512
live = first[1::2] + again
assert len({e.value for e in live}) == len(live), "a live id handed out twice"
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
for e in live:
    ok(cu.cuEventRecord(e, s), "record")
ok(cu.cuStreamSynchronize(s), "sync")
done = sum(cu.cuEventQuery(e) == 0 for e in live)
ms = ctypes.c_float()
ok(cu.cuEventElapsedTime_v2(ctypes.byref(ms), live[0], live[-1]), "elapsed")
print("LIVE", len(live), "DONE", done)
'''


def test_hundreds_of_handles_keep_their_ids_through_growth_and_reuse(node_server: NodeServer) -> None:
    r = run_client(CLIENT, node_server.client_env(), timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "LIVE 550 DONE 550" in r.stdout, r.stdout
