"""The simulated device used directly, without fargpu in between: libfargpu_sim.so is put on the loader path as
libcuda.so.1 and (1) the C driver API test program runs against it, with its launch log checked byte for byte;
(2) ctypes calls probe what a remote client could send: made-up handles, device pointers outside any mapping,
hostile module images, the VMM unmap/re-map cycle that paging relies on, and concurrent use.

The simulated device is a test double (server/sim/README.md); no claim about GPUs rests on these tests."""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
N = 1 << 20

SUCCESS = 0
INVALID_VALUE = 1
OUT_OF_MEMORY = 2
INVALID_IMAGE = 200
INVALID_CONTEXT = 201
NO_BINARY_FOR_GPU = 209
INVALID_PTX = 218
INVALID_HANDLE = 400
NOT_FOUND = 500
NOT_SUPPORTED = 801
GRAN = 2 << 20


def _nvcc() -> str | None:
    for cand in (os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc"), shutil.which("nvcc"),
                 "/usr/local/cuda/bin/nvcc"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _cuda_include() -> Path | None:
    """cuda.h: FARGPU_CUDA_INCLUDE, the nvidia-cuda-runtime wheel, or the toolkit next to nvcc."""
    cands: list[Path] = []
    if os.environ.get("FARGPU_CUDA_INCLUDE"):
        cands.append(Path(os.environ["FARGPU_CUDA_INCLUDE"]))
    try:
        import nvidia  # type: ignore[import-not-found]

        cands += [Path(p) / "cu13" / "include" for p in nvidia.__path__]
    except ImportError:
        pass
    if os.environ.get("CUDA_HOME"):
        cands.append(Path(os.environ["CUDA_HOME"]) / "include")
    nvcc = _nvcc()
    if nvcc:
        cands.append(Path(nvcc).resolve().parent.parent / "include")
    cands.append(Path("/usr/local/cuda/include"))
    return next((c for c in cands if (c / "cuda.h").exists()), None)


def _run_checked(cmd: list[str], **kw) -> None:  # noqa: ANN003
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the test kernels cannot be compiled")


@pytest.fixture(scope="module")
def sim_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed simulated device if the package carries one, else a fresh CMake build of target fgsim."""
    try:
        from fargpu import paths

        return paths.sim_lib()
    except (ImportError, FileNotFoundError):
        pass
    build = tmp_path_factory.mktemp("simbuild")
    cmd = ["cmake", "-S", str(REPO), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}"]
    inc = _cuda_include()
    if inc:
        cmd.append(f"-DFARGPU_CUDA_INCLUDE={inc}")
    _run_checked(cmd)
    _run_checked(["cmake", "--build", str(build), "--target", "fgsim", "-j4"])
    return build / "libfargpu_sim.so"


@pytest.fixture(scope="module")
def libdir(sim_so: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("simlib")
    for name in ("libcuda.so.1", "libcuda.so"):
        (d / name).symlink_to(sim_so)
    return d


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NVCC is None:
        pytest.skip("nvcc not found: the test kernels cannot be compiled")
    out = tmp_path_factory.mktemp("driver_api_test")
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    inc = _cuda_include()
    if inc:
        env.setdefault("FARGPU_CUDA_INCLUDE", str(inc))
    _run_checked(["bash", str(REPO / "tests/c/build_test_program.sh"), str(out)], env=env)
    return out


def _run_program(programs: Path, libdir: Path, log: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LD_LIBRARY_PATH=str(libdir), FARGPU_SIM_LAUNCH_LOG=str(log))
    env.pop("LD_PRELOAD", None)
    return subprocess.run([str(programs / "driver_api_test"), str(programs / "test_kernels.ptx"),
                           str(programs / "test_kernels.cubin")], env=env, capture_output=True, text=True,
                          timeout=300)


# ---------------------------------------------------------------------------------------------------------
# The C test program against the sim


@needs_nvcc
def test_driver_api_program_passes_and_logs_exact_launches(programs: Path, libdir: Path, tmp_path: Path) -> None:
    log = tmp_path / "launches.jsonl"
    res = _run_program(programs, libdir, log)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^driver_api_test: \d+ checks, 0 failed$", res.stdout, re.M), res.stdout
    assert "FAIL" not in res.stdout
    assert "device name: fargpu simulated device" in res.stdout
    assert "param_info cubin fg_axpb: 0/8 8/4 16/8" in res.stdout
    assert "check bad_stream_handle: ok (CUDA_ERROR_INVALID_HANDLE)" in res.stdout

    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["func"] for r in recs] == ["fg_vadd", "fg_vadd", "fg_scale", "fg_fill_u32", "fg_axpb", "fg_axpb"]
    assert all(r["result"] == "CUDA_SUCCESS" and r["shmem"] == 0 for r in recs)
    grid = (N + 255) // 256
    for r in recs:
        want_grid = [120, 1, 1] if r["func"] == "fg_fill_u32" else [grid, 1, 1]
        assert r["grid"] == want_grid and r["block"] == [256, 1, 1], r
    assert [r["stream"] for r in recs] == [1, 0, 1, 1, 1, 1]  # the program's first stream, then NULL

    p = [bytes.fromhex(r["params"]) for r in recs]
    # fg_vadd(const float *a, const float *b, float *c, int n): 28 bytes
    a, b, c, n = struct.unpack("<QQQi", p[0])
    assert len(p[0]) == 28 and n == N and len({a, b, c}) == 3 and 0 not in (a, b, c)
    assert p[1] == p[0]  # the cubin launch uses the same arguments
    # fg_scale(float *x, float s, int n): 16 bytes, x is the vadd output
    x, s, n = struct.unpack("<Qfi", p[2])
    assert (x, s, n) == (c, 2.0, N)
    # fg_fill_u32(unsigned *p, unsigned v, unsigned long long n) through `extra`: 24 bytes with padding
    ptr, v, pad, n64 = struct.unpack("<QII Q".replace(" ", ""), p[3])
    assert (ptr, v, pad, n64) == (a, 0xC0FFEE, 0, N)
    # fg_axpb(struct {float a, b}, int n, float *x): 24 bytes, padding 12..15 zero for kernelParams
    fa, fb, n, pad, xp = struct.unpack("<ffiIQ", p[4])
    assert (fa, fb, n, pad, xp) == (2.0, 1.0, N, 0, b)
    fa, fb, n, pad, xp = struct.unpack("<ffiIQ", p[5])
    assert (fa, fb, n, xp) == (0.5, -1.0, N, b)


@needs_nvcc
def test_driver_api_program_output_is_deterministic(programs: Path, libdir: Path, tmp_path: Path) -> None:
    one = _run_program(programs, libdir, tmp_path / "1.jsonl")
    two = _run_program(programs, libdir, tmp_path / "2.jsonl")
    assert one.returncode == two.returncode == 0
    assert one.stdout == two.stdout


# ---------------------------------------------------------------------------------------------------------
# Direct ctypes probes of untrusted input


class Sim:
    """The sim loaded in this process, with the primary context of device 0 current on the calling thread."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        assert self.lib.cuInit(0) == SUCCESS
        self.ctx = ctypes.c_void_p()
        assert self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), 0) == SUCCESS
        self.make_current()

    def make_current(self) -> None:
        assert self.lib.cuCtxSetCurrent(self.ctx) == SUCCESS

    def __getattr__(self, name: str):  # noqa: ANN204 - ctypes function
        return getattr(self.lib, name)

    def alloc(self, n: int) -> int:
        p = ctypes.c_uint64()
        assert self.lib.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(n)) == SUCCESS
        return p.value

    def htod(self, dst: int, data: bytes) -> int:
        return self.lib.cuMemcpyHtoD_v2(ctypes.c_uint64(dst), data, ctypes.c_size_t(len(data)))

    def dtoh(self, src: int, n: int) -> tuple[int, bytes]:
        buf = ctypes.create_string_buffer(n)
        rc = self.lib.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(src), ctypes.c_size_t(n))
        return rc, buf.raw

    def free_mem(self) -> int:
        f, t = ctypes.c_size_t(), ctypes.c_size_t()
        assert self.lib.cuMemGetInfo_v2(ctypes.byref(f), ctypes.byref(t)) == SUCCESS
        return f.value

    def load(self, image: bytes | ctypes.Array) -> tuple[int, ctypes.c_void_p]:
        m = ctypes.c_void_p()
        rc = self.lib.cuModuleLoadData(ctypes.byref(m), image)
        return rc, m

    def function(self, mod: ctypes.c_void_p, name: str) -> ctypes.c_void_p:
        f = ctypes.c_void_p()
        assert self.lib.cuModuleGetFunction(ctypes.byref(f), mod, name.encode()) == SUCCESS
        return f


