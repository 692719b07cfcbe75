"""The driver's error log through the stub on the simulated device (which writes a message for the errors of its
own cuLogs* calls and for cuModuleGetFunction's unknown names): cuLogsCurrent gives an iterator, cuLogsDumpToMemory
brings the node's messages back (a NULL buffer goes to the node's driver, which logs that too), advances the
iterator, puts a notice first and keeps the newest messages when the buffer is short, and answers *size 0 with
CUDA_ERROR_INVALID_VALUE when no message fits; cuLogsDumpToFile writes the same text into a file on the client's
host. Each session has a worker process, hence a driver log, of its own: a second session reads none of the first
one's messages. The log callbacks stay refused."""

from __future__ import annotations

from pathlib import Path

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
BOGUS = __BOGUS__
ctx0()
it0 = ctypes.c_uint(12345)
ok(cu.cuLogsCurrent(ctypes.byref(it0), 0), "current")
print("current with flags", cu.cuLogsCurrent(ctypes.byref(ctypes.c_uint()), 1))
mod = load_test_module()
fn = ctypes.c_void_p()
print("missing function", cu.cuModuleGetFunction(ctypes.byref(fn), mod, f"fg_none_{BOGUS:x}".encode()))
n = ctypes.c_size_t(100)
print("dump to NULL", cu.cuLogsDumpToMemory(None, None, ctypes.byref(n), 0))
it = ctypes.c_uint(it0.value)
buf = ctypes.create_string_buffer(4096)
size = ctypes.c_size_t(4096)
ok(cu.cuLogsDumpToMemory(ctypes.byref(it), buf, ctypes.byref(size), 0), "dump")
text = buf.value.decode()
print("size matches", size.value == len(buf.value), "advanced", it.value - it0.value)
for line in text.splitlines():
    print("LOG", line)
size = ctypes.c_size_t(4096)
ok(cu.cuLogsDumpToMemory(ctypes.byref(it), buf, ctypes.byref(size), 0), "dump again")
print("again size", size.value)
small = ctypes.create_string_buffer(b"x" * 40)
size = ctypes.c_size_t(40)
it = ctypes.c_uint(it0.value)
print("too small", cu.cuLogsDumpToMemory(ctypes.byref(it), small, ctypes.byref(size), 0), size.value,
      it.value == it0.value)
last = text.splitlines()[-1]
room = len(last) + 100
mid = ctypes.create_string_buffer(room)
size = ctypes.c_size_t(room)
it = ctypes.c_uint(it0.value)
ok(cu.cuLogsDumpToMemory(ctypes.byref(it), mid, ctypes.byref(size), 0), "dump short")
lines = mid.value.decode().splitlines()
print("short", len(lines), "newest kept", lines[-1] == last, "size", size.value == len(mid.value))
print("SHORTHEAD", lines[0])
path = "__PATH__"
it = ctypes.c_uint(it0.value)
ok(cu.cuLogsDumpToFile(ctypes.byref(it), path.encode(), 0), "to file")
print("file same", open(path).read() == text, "advanced", it.value - it0.value)
print("to no file", cu.cuLogsDumpToFile(None, b"/nonexistent-dir/x.log", 0))
allb = ctypes.create_string_buffer(1 << 16)
size = ctypes.c_size_t(1 << 16)
ok(cu.cuLogsDumpToMemory(None, allb, ctypes.byref(size), 0), "dump all")
for line in allb.value.decode().splitlines():
    print("ALL", line)
print("register", cu.cuLogsRegisterCallback(None, None, None))
print("OK")
'''


def _run(server: NodeServer, bogus: int, path: Path) -> list[str]:
    code = CLIENT.replace("__BOGUS__", hex(bogus)).replace("__PATH__", str(path))
    r = run_client(code, server.client_env())
    out = r.stdout.splitlines()
    assert r.returncode == 0 and out and out[-1] == "OK", r.stdout + r.stderr + server.log_text()[-2000:]
    return out


def test_driver_log_comes_back_from_the_node(node_server: NodeServer, tmp_path: Path) -> None:
    out = _run(node_server, 0x7E5700001000, tmp_path / "one.log")
    logs = [ln[4:] for ln in out if ln.startswith("LOG ")]
    assert "current with flags 1" in out and "missing function 500" in out and "dump to NULL 1" in out, out
    # the node's driver logged them (the flags refusal, the unknown name, the NULL buffer), in order, and only those
    assert [ln.split("]", 5)[5].strip() for ln in logs] == [
        "flags must be 0", "no function named fg_none_7e5700001000 in the module", "buffer cannot be NULL"], logs
    assert all("[CUDA][E][" in ln for ln in logs), logs
    assert "[cuModuleGetFunction]" in logs[1] and "[cuLogsDumpToMemory]" in logs[2], logs
    assert "size matches True advanced 3" in out, out
    assert "again size 0" in out, out  # the iterator moved past them: nothing new
    assert "too small 1 0 True" in out, out  # no message fits: *size 0, CUDA_ERROR_INVALID_VALUE, iterator kept
    assert "short 2 newest kept True size True" in out, out  # a notice, then the newest message
    assert next(ln for ln in out if ln.startswith("SHORTHEAD ")) == "SHORTHEAD [CUDA] earlier log messages were dropped"
    assert "file same True advanced 3" in out, out
    assert "to no file 1" in out, out
    assert "register 801" in out, out  # CUDA_ERROR_NOT_SUPPORTED: callbacks are not carried to this host


def test_a_session_reads_only_its_own_log(node_server: NodeServer, tmp_path: Path) -> None:
    first = _run(node_server, 0x7E5700002000, tmp_path / "a.log")
    second = _run(node_server, 0x7E5700003000, tmp_path / "b.log")
    everything = [ln for ln in second if ln.startswith("ALL ")]  # the second session's whole log
    assert any("fg_none_7e5700002000" in ln for ln in first if ln.startswith("ALL ")), first
    assert any("fg_none_7e5700003000" in ln for ln in everything), second
    assert not any("fg_none_7e5700002000" in ln for ln in everything), second
