"""The stub as a library: it exports exactly the real driver's symbols, resolves cuGetProcAddress the way
driver 580 does (reference/cuda-driver-private-tables.md), and fails honestly before cuInit and for calls
it does not implement."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

from cuda_ctypes import PRELUDE
from e2e_helpers import REPO, run_client

from fargpu import paths

CU_GET_PROC_ADDRESS_SUCCESS, SYMBOL_NOT_FOUND, VERSION_NOT_SUFFICIENT = 0, 1, 2


def test_exports_exactly_the_real_driver_symbols() -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", str(paths.stub_lib())], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    expected = set((REPO / "codegen/data/libcuda-exports.txt").read_text().split())
    assert len(expected) == 707
    assert exported == expected


def _procaddr(symbol: str, version: int, flags: int) -> tuple[int, int, int]:
    lib = ctypes.CDLL(str(paths.stub_lib()))
    fn = ctypes.c_void_p()
    status = ctypes.c_int(-1)
    r = lib.cuGetProcAddress_v2(symbol.encode(), ctypes.byref(fn), version, ctypes.c_uint64(flags),
                                ctypes.byref(status))
    return r, status.value, fn.value or 0


def _addr(name: str) -> int:
    lib = ctypes.CDLL(str(paths.stub_lib()))
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0


def test_get_proc_address_matches_driver_580() -> None:
    cases = [
        ("cuMemAlloc", 2000, 0, "cuMemAlloc"),
        ("cuMemAlloc", 3020, 0, "cuMemAlloc_v2"),
        ("cuMemAlloc", 13000, 0, "cuMemAlloc_v2"),
        ("cuMemcpyAsync", 13000, 0, "cuMemcpyAsync"),
        ("cuMemcpyAsync", 13000, 2, "cuMemcpyAsync_ptsz"),
        ("cuLaunchKernel", 13000, 2, "cuLaunchKernel_ptsz"),
        ("cuCtxCreate", 13000, 0, "cuCtxCreate_v4"),
        ("cuCtxCreate", 12000, 0, "cuCtxCreate_v3"),
        ("cuCtxCreate", 11040, 0, "cuCtxCreate_v3"),
        ("cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2"),
        ("cuGetExportTable", 13000, 0, "cuGetExportTable"),
        ("cuMemAllocAsync", 11020, 0, "cuMemAllocAsync"),
        ("cuStreamGetCaptureInfo", 13000, 0, "cuStreamGetCaptureInfo_v3"),
        ("cuStreamGetCaptureInfo", 11030, 0, "cuStreamGetCaptureInfo_v2"),
    ]
    for sym, ver, flags, want in cases:
        r, status, fn = _procaddr(sym, ver, flags)
        assert (r, status) == (0, CU_GET_PROC_ADDRESS_SUCCESS), (sym, ver)
        assert fn == _addr(want), f"{sym}@{ver}/{flags} should resolve to {want}"
    assert _procaddr("cuNoSuchThing", 13000, 0) == (0, SYMBOL_NOT_FOUND, 0)
    assert _procaddr("cuMemAllocAsync", 11000, 0) == (0, VERSION_NOT_SUFFICIENT, 0)


def test_calls_before_cuinit_report_not_initialized(tmp_path: Path) -> None:
    env = {"LD_LIBRARY_PATH": str(paths.stub_dir()), "FARGPU_SERVER": "127.0.0.1:1"}
    res = run_client(PRELUDE + "n = ctypes.c_int(); print(cu.cuDeviceGetCount(ctypes.byref(n)))", env)
    assert res.stdout.strip() == "3"  # CUDA_ERROR_NOT_INITIALIZED


def test_unsupported_call_fails_clearly_and_logs_once(node_server) -> None:  # type: ignore[no-untyped-def]
    code = PRELUDE + r'''
ctx0()
print(cu.cuGraphicsUnregisterResource(None), cu.cuGraphicsUnregisterResource(None))
'''
    res = run_client(code, node_server.client_env())
    assert res.stdout.split() == ["801", "801"]  # CUDA_ERROR_NOT_SUPPORTED, never a fake success
    assert res.stderr.count("cuGraphicsUnregisterResource is not supported by fargpu yet") == 1


def test_stub_never_loads_a_real_driver(node_server) -> None:  # type: ignore[no-untyped-def]
    code = PRELUDE + r'''
ctx0()
maps = open("/proc/self/maps").read()
libs = sorted({l.split()[-1] for l in maps.splitlines() if "libcuda" in l})
import os
devs = []
for fd in os.listdir("/proc/self/fd"):
    try:
        devs.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
print(libs); print([d for d in devs if d.startswith("/dev/nvidia")])
'''
    res = run_client(code, node_server.client_env())
    assert res.returncode == 0, res.stderr
    libs, devs = res.stdout.splitlines()[:2]
    assert str(paths.stub_lib().resolve()) in libs or str(paths.stub_lib()) in libs
    assert libs.count("libcuda") == 1 and devs == "[]"