@pytest.fixture(scope="module")
def sim(sim_so: Path) -> Sim:
    return Sim(sim_so)


GARBAGE = ctypes.c_void_p(0xDEADBEEF000)


def test_made_up_handles_are_rejected_not_dereferenced(sim: Sim) -> None:
    sim.make_current()
    assert sim.cuStreamSynchronize(GARBAGE) == INVALID_HANDLE
    assert sim.cuStreamQuery(ctypes.c_void_p(8)) == INVALID_HANDLE
    assert sim.cuEventQuery(GARBAGE) == INVALID_HANDLE
    assert sim.cuEventRecord(GARBAGE, None) == INVALID_HANDLE
    f, m = ctypes.c_void_p(), ctypes.c_void_p()
    assert sim.cuModuleGetFunction(ctypes.byref(f), GARBAGE, b"fg_vadd") == INVALID_HANDLE
    assert sim.cuModuleUnload(GARBAGE) == INVALID_HANDLE
    v = ctypes.c_int()
    assert sim.cuFuncGetAttribute(ctypes.byref(v), 0, GARBAGE) == INVALID_HANDLE
    assert sim.cuLaunchKernel(GARBAGE, 1, 1, 1, 1, 1, 1, 0, None, None, None) == INVALID_HANDLE
    assert sim.cuCtxPushCurrent_v2(GARBAGE) == INVALID_CONTEXT
    assert sim.cuCtxDestroy_v2(GARBAGE) == INVALID_CONTEXT
    assert sim.cuMemRelease(ctypes.c_uint64(0xDEADBEEF000)) == INVALID_VALUE
    # a stream handle that was valid once
    s = ctypes.c_void_p()
    assert sim.cuStreamCreate(ctypes.byref(s), 0) == SUCCESS
    assert sim.cuStreamDestroy_v2(s) == SUCCESS
    assert sim.cuStreamSynchronize(s) == INVALID_HANDLE
    assert sim.cuStreamDestroy_v2(s) == INVALID_HANDLE
    # a stream handle passed as an event handle
    assert sim.cuStreamCreate(ctypes.byref(s), 0) == SUCCESS
    assert sim.cuEventQuery(s) == INVALID_HANDLE
    assert sim.cuStreamDestroy_v2(s) == SUCCESS
    del m


