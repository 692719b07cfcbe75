"""What the stub keeps for a resume (client_stub/reconnect.c, issue 13): the async batches it sends without waiting
for a reply stay kept until a reply covers them, and past half of FARGPU_RESUME_KEEP_MB the next async call asks for
one (a PING), so a long run of async work stays resumable instead of outgrowing the limit; with FARGPU_RESUME=off
nothing is kept and no PING is asked for. The data arrives the same either way. End to end on the simulated device
(the resend itself is tested in test_park.py)."""

from __future__ import annotations

import re

import pytest
from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

# 64 async copies of 128 KiB (inline in their batches, each sent at once: over 64 KiB), no sync in between.
ASYNC = PRELUDE + r'''
ctx0()
n = 128 << 10
r, dev = alloc(4 * n); ok(r, "alloc")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
src = ctypes.create_string_buffer(n)
for i in range(64):
    ctypes.memset(src, i, n)
    ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(dev + (i % 4) * n), src, ctypes.c_size_t(n), s), "htod")
ok(cu.cuStreamSynchronize(s), "sync")
out = ctypes.create_string_buffer(4 * n)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(dev), ctypes.c_size_t(4 * n)), "dtoh")
print("DATA", all(out.raw[k * n:(k + 1) * n] == bytes([60 + k]) * n for k in range(4)))
'''


def pings(stderr: str) -> int:
    m = re.search(r"^\s+FG_PING\s+\w+\s+sent\s+(\d+)", stderr, re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("resume", ["on", "off"])
def test_async_work_stays_resumable_within_the_keep_limit(server: NodeServer, resume: str) -> None:
    r = run_client(ASYNC, server.client_env(FARGPU_RESUME_KEEP_MB="4", FARGPU_RESUME=resume, FARGPU_STATS="1"))
    assert "DATA True" in r.stdout, r.stdout + r.stderr
    if resume == "on":  # 8 MiB of batches against a 2 MiB threshold: replies were asked for along the way
        assert pings(r.stderr) >= 2, r.stderr
    else:
        assert pings(r.stderr) == 0, r.stderr
