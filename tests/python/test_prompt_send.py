"""Prompt sending (client_stub/sender.c): async work reaches the server while the application keeps going, without
waiting for the next synchronising call, so the GPU overlaps with the application instead of idling until a sync.

A host function is the observable: the server runs it (through the client's callback connection) only once it has
received the batch holding it. The client queues one, makes no further CUDA call, and waits: with prompt sending
the function runs; with FARGPU_SEND_AFTER_US=0 (prompt sending off) it cannot run until a sync call sends the batch.
End to end with the real stub, node agent, worker and simulated device."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
import threading, time
ctx0()
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
ran = threading.Event()
HOSTFN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
fn = HOSTFN(lambda _: ran.set())
dptr = ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(dptr), 4096), "alloc")
ok(cu.cuMemsetD8Async(dptr, 7, 4096, s), "memset")
ok(cu.cuLaunchHostFunc(s, fn, None), "hostfunc")
t0 = time.monotonic()
ran.wait(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
print("RAN_BEFORE_SYNC", ran.is_set(), round(time.monotonic() - t0, 3))
ok(cu.cuStreamSynchronize(s), "sync")
print("RAN_AFTER_SYNC", ran.is_set())
'''



def test_async_work_is_sent_without_a_sync_call(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    assert "RAN_BEFORE_SYNC True" in r.stdout, r.stdout + r.stderr
    assert "RAN_AFTER_SYNC True" in r.stdout


def test_with_prompt_sending_off_work_waits_for_the_sync_call(server: NodeServer) -> None:
    """The control: the same client with FARGPU_SEND_AFTER_US=0 only gets its host function run by the sync."""
    r = run_client(CLIENT.replace("else 3.0", "else 1.0"), server.client_env(FARGPU_SEND_AFTER_US="0"), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    assert "RAN_BEFORE_SYNC False" in r.stdout, r.stdout + r.stderr
    assert "RAN_AFTER_SYNC True" in r.stdout


STRESS = PRELUDE + r'''
import threading
ctx = ctx0()
N, ROUNDS, THREADS = 1 << 16, 400, 4
results, errors = {}, []
def work(t):
    try:
        ok(cu.cuCtxSetCurrent(ctx), "set current")
        s = ctypes.c_void_p()
        ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
        d = ctypes.c_uint64()
        ok(cu.cuMemAlloc_v2(ctypes.byref(d), N), "alloc")
        for i in range(ROUNDS):
            ok(cu.cuMemsetD8Async(d, (t * 50 + i) & 0xFF, N, s), "memset")
            if i % 37 == 0:
                ok(cu.cuStreamSynchronize(s), "sync")
        ok(cu.cuStreamSynchronize(s), "final sync")
        host = (ctypes.c_ubyte * N)()
        ok(cu.cuMemcpyDtoH_v2(host, d, N), "dtoh")
        results[t] = set(bytes(host))
    except SystemExit:
        errors.append(t)
threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
for th in threads: th.start()
for th in threads: th.join()
print("RESULTS", sorted((t, sorted(v)) for t, v in results.items()), "ERRORS", errors)
'''


def test_many_threads_with_an_eager_sender_keep_order(server: NodeServer) -> None:
    """Several threads queue async work and synchronise while the sender sends every microsecond: each thread's
    last write wins on its own buffer (no batch lost, reordered or torn between the sender and the callers)."""
    r = run_client(STRESS, server.client_env(FARGPU_SEND_AFTER_US="1"), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    want = [(t, [(t * 50 + 399) & 0xFF]) for t in range(4)]
    assert f"RESULTS {want} ERRORS []" in r.stdout, r.stdout + r.stderr