def test_device_pointers_outside_mappings_are_rejected(sim: Sim) -> None:
    sim.make_current()
    p = sim.alloc(4096)
    assert sim.htod(p, b"x" * 4096) == SUCCESS
    assert sim.htod(p + 1, b"x" * 4096) == INVALID_VALUE  # one byte past the end
    assert sim.htod(0xDEAD0000, b"x" * 16) == INVALID_VALUE
    assert sim.htod(0, b"x") == INVALID_VALUE
    assert sim.dtoh(2**64 - 8, 16)[0] == INVALID_VALUE  # wraps around
    assert sim.cuMemsetD32_v2(ctypes.c_uint64(p + 2), 0, ctypes.c_size_t(4)) == INVALID_VALUE  # misaligned
    assert sim.cuMemsetD8_v2(ctypes.c_uint64(p), 0, ctypes.c_size_t(4097)) == INVALID_VALUE
    assert sim.cuMemcpyDtoD_v2(ctypes.c_uint64(p), ctypes.c_uint64(id(sim)), ctypes.c_size_t(8)) == INVALID_VALUE
    assert sim.cuMemFree_v2(ctypes.c_uint64(p + 64)) == INVALID_VALUE  # not the base
    assert sim.cuMemFree_v2(ctypes.c_uint64(p)) == SUCCESS
    assert sim.dtoh(p, 16)[0] == INVALID_VALUE  # freed
    assert sim.cuMemFree_v2(ctypes.c_uint64(p)) == INVALID_VALUE


