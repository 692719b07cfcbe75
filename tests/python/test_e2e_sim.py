"""End to end on the simulated device: the real stub, the real protocol, the real node server and worker.
(The simulated device is a test double; no GPU claim rests on these tests.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client, start_server, stop_server, wait_process_gone

CUDA_ERROR_INVALID_HANDLE = 400
CUDA_ERROR_OUT_OF_MEMORY = 2
CUDA_ERROR_NOT_PERMITTED = 800
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_DEVICE_UNAVAILABLE = 46


def test_round_trip_copies_and_memset(node_server: NodeServer) -> None:
    code = PRELUDE + r'''
ctx0()
r, p = alloc(1 << 22); ok(r, "alloc")
src = bytes(range(256)) * (1 << 14)
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), src, ctypes.c_size_t(len(src))), "htod")
dst = ctypes.create_string_buffer(len(src))
ok(cu.cuMemcpyDtoH_v2(dst, ctypes.c_uint64(p), ctypes.c_size_t(len(src))), "dtoh")
assert dst.raw == src
ok(cu.cuMemsetD32_v2(ctypes.c_uint64(p), ctypes.c_uint(0xA5A5A5A5), ctypes.c_size_t(16)), "memset")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
out = ctypes.create_string_buffer(64)
ok(cu.cuMemcpyDtoHAsync_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(64), s), "dtoh async")
ok(cu.cuStreamSynchronize(s), "sync")
assert out.raw == b"\xa5" * 64, out.raw
ok(cu.cuMemFree_v2(ctypes.c_uint64(p)), "free")
print("OK")
'''
    res = run_client(code, node_server.client_env())
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


def test_bad_token_is_refused_with_a_reason(node_server: NodeServer) -> None:
    code = PRELUDE + "print(cu.cuInit(0))"
    res = run_client(code, node_server.client_env(FARGPU_TOKEN="wrong"))
    assert res.stdout.strip() == str(CUDA_ERROR_NOT_PERMITTED)
    assert "refused the session: invalid token" in res.stderr
    assert "wrong" not in node_server.log_text()  # tokens never reach the log


def test_unreachable_server_fails_cuinit_naming_the_endpoint(node_server: NodeServer) -> None:
    res = run_client(PRELUDE + "print(cu.cuInit(0))", node_server.client_env(FARGPU_SERVER="127.0.0.1:1"))
    assert res.stdout.strip() == str(CUDA_ERROR_NO_DEVICE)
    assert "cannot reach the fargpu node server at 127.0.0.1:1" in res.stderr


def test_handles_from_another_session_are_rejected(node_server: NodeServer) -> None:
    leak = run_client(PRELUDE + r'''
ctx0(); s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream"); print(s.value)
''', node_server.client_env())
    assert leak.returncode == 0, leak.stderr
    foreign = int(leak.stdout.strip())
    res = run_client(PRELUDE + f'''
ctx0(); s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 0), "own stream")
print(cu.cuStreamSynchronize(ctypes.c_void_p({foreign})), cu.cuStreamSynchronize(s))
''', node_server.client_env())
    assert res.stdout.split() == [str(CUDA_ERROR_INVALID_HANDLE), "0"], res.stdout + res.stderr


def test_killed_client_leaves_no_worker_behind(node_server: NodeServer) -> None:
    """A client killed mid-session ends its session: its worker (which holds every device resource of the
    session; fgs_close frees them, checked against the device by tests/c/fuzz_server.c) exits."""
    import re

    holder = subprocess.Popen([sys.executable, "-P", "-c", PRELUDE + r'''
ctx0()
for _ in range(8):
    r, p = alloc(64 << 20); ok(r, "alloc")
print("HELD", flush=True)
import time; time.sleep(60)
'''], env=node_server.client_env(), stdout=subprocess.PIPE, text=True, cwd="/")
    assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
    pid = int(re.findall(r"-> worker (\d+)", node_server.log_text())[-1])
    os.kill(pid, 0)  # the session's worker is alive while the client is
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    wait_process_gone(pid, "the worker outlived its killed client")
    time.sleep(0.3)
    assert re.search(r"session \w+ ended after [\d.]+s: client disconnected", node_server.log_text())


def test_vram_quota_is_enforced(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    srv = start_server(Path(tmp_path), "--vram-quota", str(256 << 20))
    try:
        res = run_client(PRELUDE + r'''
ctx0()
r1, p1 = alloc(200 << 20)
r2, p2 = alloc(100 << 20)
f, t = meminfo()
print(json.dumps([r1, r2, t]))
'''.replace("print(json", "import json; print(json"), srv.client_env())
        r1, r2, total = json.loads(res.stdout)
        assert (r1, r2) == (0, CUDA_ERROR_OUT_OF_MEMORY), res.stderr
        assert total == 256 << 20
    finally:
        stop_server(srv)


def test_server_ending_a_session_reaches_the_client(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    srv = start_server(Path(tmp_path))
    try:
        client = subprocess.Popen([sys.executable, "-P", "-c", PRELUDE + r'''
ctx0(); print("UP", flush=True)
import time
time.sleep(3)
s = ctypes.c_void_p(); print("AFTER", cu.cuStreamCreate(ctypes.byref(s), 0), flush=True)
'''], env=srv.client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert client.stdout is not None and client.stdout.readline().strip() == "UP"
        stop_server(srv)  # SIGTERM: the node ends every session with a reason
        out, err = client.communicate(timeout=30)
        assert f"AFTER {CUDA_ERROR_DEVICE_UNAVAILABLE}" in out
        assert "shutting down" in err
    finally:
        if srv.proc.poll() is None:
            stop_server(srv)


def test_unix_socket_endpoint(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    sock = Path("/tmp") / f"fargpu-test-{os.getpid()}.sock"
    srv = start_server(Path(tmp_path), "--unix", str(sock))
    try:
        res = run_client(PRELUDE + r'''
ctx0(); r, p = alloc(1 << 20); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(p), ctypes.c_ubyte(9), ctypes.c_size_t(8)), "memset")
out = ctypes.create_string_buffer(8); ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(8)), "dtoh")
print(out.raw.hex())
''', srv.client_env(FARGPU_SERVER=str(sock)))
        assert res.stdout.strip() == "09" * 8, res.stderr
    finally:
        stop_server(srv)


def test_node_server_exports_prometheus_metrics(node_server: NodeServer) -> None:
    import re
    import urllib.request

    port = int(re.findall(r"metrics on http://127.0.0.1:(\d+)/metrics", node_server.log_text())[-1])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "fargpu_node_vram_used_bytes" in body and "fargpu_node_gpu_vram_total_bytes" in body


def test_worker_logs_how_busy_its_session_kept_it(tmp_path: os.PathLike[str]) -> None:
    """When a session ends, its worker logs how many records it replayed in how many frames, and what share of the
    connected time replaying took: the first thing to read when a remote program runs slower than native."""
    code = PRELUDE + r'''
ctx0()
r, p = alloc(1 << 20); ok(r, "alloc")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
for i in range(200):
    ok(cu.cuMemsetD8Async(ctypes.c_uint64(p), ctypes.c_ubyte(i), ctypes.c_size_t(4096), s), "memset")
ok(cu.cuStreamSynchronize(s), "sync")
print("OK")
'''
    s = start_server(tmp_path)
    try:
        res = run_client(code, s.client_env())
        assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
        deadline = time.monotonic() + 10
        pattern = re.compile(r"served (\d+) records in (\d+) frames; replaying them took ([\d.]+) s of the ([\d.]+) s "
                             r"connected \((\d+)%\)")
        while not (m := pattern.search(s.log_text())) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_server(s)
    assert m, s.log_text()[-2000:]
    records, frames, busy, total = int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))
    assert records >= 203 and 1 <= frames <= records, m.group(0)  # 200 memsets, alloc, stream, sync (and setup)
    assert 0 < busy <= total, m.group(0)