def test_host_registration(sim: Sim) -> None:
    """cuMemHostRegister makes the caller's pages device-accessible memory (the shared-memory transport's path):
    device work reaches them through the device pointer, overlaps and double unregistration are refused, and a
    registered range is not cuMemFreeHost's to free."""
    sim.make_current()
    page = mmap_anon(1 << 20)
    base = ctypes.addressof(page)
    assert sim.cuMemHostRegister_v2(ctypes.c_void_p(base), ctypes.c_size_t(1 << 20), 3) == SUCCESS  # PORTABLE|DEVICEMAP
    assert sim.cuMemHostRegister_v2(ctypes.c_void_p(base + 4096), ctypes.c_size_t(4096), 0) == 712  # already
    d = ctypes.c_uint64()
    assert sim.cuMemHostGetDevicePointer_v2(ctypes.byref(d), ctypes.c_void_p(base + 64), 0) == SUCCESS
    assert sim.cuMemsetD8_v2(d, 0x77, ctypes.c_size_t(100)) == SUCCESS
    assert page.raw[64:164] == b"\x77" * 100 and page.raw[164:165] == b"\0"
    dev = sim.alloc(4096)
    assert sim.cuMemcpyDtoD_v2(ctypes.c_uint64(dev), d, ctypes.c_size_t(100)) == SUCCESS
    assert sim.dtoh(dev, 100) == (SUCCESS, b"\x77" * 100)
    assert sim.cuMemFreeHost(ctypes.c_void_p(base)) == INVALID_VALUE
    assert sim.cuMemHostUnregister(ctypes.c_void_p(base)) == SUCCESS
    assert sim.cuMemHostUnregister(ctypes.c_void_p(base)) == 713  # CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED
    assert sim.cuMemHostGetDevicePointer_v2(ctypes.byref(d), ctypes.c_void_p(base), 0) == INVALID_VALUE
    assert sim.cuMemFree_v2(ctypes.c_uint64(dev)) == SUCCESS


def mmap_anon(n: int) -> ctypes.Array[ctypes.c_char]:
    import mmap

    m = mmap.mmap(-1, n)
    return (ctypes.c_char * n).from_buffer(m)


def test_over_allocation_is_out_of_memory(sim: Sim) -> None:
    sim.make_current()
    p = ctypes.c_uint64()
    assert sim.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 50)) == OUT_OF_MEMORY
    h = ctypes.c_uint64()
    prop = _alloc_prop()
    assert sim.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(64 << 30), ctypes.byref(prop), 0) == OUT_OF_MEMORY


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocProp(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", _Location),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", ctypes.c_ubyte * 8)]


class _AccessDesc(ctypes.Structure):
    _fields_ = [("location", _Location), ("flags", ctypes.c_int)]


def _alloc_prop() -> _AllocProp:
    prop = _AllocProp()
    prop.type = 1  # CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location.type = 1  # CU_MEM_LOCATION_TYPE_DEVICE
    prop.location.id = 0
    return prop


def test_vmm_unmap_and_remap_at_the_same_address_keeps_contents(sim: Sim) -> None:
    """The paging contract: reserve + create + map; unmap; map the same memory back at the same address."""
    sim.make_current()
    prop = _alloc_prop()
    g = ctypes.c_size_t()
    assert sim.cuMemGetAllocationGranularity(ctypes.byref(g), ctypes.byref(prop), 0) == SUCCESS
    assert g.value == GRAN
    size = 2 * GRAN
    free0 = sim.free_mem()
    va = ctypes.c_uint64()
    assert sim.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(size), 0, 0, 0) == SUCCESS
    assert va.value % GRAN == 0
    h = ctypes.c_uint64()
    assert sim.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(size), ctypes.byref(prop), 0) == SUCCESS
    assert sim.free_mem() == free0 - size
    assert sim.cuMemMap(va, ctypes.c_size_t(size), 0, h, 0) == SUCCESS
    assert sim.htod(va.value, b"z" * 16) == INVALID_VALUE  # mapped, but no access yet
    acc = _AccessDesc()
    acc.location.type, acc.location.id, acc.flags = 1, 0, 3  # READWRITE
    assert sim.cuMemSetAccess(va, ctypes.c_size_t(size), ctypes.byref(acc), 1) == SUCCESS
    data = random.Random(7).randbytes(size)
    assert sim.htod(va.value, data) == SUCCESS
    assert sim.cuMemMap(va, ctypes.c_size_t(size), 0, h, 0) == INVALID_VALUE  # already mapped
    assert sim.cuMemAddressFree(va, ctypes.c_size_t(size)) == INVALID_VALUE  # still mapped
    assert sim.cuMemUnmap(va, ctypes.c_size_t(GRAN)) == INVALID_VALUE  # part of a mapping

    assert sim.cuMemUnmap(va, ctypes.c_size_t(size)) == SUCCESS
    assert sim.dtoh(va.value, 16)[0] == INVALID_VALUE  # paged out: no device memory there
    assert sim.cuMemMap(va, ctypes.c_size_t(size), 0, h, 0) == SUCCESS
    assert sim.cuMemSetAccess(va, ctypes.c_size_t(size), ctypes.byref(acc), 1) == SUCCESS
    assert sim.dtoh(va.value, size) == (SUCCESS, data)

    # The same physical memory at a second address shows the same bytes; read-only access refuses writes.
    va2 = ctypes.c_uint64()
    assert sim.cuMemAddressReserve(ctypes.byref(va2), ctypes.c_size_t(GRAN), 0, 0, 0) == SUCCESS
    assert sim.cuMemMap(va2, ctypes.c_size_t(GRAN), ctypes.c_size_t(GRAN), h, 0) == SUCCESS
    acc.flags = 1  # READ
    assert sim.cuMemSetAccess(va2, ctypes.c_size_t(GRAN), ctypes.byref(acc), 1) == SUCCESS
    assert sim.dtoh(va2.value, GRAN) == (SUCCESS, data[GRAN:])
    assert sim.htod(va2.value, b"w") == INVALID_VALUE

    # Release while mapped: memory stays until the last mapping goes.
    assert sim.cuMemRelease(h) == SUCCESS
    assert sim.dtoh(va.value, 16) == (SUCCESS, data[:16])
    assert sim.cuMemUnmap(va, ctypes.c_size_t(size)) == SUCCESS
    assert sim.free_mem() == free0 - size
    assert sim.cuMemUnmap(va2, ctypes.c_size_t(GRAN)) == SUCCESS
    assert sim.free_mem() == free0
    assert sim.cuMemAddressFree(va2, ctypes.c_size_t(GRAN)) == SUCCESS
    old = va.value
    assert sim.cuMemAddressFree(va, ctypes.c_size_t(size)) == SUCCESS
    # Reserving again at the old address (migration/page-in elsewhere) gets exactly that address.
    again = ctypes.c_uint64()
    assert sim.cuMemAddressReserve(ctypes.byref(again), ctypes.c_size_t(size), 0, ctypes.c_uint64(old), 0) == SUCCESS
    assert again.value == old
    assert sim.cuMemAddressFree(again, ctypes.c_size_t(size)) == SUCCESS



def test_host_numa_memory_maps_only_whole_as_on_an_h100(sim: Sim) -> None:
    """An H100 (driver 580) refused a part of a host-NUMA allocation (offset or length) with error 801; the node's
    host pool is slabs mapped whole for that (server/replay/hostpool.c). Device memory still maps in parts here."""
    sim.make_current()
    prop = _alloc_prop()
    prop.location.type = 3  # CU_MEM_LOCATION_TYPE_HOST_NUMA
    h = ctypes.c_uint64()
    assert sim.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(2 * GRAN), ctypes.byref(prop), 0) == SUCCESS
    va = ctypes.c_uint64()
    assert sim.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(2 * GRAN), 0, 0, 0) == SUCCESS
    assert sim.cuMemMap(va, ctypes.c_size_t(GRAN), ctypes.c_size_t(GRAN), h, 0) == NOT_SUPPORTED
    assert sim.cuMemMap(va, ctypes.c_size_t(GRAN), 0, h, 0) == NOT_SUPPORTED
    assert sim.cuMemMap(va, ctypes.c_size_t(2 * GRAN), 0, h, 0) == SUCCESS
    assert sim.cuMemUnmap(va, ctypes.c_size_t(2 * GRAN)) == SUCCESS
    assert sim.cuMemRelease(h) == SUCCESS
    assert sim.cuMemAddressFree(va, ctypes.c_size_t(2 * GRAN)) == SUCCESS


PTX_LAYOUT = b"""
.version 9.0
.target sm_90
.address_size 64
.global .align 4 .b8 tbl[8] = {1, 2, 3, 4, 5, 6, 7, 8};
.visible .entry k_layout(
    .param .u8 k_a,
    .param .align 8 .b8 k_s[16],
    .param .u16 k_b,
    .param .f64 k_d,
    .param .u64 .ptr .global .align 16 k_p
)
.maxntid 128, 1, 1
{
    .shared .align 4 .b8 scratch[1024];
    ret;
}
.visible .entry other_kernel(.param .u64 p)
{
    ret;
}
"""


def test_ptx_parameter_layout_globals_and_unknown_kernels(sim: Sim, capfd: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    sim.make_current()
    rc, mod = sim.load(PTX_LAYOUT + b"\0")
    assert rc == SUCCESS
    f = sim.function(mod, "k_layout")
    got = []
    for i in range(5):
        off, size = ctypes.c_size_t(), ctypes.c_size_t()
        assert sim.cuFuncGetParamInfo(f, ctypes.c_size_t(i), ctypes.byref(off), ctypes.byref(size)) == SUCCESS
        got.append((off.value, size.value))
    assert got == [(0, 1), (8, 16), (24, 2), (32, 8), (40, 8)]  # .align after .ptr is the pointee's
    v = ctypes.c_int()
    assert sim.cuFuncGetAttribute(ctypes.byref(v), 0, f) == SUCCESS and v.value == 128  # .maxntid
    assert sim.cuFuncGetAttribute(ctypes.byref(v), 1, f) == SUCCESS and v.value == 1024  # static .shared
    dptr, size = ctypes.c_uint64(), ctypes.c_size_t()
    assert sim.cuModuleGetGlobal_v2(ctypes.byref(dptr), ctypes.byref(size), mod, b"tbl") == SUCCESS
    assert sim.dtoh(dptr.value, size.value) == (SUCCESS, bytes(range(1, 9)))
    assert sim.cuModuleGetGlobal_v2(ctypes.byref(dptr), ctypes.byref(size), mod, b"nope") == NOT_FOUND

    # A kernel the sim cannot execute: recorded, then CUDA_ERROR_NOT_SUPPORTED, logged once by name.
    log = tmp_path / "launch.jsonl"
    os.environ["FARGPU_SIM_LAUNCH_LOG"] = str(log)
    try:
        other = sim.function(mod, "other_kernel")
        arg = ctypes.c_uint64(0x1122334455667788)
        params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(arg), ctypes.c_void_p))
        for _ in range(2):
            assert sim.cuLaunchKernel(other, 3, 2, 1, 64, 1, 1, 0, None, params, None) == NOT_SUPPORTED
    finally:
        del os.environ["FARGPU_SIM_LAUNCH_LOG"]
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(recs) == 2
    assert recs[0] == {"func": "other_kernel", "grid": [3, 2, 1], "block": [64, 1, 1], "shmem": 0, "stream": 0,
                       "params": "8877665544332211", "result": "CUDA_ERROR_NOT_SUPPORTED"}
    err = capfd.readouterr().err
    assert err.count("cuLaunchKernel(other_kernel)") == 1
    assert sim.cuModuleUnload(mod) == SUCCESS
    assert sim.cuModuleUnload(mod) == INVALID_HANDLE


@needs_nvcc
def test_test_kernel_with_bad_pointer_is_rejected(sim: Sim, programs: Path) -> None:
    sim.make_current()
    rc, mod = sim.load((programs / "test_kernels.ptx").read_bytes() + b"\0")
    assert rc == SUCCESS
    vadd = sim.function(mod, "fg_vadd")
    a = sim.alloc(4 * 1024)
    bogus, n = ctypes.c_uint64(0xDEAD0000), ctypes.c_int(1024)
    pa = ctypes.c_uint64(a)
    args = [pa, bogus, pa, n]
    params = (ctypes.c_void_p * 4)(*[ctypes.cast(ctypes.byref(x), ctypes.c_void_p) for x in args])
    assert sim.cuLaunchKernel(vadd, 4, 1, 1, 256, 1, 1, 0, None, params, None) == INVALID_VALUE
    n.value = 2048  # more elements than the allocation holds
    args[1] = pa
    params = (ctypes.c_void_p * 4)(*[ctypes.cast(ctypes.byref(x), ctypes.c_void_p) for x in args])
    assert sim.cuLaunchKernel(vadd, 8, 1, 1, 256, 1, 1, 0, None, params, None) == INVALID_VALUE
    n.value = 1024
    assert sim.cuLaunchKernel(vadd, 4, 1, 1, 256, 1, 1, 0, None, params, None) == SUCCESS
    assert sim.cuModuleUnload(mod) == SUCCESS
    assert sim.cuMemFree_v2(ctypes.c_uint64(a)) == SUCCESS


def _nv_info_regcounts(cubin: bytes) -> dict[str, int]:
    """EIATTR_REGCOUNT per kernel name, read independently of the sim's parser."""
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shnum, shstr = struct.unpack_from("<HH", cubin, 0x3C)
    secs = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * 64) for i in range(shnum)]

    def sname(off: int) -> str:
        base = secs[shstr][4] + off
        return cubin[base:cubin.index(b"\0", base)].decode()

    sym = next(s for s in secs if s[1] == 2)
    strtab = secs[sym[6]]

    def symname(i: int) -> str:
        off = strtab[4] + struct.unpack_from("<I", cubin, sym[4] + 24 * i)[0]
        return cubin[off:cubin.index(b"\0", off)].decode()

    info = next(s for s in secs if sname(s[0]) == ".nv.info")
    out, pos, end = {}, info[4], info[4] + info[5]
    while pos < end:
        fmt, attr = cubin[pos], cubin[pos + 1]
        if fmt == 4:
            ln, = struct.unpack_from("<H", cubin, pos + 2)
            if attr == 0x2F:
                idx, val = struct.unpack_from("<II", cubin, pos + 4)
                out[symname(idx)] = val
            pos += 4 + ln
        else:
            pos += 2 if fmt == 1 else 4
    return out


@needs_nvcc
def test_cubin_attributes_match_the_elf(sim: Sim, programs: Path) -> None:
    sim.make_current()
    cubin = (programs / "test_kernels.cubin").read_bytes()
    regs = _nv_info_regcounts(cubin)
    rc, mod = sim.load(cubin)
    assert rc == SUCCESS
    for name in ("fg_vadd", "fg_scale", "fg_fill_u32", "fg_axpb"):
        f = sim.function(mod, name)
        v = ctypes.c_int()
        assert sim.cuFuncGetAttribute(ctypes.byref(v), 4, f) == SUCCESS  # NUM_REGS
        assert v.value == regs[name] > 0
        assert sim.cuFuncGetAttribute(ctypes.byref(v), 6, f) == SUCCESS and v.value == 90  # BINARY_VERSION
    assert sim.cuModuleUnload(mod) == SUCCESS
    # the same code for another SM is refused like an sm_90 GPU would
    other = bytearray(cubin)
    flags, = struct.unpack_from("<I", other, 48)
    struct.pack_into("<I", other, 48, (flags & ~0xFF00) | (80 << 8))
    assert sim.load(bytes(other))[0] == NO_BINARY_FOR_GPU


def _elf_extent(img: bytes) -> int | None:
    """The extent the sim derives from a cubin (see sim_elf.c); None if it needs more than we'd pad."""
    shoff, = struct.unpack_from("<Q", img, 40)
    shnum, = struct.unpack_from("<H", img, 60)
    if shoff < 64 or shoff > 1 << 30:
        return 64
    if shnum == 0:
        need = shoff + 64
        if need > len(img):
            return need if need < (64 << 20) else None
        shnum = struct.unpack_from("<Q", img, shoff + 32)[0]
        if shnum > 0xFFFFFF:
            return need
    end = shoff + shnum * 64
    if end > (64 << 20):
        return None
    ext = end
    pad = img + bytes(max(0, end - len(img)))
    for i in range(1, shnum):
        typ, = struct.unpack_from("<I", pad, shoff + i * 64 + 4)
        off, size = struct.unpack_from("<QQ", pad, shoff + i * 64 + 24)
        if typ != 8:
            ext = max(ext, off + size)
    return ext if ext < (64 << 20) else None


@needs_nvcc
def test_hostile_images_never_crash(sim: Sim, programs: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Bounded fuzzing of the PTX and cubin readers (the caller's contract: PTX NUL-terminated, a cubin's
    self-described extent readable). Any error code is fine; a crash fails the whole run."""
    sim.make_current()
    assert sim.load(b"\x50\xed\x55\xba" + bytes(60))[0] == NOT_SUPPORTED  # fatbin
    assert "fatbin" in capfd.readouterr().err
    assert sim.load(b"\0")[0] == INVALID_IMAGE
    assert sim.load(b"hello world\0")[0] == INVALID_IMAGE
    assert sim.load(b".version 9.0\n.target sm_90\n.entry k(.param .u64 a {ret;}\0")[0] == INVALID_PTX
    assert sim.load(b".version 9.0\n.target sm_100\n\0")[0] == INVALID_PTX
    assert sim.load(b"\x7fELF" + bytes(60))[0] == INVALID_IMAGE

    rng = random.Random(1234)
    cubin = (programs / "test_kernels.cubin").read_bytes()
    ptx = (programs / "test_kernels.ptx").read_bytes()
    allowed = {SUCCESS, INVALID_IMAGE, NO_BINARY_FOR_GPU, INVALID_PTX, OUT_OF_MEMORY, 222}
    for i in range(400):
        img = bytearray(cubin)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(img)) if rng.random() < 0.7 else rng.randrange(64)
            img[pos] = rng.randrange(256)
        ext = _elf_extent(bytes(img))
        if ext is None:
            continue
        buf = ctypes.create_string_buffer(bytes(img) + bytes(max(0, ext - len(img)) + 8))
        rc, mod = sim.load(buf)
        assert rc in allowed, (i, rc)
        if rc == SUCCESS:
            assert sim.cuModuleUnload(mod) == SUCCESS
    for i in range(400):
        txt = bytearray(ptx)
        if rng.random() < 0.3:
            del txt[rng.randrange(len(txt)):]
        for _ in range(rng.randint(1, 6)):
            if txt:
                txt[rng.randrange(len(txt))] = rng.choice(b"{}()[],;.=-0123456789 \n/*\"abcxyz")
        rc, mod = sim.load(bytes(txt) + b"\0")
        assert rc in allowed, (i, rc)
        if rc == SUCCESS:
            assert sim.cuModuleUnload(mod) == SUCCESS


def test_error_names_cover_every_cuda_result(sim: Sim) -> None:
    inc = _cuda_include()
    if inc is None:
        pytest.skip("cuda.h not found")
    text = (inc / "cuda.h").read_text()
    enum = text[text.index("typedef enum cudaError_enum"):text.index("} CUresult;")]
    codes = re.findall(r"^\s+(CUDA_\w+)\s*=\s*(\d+)", enum, re.M)
    assert len(codes) > 90
    for name, value in codes:
        s = ctypes.c_char_p()
        assert sim.cuGetErrorName(int(value), ctypes.byref(s)) == SUCCESS, name
        assert s.value.decode() == name
        assert sim.cuGetErrorString(int(value), ctypes.byref(s)) == SUCCESS and s.value
    assert sim.cuGetErrorName(12345, ctypes.byref(ctypes.c_char_p())) == INVALID_VALUE


def test_concurrent_threads(sim: Sim) -> None:
    errors: list[str] = []

    def worker(seed: int) -> None:
        try:
            sim.make_current()  # the current context is per thread
            rng = random.Random(seed)
            for _ in range(50):
                n = rng.randrange(1, 1 << 16)
                p = sim.alloc(n)
                data = rng.randbytes(n)
                assert sim.htod(p, data) == SUCCESS
                assert sim.dtoh(p, n) == (SUCCESS, data)
                assert sim.cuMemFree_v2(ctypes.c_uint64(p)) == SUCCESS
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(f"{seed}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.fixture(autouse=True)
def _no_leftover_log_env() -> Iterator[None]:
    yield
    os.environ.pop("FARGPU_SIM_LAUNCH_LOG", None)
