"""The simulated device with what nvcc-built programs hand the driver: fatbins (an sm_90 cubin plus PTX, PTX
only, behind a fatbin wrapper, compressed), hostile fatbin headers, the CUDA 12+ library API (cuLibrary*,
cuKernel*, a CUkernel launched as a CUfunction), cuLaunchKernelEx, host functions in stream order, and the
other calls the CUDA runtime makes at start-up.

Each scenario runs in a child process (this file run as a script) that loads libfargpu_sim.so as libcuda.so.1
from LD_LIBRARY_PATH: the sim's once-per-process log lines and its global state then belong to that scenario
alone. Hostile images are placed so that their last byte sits right before an inaccessible page: a read past
the extent the image describes kills the child, and the test fails. The simulated device is a test double
(server/sim/README.md); no claim about GPUs rests on these tests."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "sim_fatbin_data"

SUCCESS, INVALID_VALUE, INVALID_IMAGE, INVALID_CONTEXT, NO_BINARY_FOR_GPU = 0, 1, 200, 201, 209
INVALID_PTX, UNSUPPORTED_PTX_VERSION, INVALID_HANDLE, NOT_FOUND, NOT_SUPPORTED = 218, 222, 400, 500, 801
# what a hostile image may give: an error, or success when the mutation left it valid; never a crash
HOSTILE_OK = {SUCCESS, INVALID_IMAGE, INVALID_PTX, NO_BINARY_FOR_GPU, NOT_SUPPORTED, UNSUPPORTED_PTX_VERSION}

FATBIN_MAGIC = 0xBA55ED50
WRAPPER_MAGIC = 0x466243B1
KIND_PTX, KIND_ELF = 1, 2
FLAG_64BIT_LINUX = 0x11
FLAG_ZSTD = 0x8000
COMPRESSED_MSG = ("compressed fatbin entries are not supported by the simulated device; "
                  "build with nvcc -no-compress")

# A PTX module with the fargpu test kernel fg_vadd's name and parameter layout (the sim runs it in C) and a
# global with an initialiser: enough for fatbins built here without nvcc.
PTX_VADD = b"""
.version 8.0
.target sm_90
.address_size 64
.global .align 4 .u32 fg_magic = 305419896;
.visible .entry fg_vadd(.param .u64 a, .param .u64 b, .param .u64 c, .param .u32 n)
{
    ret;
}
"""


def fatbin_entry(kind: int, payload: bytes, arch: int = 90, flags: int = FLAG_64BIT_LINUX, header_size: int = 64,
                 payload_size: int | None = None) -> bytes:
    """One fatbin entry: a 64-byte header (extended with zeros to header_size) and the payload padded to 8."""
    padded = payload + bytes(-len(payload) % 8)
    size = len(padded) if payload_size is None else payload_size
    head = struct.pack("<HHIQIIIIIIQQQ", kind, 0x0101, header_size, size, 0, 0, 8 << 16, arch, 0, 0, flags, 0, 0)
    return head + bytes(max(0, header_size - len(head))) + padded


def fatbin(*entries: bytes, version: int = 1, header_size: int = 16, body_size: int | None = None) -> bytes:
    body = b"".join(entries)
    size = len(body) if body_size is None else body_size
    return struct.pack("<IHHQ", FATBIN_MAGIC, version, header_size, size) + bytes(header_size - 16) + body


def fatbin_entries(fb: bytes) -> list[dict[str, int]]:
    """The entries of a fatbin, read independently of the sim."""
    _, _, hsize, size = struct.unpack_from("<IHHQ", fb, 0)
    out, off = [], hsize
    while off < hsize + size:
        kind, _, ehsize, psize = struct.unpack_from("<HHIQ", fb, off)
        arch, = struct.unpack_from("<I", fb, off + 0x1C)
        flags, = struct.unpack_from("<Q", fb, off + 0x28)
        out.append({"kind": kind, "arch": arch, "flags": flags, "offset": off, "header": ehsize, "size": psize})
        off += ehsize + psize
    return out


# ---------------------------------------------------------------------------------------------------------
# Parent side: artefacts and the child runner


def _nvcc() -> str | None:
    for cand in (os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc"), shutil.which("nvcc"),
                 "/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


NVCC = _nvcc()


def _run_checked(cmd: list[str], **kw: Any) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"


needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: no fatbins from nvcc can be built")


@pytest.fixture(scope="module")
def sim_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed simulated device (FARGPU_NATIVE_DIR or the package), else a CMake build of fgsim."""
    try:
        from fargpu import paths

        return paths.sim_lib()
    except (ImportError, FileNotFoundError):
        pass
    build = tmp_path_factory.mktemp("simbuild")
    _run_checked(["cmake", "-S", str(REPO), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}"])
    _run_checked(["cmake", "--build", str(build), "--target", "fgsim", "-j4"])
    return build / "libfargpu_sim.so"


@pytest.fixture(scope="module")
def libdir(sim_so: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("simlib")
    (d / "libcuda.so.1").symlink_to(sim_so)
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fatbin_kernels.cu built by nvcc: sm_90 cubin + PTX fatbin, PTX-only fatbin, a compressed fatbin, and
    the plain cubin and PTX to compare with."""
    if NVCC is None:
        pytest.skip("nvcc not found: no fatbins from nvcc can be built")
    out = tmp_path_factory.mktemp("fatbins")
    src = DATA / "fatbin_kernels.cu"
    inc = f"-I{REPO / 'tests' / 'c' / 'kernels'}"
    sm90, ptx90 = "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"
    builds = {
        "both.fatbin": ["-no-compress", "-fatbin", "-gencode", sm90, "-gencode", ptx90],
        "ptx.fatbin": ["-no-compress", "-fatbin", "-gencode", ptx90],
        "compressed.fatbin": ["-fatbin", "-gencode", ptx90],
        "k.cubin": ["-no-compress", "-cubin", "-gencode", sm90],
        "k.ptx": ["-ptx", "-arch=compute_90"],
    }
    for name, flags in builds.items():
        _run_checked([NVCC, *flags, inc, str(src), "-o", str(out / name)], timeout=300)
    return out


def run_child(libdir: Path, scenario: str, tmp_path: Path, **args: Any) -> tuple[dict[str, Any], str]:
    """Runs one scenario in a fresh process on the sim; returns its result (with the launch log) and stderr."""
    run = len(list(tmp_path.glob("*.args.json")))
    arg_file = tmp_path / f"{scenario}.{run}.args.json"
    arg_file.write_text(json.dumps(args))
    log = tmp_path / f"{scenario}.{run}.launches.jsonl"
    env = dict(os.environ, LD_LIBRARY_PATH=str(libdir), FARGPU_SIM_LAUNCH_LOG=str(log))
    env.pop("LD_PRELOAD", None)
    res = subprocess.run([sys.executable, __file__, scenario, str(arg_file)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, f"scenario {scenario} failed (rc {res.returncode}):\n{res.stdout}\n{res.stderr}"
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["launches"] = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return result, res.stderr


# ---------------------------------------------------------------------------------------------------------
# Tests


@needs_nvcc
@pytest.mark.parametrize("wrap", [False, True], ids=["fatbin", "fatbin_wrapper"])
def test_fatbin_with_sm90_cubin_loads_the_cubin(libdir: Path, images: Path, tmp_path: Path, wrap: bool) -> None:
    fb = (images / "both.fatbin").read_bytes()
    kinds = {(e["kind"], e["arch"]) for e in fatbin_entries(fb)}
    assert kinds == {(KIND_ELF, 90), (KIND_PTX, 90)} and not any(e["flags"] & 0xB000 for e in fatbin_entries(fb))
    r, err = run_child(libdir, "load_compare", tmp_path, image=str(images / "both.fatbin"),
                       reference=str(images / "k.cubin"), wrap=wrap)
    assert r["rc"] == SUCCESS
    if wrap:  # bad wrappers: unknown version, NULL data, data that is not a fatbin
        assert r["bad_wrappers"] == [INVALID_IMAGE, INVALID_IMAGE, INVALID_IMAGE]
    assert r["params"] == r["ref_params"]
    assert r["params"]["fg_axpb"] == [[0, 8], [8, 4], [16, 8]]
    assert r["params"]["fg_not_simulated"] == [[0, 8], [8, 1], [10, 2], [16, 8]]
    assert r["regs"] == r["ref_regs"]  # the registers of the sm_90 cubin, not the sim's PTX default
    assert r["binary_version"] == 90
    assert r["vadd_ok"] and r["magic"] == 0x12345678
    assert [x["func"] for x in r["launches"]] == ["fg_vadd"] and r["launches"][0]["result"] == "CUDA_SUCCESS"
    assert "fatbin" not in err


@needs_nvcc
def test_fatbin_with_ptx_only_loads_the_ptx(libdir: Path, images: Path, tmp_path: Path) -> None:
    assert [e["kind"] for e in fatbin_entries((images / "ptx.fatbin").read_bytes())] == [KIND_PTX]
    r, _ = run_child(libdir, "load_compare", tmp_path, image=str(images / "ptx.fatbin"),
                     reference=str(images / "k.ptx"), wrap=False)
    assert r["rc"] == SUCCESS
    assert r["params"] == r["ref_params"] and r["regs"] == r["ref_regs"]
    assert set(r["regs"].values()) == {32}  # PTX: the sim's fixed register count (it has no JIT)
    assert r["vadd_ok"] and r["magic"] == 0x12345678


def test_synthetic_fatbins_and_wrapper_without_nvcc(libdir: Path, tmp_path: Path) -> None:
    fb = fatbin(fatbin_entry(KIND_PTX, PTX_VADD))
    r, _ = run_child(libdir, "load_compare", tmp_path, image_hex=fb.hex(), reference_hex=(PTX_VADD + b"\0").hex(),
                     wrap=True)
    assert r["rc"] == SUCCESS and r["params"] == r["ref_params"] == {"fg_vadd": [[0, 8], [8, 8], [16, 8], [24, 4]]}
    assert r["vadd_ok"] and r["magic"] == 0x12345678


@needs_nvcc
def test_compressed_fatbin_is_not_supported(libdir: Path, images: Path, tmp_path: Path) -> None:
    both = (images / "both.fatbin").read_bytes()
    comp = (images / "compressed.fatbin").read_bytes()
    if not any(e["flags"] & FLAG_ZSTD for e in fatbin_entries(comp)):  # nvcc chose not to compress: do it by hand
        e = fatbin_entries(comp)[0]
        comp = bytearray(comp)
        struct.pack_into("<Q", comp, e["offset"] + 0x28, e["flags"] | FLAG_ZSTD)
        comp = bytes(comp)
    # the sm_90 cubin entry flagged compressed: the entry the device would use cannot be read
    elf = next(e for e in fatbin_entries(both) if e["kind"] == KIND_ELF)
    elf_z = bytearray(both)
    struct.pack_into("<Q", elf_z, elf["offset"] + 0x28, elf["flags"] | FLAG_ZSTD)
    r, err = run_child(libdir, "load_codes", tmp_path, images=[comp.hex(), bytes(elf_z).hex(), comp.hex()])
    assert r["module"] == [NOT_SUPPORTED] * 3 and r["library"] == [NOT_SUPPORTED] * 3
    assert err.count(COMPRESSED_MSG) == 1, err  # logged once per process


def test_compression_matters_only_for_the_chosen_entry(libdir: Path, tmp_path: Path) -> None:
    fb = fatbin(fatbin_entry(KIND_PTX, b"\x28\xb5\x2f\xfd" + bytes(60), flags=FLAG_64BIT_LINUX | FLAG_ZSTD),
                fatbin_entry(KIND_PTX, PTX_VADD, arch=75))
    r, err = run_child(libdir, "load_codes", tmp_path, images=[fb.hex()])
    # the compressed entry is sm_90 PTX, so the device would pick it over the sm_75 one: refused
    assert r["module"] == [NOT_SUPPORTED] and COMPRESSED_MSG in err
    fb = fatbin(fatbin_entry(KIND_PTX, b"\x28\xb5\x2f\xfd" + bytes(60), arch=75, flags=FLAG_64BIT_LINUX | FLAG_ZSTD),
                fatbin_entry(KIND_PTX, PTX_VADD, arch=90))
    r, err = run_child(libdir, "load_codes", tmp_path, images=[fb.hex()])
    assert r["module"] == [SUCCESS] and r["library"] == [SUCCESS] and COMPRESSED_MSG not in err


def test_hostile_fatbin_headers_are_invalid_images(libdir: Path, tmp_path: Path) -> None:
    ptx = fatbin_entry(KIND_PTX, PTX_VADD)
    cases: list[tuple[str, bytes, int]] = [
        ("header size below 16", fatbin(ptx)[:6] + struct.pack("<H", 8) + fatbin(ptx)[8:], INVALID_IMAGE),
        ("size beyond the 1 GiB cap", fatbin(ptx, body_size=1 << 40)[:16], INVALID_IMAGE),
        ("size shorter than the entry", fatbin(ptx, body_size=len(ptx) - 8), INVALID_IMAGE),
        ("size shorter than an entry header", fatbin(ptx, body_size=40), INVALID_IMAGE),
        ("entry header size below 64", fatbin(fatbin_entry(KIND_PTX, PTX_VADD, header_size=32)), INVALID_IMAGE),
        ("entry header past the end", fatbin(ptx[:4] + struct.pack("<I", 1 << 20) + ptx[8:]), INVALID_IMAGE),
        ("payload past the end", fatbin(fatbin_entry(KIND_PTX, PTX_VADD, payload_size=1 << 33)), INVALID_IMAGE),
        ("trailing garbage", fatbin(ptx, b"\x01" * 24), INVALID_IMAGE),
        ("zero entry header then garbage", fatbin(ptx, bytes(64) + b"\x07" * 8), INVALID_IMAGE),
        ("garbage PTX payload", fatbin(fatbin_entry(KIND_PTX, b"\x01\x02 hello {{{")), INVALID_IMAGE),
        ("PTX with broken braces", fatbin(fatbin_entry(KIND_PTX, PTX_VADD.replace(b"}", b"{"))), INVALID_PTX),
        ("cubin magic with a short payload", fatbin(fatbin_entry(KIND_ELF, b"\x7fELF\x02\x01\x01")), INVALID_IMAGE),
        ("no entries", fatbin(), NO_BINARY_FOR_GPU),
        ("only an sm_80 cubin", fatbin(fatbin_entry(KIND_ELF, b"\x7fELF" + bytes(60), arch=80)), NO_BINARY_FOR_GPU),
        ("only sm_100 PTX", fatbin(fatbin_entry(KIND_PTX, PTX_VADD, arch=100)), NO_BINARY_FOR_GPU),
        ("unknown container version", fatbin(ptx, version=2), NOT_SUPPORTED),
        ("trailing zero padding", fatbin(ptx, bytes(40)), SUCCESS),
        ("PTX payload without a NUL", fatbin(fatbin_entry(KIND_PTX, PTX_VADD.ljust(-(-len(PTX_VADD) // 8) * 8))),
         SUCCESS),
        ("extended entry header", fatbin(fatbin_entry(KIND_PTX, PTX_VADD, header_size=80)), SUCCESS),
    ]
    r, _ = run_child(libdir, "load_codes", tmp_path, images=[img.hex() for _, img, _ in cases], guarded=True)
    want = [code for _, _, code in cases]
    assert r["module"] == want, list(zip([n for n, _, _ in cases], r["module"], want, strict=True))
    assert r["library"] == want


def _mutants(base: bytes, rng: random.Random, count: int) -> list[str]:
    out = []
    for _ in range(count):
        img = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(4, len(img)) if rng.random() < 0.6 else rng.randrange(4, min(len(img), 0x90))
            if rng.random() < 0.2 and pos + 8 <= len(img):
                img[pos:pos + 8] = struct.pack("<Q", rng.choice([0, 1, 63, 64, 1 << 31, len(img), 1 << 62]))
            else:
                img[pos] = rng.randrange(256)
        out.append(bytes(img).hex())
    return out


def test_mutated_fatbins_never_read_past_their_extent(libdir: Path, tmp_path: Path) -> None:
    rng = random.Random(20251123)
    base = fatbin(fatbin_entry(KIND_PTX, PTX_VADD, arch=75), fatbin_entry(KIND_PTX, PTX_VADD))
    r, _ = run_child(libdir, "load_codes", tmp_path, images=_mutants(base, rng, 600), guarded=True)
    assert set(r["module"]) <= HOSTILE_OK and set(r["library"]) <= HOSTILE_OK
    assert SUCCESS in r["module"] and INVALID_IMAGE in r["module"]  # the mutations reached both outcomes


@needs_nvcc
def test_mutated_nvcc_fatbins_never_read_past_their_extent(libdir: Path, images: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    base = (images / "both.fatbin").read_bytes()
    elf = next(e for e in fatbin_entries(base) if e["kind"] == KIND_ELF)
    truncated = bytearray(base)  # the cubin entry claims fewer bytes than its ELF headers describe
    struct.pack_into("<Q", truncated, elf["offset"] + 8, 256)
    struct.pack_into("<Q", truncated, 8, elf["offset"] + elf["header"] + 256 - 16)
    images_hex = [bytes(truncated[:elf["offset"] + elf["header"] + 256]).hex(), *_mutants(base, rng, 400)]
    r, _ = run_child(libdir, "load_codes", tmp_path, images=images_hex, guarded=True)
    assert r["module"][0] == INVALID_IMAGE
    assert set(r["module"]) <= HOSTILE_OK and set(r["library"]) <= HOSTILE_OK


@needs_nvcc
def test_library_round_trip_and_kernel_launches(libdir: Path, images: Path, tmp_path: Path) -> None:
    r, err = run_child(libdir, "library", tmp_path, image=str(images / "both.fatbin"))
    names = {"fg_vadd", "fg_scale", "fg_fill_u32", "fg_axpb", "fg_hello", "fg_bump_magic", "fg_not_simulated"}
    assert r["count"] == 7 and set(r["enumerated"]) == names and r["get_kernel_matches"]
    assert r["unknown_kernel"] == NOT_FOUND and r["unknown_global"] == NOT_FOUND
    assert r["param_info"]["fg_axpb"] == [[0, 8], [8, 4], [16, 8]]
    assert r["param_info"]["fg_not_simulated"] == [[0, 8], [8, 1], [10, 2], [16, 8]]
    assert r["kernel_library_ok"] and r["function_name"] == "fg_vadd" and r["module_function_same"]
    assert r["magic"] == 0x12345678
    assert r["vadd_via_kernel"] and r["vadd_via_ex"] and r["vadd_via_function"]
    assert r["ex_cooperative"] == NOT_SUPPORTED and r["ex_cluster"] == NOT_SUPPORTED
    assert r["unsimulated"] == NOT_SUPPORTED
    assert r["dyn_shared"] == {"before": INVALID_VALUE, "attr": 100000, "after": SUCCESS, "func_attr": 100000}
    assert r["other_ctx"] == {"distinct": True, "works": True, "gone_after_destroy": INVALID_HANDLE,
                              "primary_same": True}
    assert r["after_unload"] == {"kernel": INVALID_HANDLE, "function": INVALID_HANDLE, "library": INVALID_HANDLE}
    recs = r["launches"]
    assert [x["func"] for x in recs] == ["fg_vadd"] * 3 + ["fg_not_simulated", "fg_vadd", "fg_vadd"]
    assert [x["result"] for x in recs].count("CUDA_ERROR_NOT_SUPPORTED") == 1
    d, c, s, pad, p = struct.unpack("<dbxhIQ", bytes.fromhex(recs[3]["params"]))
    assert (d, c, s, pad, p) == (2.5, 7, -3, 0, 0x1000)
    assert recs[3]["grid"] == [2, 1, 1] and recs[3]["block"] == [32, 1, 1]
    assert err.count("cuLaunchKernel(fg_not_simulated)") == 1


def test_host_functions_run_in_stream_order(libdir: Path, tmp_path: Path) -> None:
    r, _ = run_child(libdir, "hostfn", tmp_path)
    assert r["seen"] == [["hostfn", 1], ["callback", 2, SUCCESS], ["hostfn", 3]]
    assert r["bad"] == {"null_fn": INVALID_VALUE, "flags": INVALID_VALUE, "stream": INVALID_HANDLE}


def test_runtime_startup_calls(libdir: Path, tmp_path: Path) -> None:
    r, _ = run_child(libdir, "runtime_calls", tmp_path)
    assert r["loading_mode"] == 1  # CU_MODULE_EAGER_LOADING
    assert r["ctx_ids_distinct"] and r["ctx_id_current_matches"] and r["primary_new_id_after_reset"]
    assert r["ctx_flags"] == 0 and r["ctx_device"] == [0, 0] and r["ctx_sync_v2"] == [SUCCESS, INVALID_CONTEXT]
    assert r["lazy_library"] == [INVALID_CONTEXT, SUCCESS, True]
    assert r["stream_ids"]["created_distinct"] and r["stream_ids"]["legacy"] == 0
    assert r["stream_ctx"] == {"created": True, "null": True, "green": True}
    assert r["capture"] == {"is": 0, "info": 0, "modes": [0, 1, 2]}
    assert r["memset2d"] and r["memcpy2d"] and r["memcpy2d_bad"] == [INVALID_VALUE, INVALID_VALUE]
    assert r["pointer"]["device"] == {"type": 2, "ordinal": 0, "ctx": True, "range": True, "host": INVALID_VALUE,
                                      "mapped": 1, "managed": 0}
    assert r["pointer"]["host"] == {"type": 1, "devptr_same": True, "hostptr_same": True}
    assert r["pointer"]["unknown"] == {"single": INVALID_VALUE, "many": SUCCESS, "type": 0, "ordinal": -2}
    assert r["pointer"]["buffer_ids_distinct"]
    assert r["async_alloc"] == [SUCCESS, SUCCESS, INVALID_VALUE]
    assert r["occupancy"]["block"] % 32 == 0 and r["occupancy"]["min_grid"] % 132 == 0
    assert r["occupancy"]["block"] > 0 and r["occupancy"]["callback_calls"] > 0
    assert r["func_attrs_all_ok"] and r["priority_range"] == [0, -5] and r["stream_priority"] == -5


# ---------------------------------------------------------------------------------------------------------
# Child side: scenarios run against libcuda.so.1 (the sim) in their own process

C = ctypes


class Wrapper(C.Structure):
    _fields_ = [("magic", C.c_int), ("version", C.c_int), ("data", C.c_void_p), ("filename", C.c_void_p)]


class LaunchAttrValue(C.Union):
    _fields_ = [("pad", C.c_char * 64), ("i", C.c_int), ("dim", C.c_uint * 3), ("p", C.c_void_p)]


class LaunchAttr(C.Structure):
    _fields_ = [("id", C.c_int), ("pad", C.c_char * 4), ("value", LaunchAttrValue)]


class LaunchConfig(C.Structure):
    _fields_ = [("grid", C.c_uint * 3), ("block", C.c_uint * 3), ("shmem", C.c_uint), ("stream", C.c_void_p),
                ("attrs", C.POINTER(LaunchAttr)), ("num_attrs", C.c_uint)]


class Memcpy2D(C.Structure):
    _fields_ = [("srcX", C.c_size_t), ("srcY", C.c_size_t), ("srcType", C.c_int), ("srcHost", C.c_void_p),
                ("srcDevice", C.c_uint64), ("srcArray", C.c_void_p), ("srcPitch", C.c_size_t),
                ("dstX", C.c_size_t), ("dstY", C.c_size_t), ("dstType", C.c_int), ("dstHost", C.c_void_p),
                ("dstDevice", C.c_uint64), ("dstArray", C.c_void_p), ("dstPitch", C.c_size_t),
                ("width", C.c_size_t), ("height", C.c_size_t)]


class Child:
    def __init__(self) -> None:
        self.cu = C.CDLL("libcuda.so.1")
        self.libc = C.CDLL(None)
        self.libc.mmap.restype = C.c_void_p
        self.libc.mmap.argtypes = [C.c_void_p, C.c_size_t, C.c_int, C.c_int, C.c_int, C.c_long]
        self.keep: list[Any] = []
        self.ok(self.cu.cuInit(0))
        self.ctx = C.c_void_p()
        self.ok(self.cu.cuDevicePrimaryCtxRetain(C.byref(self.ctx), 0))
        self.ok(self.cu.cuCtxSetCurrent(self.ctx))

    @staticmethod
    def ok(rc: int) -> None:
        assert rc == SUCCESS, f"CUDA error {rc}"

    def buffer(self, data: bytes) -> C.Array[C.c_char]:
        buf = C.create_string_buffer(data, len(data) + 8)
        self.keep.append(buf)
        return buf

    def guarded_call(self, data: bytes, fn: Callable[[int], int]) -> int:
        """Calls fn(address) with data ending right before a PROT_NONE page."""
        page = mmap.PAGESIZE
        span = (len(data) + page - 1) // page * page or page
        base = self.libc.mmap(None, span + page, mmap.PROT_READ | mmap.PROT_WRITE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        assert base not in (None, C.c_void_p(-1).value)
        start = base + span - len(data)
        C.memmove(start, data, len(data))
        assert self.libc.mprotect(C.c_void_p(base + span), C.c_size_t(page), 0) == 0
        try:
            return fn(start)
        finally:
            self.libc.munmap(C.c_void_p(base), C.c_size_t(span + page))

    def alloc(self, n: int) -> int:
        p = C.c_uint64()
        self.ok(self.cu.cuMemAlloc_v2(C.byref(p), C.c_size_t(n)))
        return p.value

    def htod(self, dst: int, data: bytes) -> None:
        self.ok(self.cu.cuMemcpyHtoD_v2(C.c_uint64(dst), data, C.c_size_t(len(data))))

    def dtoh(self, src: int, n: int) -> bytes:
        buf = C.create_string_buffer(n)
        self.ok(self.cu.cuMemcpyDtoH_v2(buf, C.c_uint64(src), C.c_size_t(n)))
        return buf.raw

    def function(self, mod: C.c_void_p, name: str) -> C.c_void_p:
        f = C.c_void_p()
        self.ok(self.cu.cuModuleGetFunction(C.byref(f), mod, name.encode()))
        return f

    def params(self, fn: Callable[[C.c_void_p, int], int], handle: C.c_void_p) -> list[list[int]]:
        out = []
        for i in range(64):
            off, size = C.c_size_t(), C.c_size_t()
            if fn(handle, C.c_size_t(i), C.byref(off), C.byref(size)) != SUCCESS:
                break
            out.append([off.value, size.value])
        return out

    def vadd_args(self, n: int = 1000) -> tuple[Any, int, bytes]:
        """Device buffers a, b, c for fg_vadd and the kernelParams array; returns (params, c, expected)."""
        rng, fmt = random.Random(n), f"<{n}f"
        a, b = (struct.pack(fmt, *[rng.uniform(-100, 100) for _ in range(n)]) for _ in range(2))
        pa, pb, pc = self.alloc(4 * n), self.alloc(4 * n), self.alloc(4 * n)
        for ptr, data in ((pa, a), (pb, b), (pc, bytes(4 * n))):
            self.htod(ptr, data)
        args = [C.c_uint64(pa), C.c_uint64(pb), C.c_uint64(pc), C.c_int(n)]
        self.keep.append(args)
        params = (C.c_void_p * 4)(*[C.cast(C.byref(x), C.c_void_p) for x in args])
        sums = [x + y for x, y in zip(struct.unpack(fmt, a), struct.unpack(fmt, b), strict=True)]
        return params, pc, struct.pack(fmt, *sums)  # a float32 sum, correctly rounded, like the kernel's

    def launch_vadd(self, f: C.c_void_p | int, n: int = 1000) -> bool:
        params, pc, want = self.vadd_args(n)
        rc = self.cu.cuLaunchKernel(C.c_void_p(f) if isinstance(f, int) else f, (n + 255) // 256, 1, 1, 256, 1, 1,
                                    0, None, params, None)
        return rc == SUCCESS and self.dtoh(pc, 4 * n) == want


def _image(args: dict[str, Any], key: str) -> bytes:
    return bytes.fromhex(args[f"{key}_hex"]) if f"{key}_hex" in args else Path(args[key]).read_bytes()


def scenario_load_compare(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    img, ref = _image(args, "image"), _image(args, "reference")
    if ref[:4] != b"\x7fELF" and not ref.endswith(b"\0"):
        ref += b"\0"
    out: dict[str, Any] = {}
    img_buf = c.buffer(img)
    if args["wrap"]:
        w = Wrapper(WRAPPER_MAGIC, 1, C.cast(img_buf, C.c_void_p), None)
        bad = [Wrapper(WRAPPER_MAGIC, 3, C.cast(img_buf, C.c_void_p), None), Wrapper(WRAPPER_MAGIC, 1, None, None),
               Wrapper(WRAPPER_MAGIC, 1, C.cast(c.buffer(b"\x7fELF" + bytes(60)), C.c_void_p), None)]
        out["bad_wrappers"] = [c.cu.cuModuleLoadData(C.byref(C.c_void_p()), C.byref(x)) for x in bad]
        c.keep.append(w)
        load_arg: Any = C.byref(w)
    else:
        load_arg = img_buf
    mod, rmod = C.c_void_p(), C.c_void_p()
    out["rc"] = c.cu.cuModuleLoadData(C.byref(mod), load_arg)
    c.ok(out["rc"])
    c.ok(c.cu.cuModuleLoadData(C.byref(rmod), c.buffer(ref)))
    names = ["fg_vadd", "fg_scale", "fg_fill_u32", "fg_axpb", "fg_not_simulated"]
    out.update(params={}, ref_params={}, regs={}, ref_regs={})
    for name in names:
        for m, pkey, rkey in ((mod, "params", "regs"), (rmod, "ref_params", "ref_regs")):
            f = C.c_void_p()
            if c.cu.cuModuleGetFunction(C.byref(f), m, name.encode()) != SUCCESS:
                continue
            out[pkey][name] = c.params(c.cu.cuFuncGetParamInfo, f)
            v = C.c_int()
            c.ok(c.cu.cuFuncGetAttribute(C.byref(v), 4, f))  # NUM_REGS
            out[rkey][name] = v.value
    v = C.c_int()
    c.ok(c.cu.cuFuncGetAttribute(C.byref(v), 6, c.function(mod, "fg_vadd")))  # BINARY_VERSION
    out["binary_version"] = v.value
    dptr, size = C.c_uint64(), C.c_size_t()
    c.ok(c.cu.cuModuleGetGlobal_v2(C.byref(dptr), C.byref(size), mod, b"fg_magic"))
    out["magic"] = struct.unpack("<I", c.dtoh(dptr.value, 4))[0]
    out["vadd_ok"] = c.launch_vadd(c.function(mod, "fg_vadd"))
    return out


def scenario_load_codes(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    """The result of cuModuleLoadData and cuLibraryLoadData for each image (unloading what loads)."""
    def load_module(addr: int) -> int:
        m = C.c_void_p()
        rc = c.cu.cuModuleLoadData(C.byref(m), C.c_void_p(addr))
        if rc == SUCCESS:
            c.ok(c.cu.cuModuleUnload(m))
        return rc

    def load_library(addr: int) -> int:
        lib = C.c_void_p()
        rc = c.cu.cuLibraryLoadData(C.byref(lib), C.c_void_p(addr), None, None, 0, None, None, 0)
        if rc == SUCCESS:
            c.ok(c.cu.cuLibraryUnload(lib))
        return rc

    mods, libs = [], []
    for hexed in args["images"]:
        img = bytes.fromhex(hexed)
        if args.get("guarded"):
            # the bytes the sim may read: the 16-byte header, and the rest it describes if that is acceptable
            _, version, hsize, size = struct.unpack_from("<IHHQ", img, 0)
            extent = hsize + size if version == 1 and hsize >= 16 and size <= (1 << 30) - hsize else 16
            if extent > (64 << 20):
                continue  # too large to place; the parent's fixed cases stay well below
            img = img[:extent].ljust(extent, b"\0")
            mods.append(c.guarded_call(img, load_module))
            libs.append(c.guarded_call(img, load_library))
        else:
            buf = c.buffer(img)
            mods.append(load_module(C.cast(buf, C.c_void_p).value or 0))
            libs.append(load_library(C.cast(buf, C.c_void_p).value or 0))
    return {"module": mods, "library": libs}


def scenario_library(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    cu, out = c.cu, {}
    lib = C.c_void_p()
    jit_opts = (C.c_int * 1)(4)  # CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: ignored (logged once)
    jit_vals = (C.c_void_p * 1)(C.c_void_p(0))
    c.ok(cu.cuLibraryLoadData(C.byref(lib), c.buffer(Path(args["image"]).read_bytes()), jit_opts, jit_vals, 1,
                              None, None, 0))
    n = C.c_uint()
    c.ok(cu.cuLibraryGetKernelCount(C.byref(n), lib))
    out["count"] = n.value
    ks = (C.c_void_p * n.value)()
    c.ok(cu.cuLibraryEnumerateKernels(ks, n.value, lib))
    kernels: dict[str, int] = {}
    name, got = C.c_char_p(), C.c_void_p()
    for k in ks:
        c.ok(cu.cuKernelGetName(C.byref(name), C.c_void_p(k)))
        kernels[(name.value or b"").decode()] = k
    out["enumerated"] = sorted(kernels)
    out["get_kernel_matches"] = all(
        cu.cuLibraryGetKernel(C.byref(got), lib, n.encode()) == SUCCESS and got.value == k for n, k in kernels.items())
    out["unknown_kernel"] = cu.cuLibraryGetKernel(C.byref(C.c_void_p()), lib, b"nope")
    out["unknown_global"] = cu.cuLibraryGetGlobal(C.byref(C.c_uint64()), C.byref(C.c_size_t()), lib, b"nope")
    out["param_info"] = {name: c.params(cu.cuKernelGetParamInfo, C.c_void_p(k)) for name, k in kernels.items()}
    got_lib = C.c_void_p()
    c.ok(cu.cuKernelGetLibrary(C.byref(got_lib), C.c_void_p(kernels["fg_vadd"])))
    out["kernel_library_ok"] = got_lib.value == lib.value
    fn, mod, mfn = C.c_void_p(), C.c_void_p(), C.c_void_p()
    c.ok(cu.cuKernelGetFunction(C.byref(fn), C.c_void_p(kernels["fg_vadd"])))
    fname = C.c_char_p()
    c.ok(cu.cuFuncGetName(C.byref(fname), fn))
    out["function_name"] = (fname.value or b"").decode()
    c.ok(cu.cuLibraryGetModule(C.byref(mod), lib))
    c.ok(cu.cuModuleGetFunction(C.byref(mfn), mod, b"fg_vadd"))
    out["module_function_same"] = mfn.value == fn.value and fn.value != kernels["fg_vadd"]
    dptr, size = C.c_uint64(), C.c_size_t()
    c.ok(cu.cuLibraryGetGlobal(C.byref(dptr), C.byref(size), lib, b"fg_magic"))
    out["magic"] = struct.unpack("<I", c.dtoh(dptr.value, 4))[0]

    # launches: the CUkernel passed as a CUfunction, then through cuLaunchKernelEx, then the CUfunction
    vadd = kernels["fg_vadd"]
    out["vadd_via_kernel"] = c.launch_vadd(vadd)
    params, pc, want = c.vadd_args(512)
    attrs = (LaunchAttr * 3)()
    attrs[0].id, attrs[0].value.i = 8, -2  # PRIORITY: a hint
    attrs[1].id, attrs[1].value.i = 2, 0  # COOPERATIVE = 0
    attrs[2].id = 4  # CLUSTER_DIMENSION 1x1x1
    attrs[2].value.dim[0] = attrs[2].value.dim[1] = attrs[2].value.dim[2] = 1
    cfg = LaunchConfig((C.c_uint * 3)(2, 1, 1), (C.c_uint * 3)(256, 1, 1), 0, None, attrs, 3)
    rc = cu.cuLaunchKernelEx(C.byref(cfg), C.c_void_p(vadd), params, None)
    out["vadd_via_ex"] = rc == SUCCESS and c.dtoh(pc, 4 * 512) == want
    attrs[1].value.i = 1
    out["ex_cooperative"] = cu.cuLaunchKernelEx(C.byref(cfg), C.c_void_p(vadd), params, None)
    attrs[1].value.i = 0
    attrs[2].value.dim[0] = 2
    out["ex_cluster"] = cu.cuLaunchKernelEx(C.byref(cfg), C.c_void_p(vadd), params, None)
    out["vadd_via_function"] = c.launch_vadd(fn)
    ns_args = [C.c_double(2.5), C.c_byte(7), C.c_short(-3), C.c_uint64(0x1000)]
    ns_params = (C.c_void_p * 4)(*[C.cast(C.byref(x), C.c_void_p) for x in ns_args])
    out["unsimulated"] = cu.cuLaunchKernel(C.c_void_p(kernels["fg_not_simulated"]), 2, 1, 1, 32, 1, 1, 0, None,
                                           ns_params, None)

    # dynamic shared memory beyond 48 KiB needs the attribute, set on the kernel for device 0
    params, pc, want = c.vadd_args(256)
    dyn: dict[str, int] = {}
    dyn["before"] = cu.cuLaunchKernel(C.c_void_p(vadd), 1, 1, 1, 256, 1, 1, 60000, None, params, None)
    c.ok(cu.cuKernelSetAttribute(8, 100000, C.c_void_p(vadd), 0))  # MAX_DYNAMIC_SHARED_SIZE_BYTES
    v = C.c_int()
    c.ok(cu.cuKernelGetAttribute(C.byref(v), 8, C.c_void_p(vadd), 0))
    dyn["attr"] = v.value
    dyn["after"] = cu.cuLaunchKernel(C.c_void_p(vadd), 1, 1, 1, 256, 1, 1, 60000, None, params, None)
    c.ok(cu.cuFuncGetAttribute(C.byref(v), 8, fn))
    dyn["func_attr"] = v.value
    out["dyn_shared"] = dyn

    # another context gets its own instance, gone with that context
    other, fn2 = C.c_void_p(), C.c_void_p()
    c.ok(cu.cuCtxCreate_v4(C.byref(other), None, 0, 0))
    c.ok(cu.cuKernelGetFunction(C.byref(fn2), C.c_void_p(vadd)))
    oc: dict[str, Any] = {"distinct": fn2.value != fn.value, "works": c.launch_vadd(vadd, 300)}
    c.ok(cu.cuCtxDestroy_v2(other))
    c.ok(cu.cuCtxSetCurrent(c.ctx))
    oc["gone_after_destroy"] = cu.cuFuncGetName(C.byref(fname), fn2)
    again = C.c_void_p()
    c.ok(cu.cuKernelGetFunction(C.byref(again), C.c_void_p(vadd)))
    oc["primary_same"] = again.value == fn.value
    out["other_ctx"] = oc

    c.ok(cu.cuLibraryUnload(lib))
    out["after_unload"] = {"kernel": cu.cuKernelGetName(C.byref(fname), C.c_void_p(vadd)),
                           "function": cu.cuFuncGetName(C.byref(fname), fn),
                           "library": cu.cuLibraryUnload(lib)}
    return out


def scenario_hostfn(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    cu = c.cu
    seen: list[list[int | str]] = []
    host = C.c_void_p()
    c.ok(cu.cuMemAllocHost_v2(C.byref(host), C.c_size_t(64)))
    word = C.c_uint32.from_address(host.value or 0)
    stream = C.c_void_p()
    c.ok(cu.cuStreamCreate(C.byref(stream), 0))
    host_fn = C.CFUNCTYPE(None, C.c_void_p)(lambda _: seen.append(["hostfn", word.value]))
    callback = C.CFUNCTYPE(None, C.c_void_p, C.c_int, C.c_void_p)(
        lambda _s, status, _u: seen.append(["callback", word.value, status]))
    dev = C.c_uint64(host.value or 0)  # pinned host memory is device-accessible at the same address
    c.ok(cu.cuMemsetD32Async(dev, 1, C.c_size_t(16), stream))
    c.ok(cu.cuLaunchHostFunc(stream, host_fn, None))
    c.ok(cu.cuMemsetD32Async(dev, 2, C.c_size_t(16), stream))
    c.ok(cu.cuStreamAddCallback(stream, callback, None, 0))
    c.ok(cu.cuMemsetD32Async(dev, 3, C.c_size_t(16), stream))
    c.ok(cu.cuLaunchHostFunc(stream, host_fn, None))
    c.ok(cu.cuStreamSynchronize(stream))
    bad = {"null_fn": cu.cuLaunchHostFunc(stream, None, None),
           "flags": cu.cuStreamAddCallback(stream, callback, None, 1),
           "stream": cu.cuLaunchHostFunc(C.c_void_p(0xDEAD000), host_fn, None)}
    c.ok(cu.cuStreamDestroy_v2(stream))
    c.ok(cu.cuMemFreeHost(host))
    return {"seen": seen, "bad": bad}


def scenario_runtime_calls(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    cu, out = c.cu, {}
    mode = C.c_int()
    c.ok(cu.cuModuleGetLoadingMode(C.byref(mode)))
    out["loading_mode"] = mode.value
    def ctx_id(ctx: C.c_void_p | None) -> int:
        v = C.c_ulonglong()
        c.ok(cu.cuCtxGetId(ctx, C.byref(v)))
        return v.value

    ids = [ctx_id(c.ctx), ctx_id(None)]
    other, oid = C.c_void_p(), C.c_ulonglong()
    c.ok(cu.cuCtxCreate_v4(C.byref(other), None, 0, 0))
    c.ok(cu.cuCtxGetId(other, C.byref(oid)))
    c.ok(cu.cuCtxDestroy_v2(other))
    c.ok(cu.cuCtxSetCurrent(c.ctx))
    out["ctx_ids_distinct"] = oid.value != ids[0] and ids[0] > 0
    out["ctx_id_current_matches"] = ids[0] == ids[1]
    c.ok(cu.cuDevicePrimaryCtxReset_v2(0))
    c.ok(cu.cuDevicePrimaryCtxRetain(C.byref(c.ctx), 0))
    c.ok(cu.cuCtxSetCurrent(c.ctx))
    out["primary_new_id_after_reset"] = ctx_id(None) not in (ids[0], oid.value)
    flags, dev, dev2 = C.c_uint(), C.c_int(), C.c_int(-1)
    c.ok(cu.cuCtxGetFlags(C.byref(flags)))
    c.ok(cu.cuCtxGetDevice(C.byref(dev)))
    c.ok(cu.cuCtxGetDevice_v2(C.byref(dev2), c.ctx))
    out["ctx_flags"], out["ctx_device"] = flags.value, [dev.value, dev2.value]
    out["ctx_sync_v2"] = [cu.cuCtxSynchronize_v2(None), cu.cuCtxSynchronize_v2(C.c_void_p(0xDEAD000))]

    # a library loaded with no context current is instantiated where it is first used
    c.ok(cu.cuCtxSetCurrent(None))
    lib, k, fn = C.c_void_p(), C.c_void_p(), C.c_void_p()
    c.ok(cu.cuLibraryLoadData(C.byref(lib), c.buffer(fatbin(fatbin_entry(KIND_PTX, PTX_VADD))), None, None, 0, None,
                              None, 0))
    c.ok(cu.cuLibraryGetKernel(C.byref(k), lib, b"fg_vadd"))
    no_ctx = cu.cuKernelGetFunction(C.byref(fn), k)
    c.ok(cu.cuCtxSetCurrent(c.ctx))
    out["lazy_library"] = [no_ctx, cu.cuKernelGetFunction(C.byref(fn), k), c.launch_vadd(k.value or 0, 64)]
    c.ok(cu.cuLibraryUnload(lib))
    lo, hi = C.c_int(), C.c_int()
    c.ok(cu.cuCtxGetStreamPriorityRange(C.byref(lo), C.byref(hi)))
    out["priority_range"] = [lo.value, hi.value]

    s1, s2 = C.c_void_p(), C.c_void_p()
    c.ok(cu.cuStreamCreateWithPriority(C.byref(s1), 1, -5))
    c.ok(cu.cuStreamCreate(C.byref(s2), 0))
    prio = C.c_int()
    c.ok(cu.cuStreamGetPriority(s1, C.byref(prio)))
    out["stream_priority"] = prio.value
    sid = [C.c_ulonglong() for _ in range(3)]
    c.ok(max(cu.cuStreamGetId(s, C.byref(v)) for s, v in zip((s1, s2, None), sid, strict=True)))
    ids3 = [v.value for v in sid]
    out["stream_ids"] = {"created_distinct": ids3[0] != ids3[1] and 0 not in ids3[:2], "legacy": ids3[2]}
    sctx, nctx, green = C.c_void_p(), C.c_void_p(), C.c_void_p(1)
    c.ok(cu.cuStreamGetCtx(s1, C.byref(sctx)))
    c.ok(cu.cuStreamGetCtx(None, C.byref(nctx)))
    c.ok(cu.cuStreamGetCtx_v2(s2, C.byref(sctx), C.byref(green)))
    out["stream_ctx"] = {"created": sctx.value == c.ctx.value, "null": nctx.value == c.ctx.value,
                         "green": green.value is None}
    status, info_status, cap_id = C.c_int(7), C.c_int(7), C.c_uint64(99)
    c.ok(cu.cuStreamIsCapturing(s1, C.byref(status)))
    c.ok(cu.cuStreamGetCaptureInfo_v3(s1, C.byref(info_status), C.byref(cap_id), None, None, None, None))
    mvs = [C.c_int(m) for m in (1, 2, 0)]
    c.ok(max(cu.cuThreadExchangeStreamCaptureMode(C.byref(mv)) for mv in mvs))
    modes = [mv.value for mv in mvs]
    out["capture"] = {"is": status.value, "info": info_status.value + cap_id.value, "modes": modes}

    # 2D memset and copy: a 5 x 3 region at pitch 16 inside a 64-byte allocation
    p = c.alloc(64)
    c.htod(p, bytes(64))
    c.ok(cu.cuMemsetD2D8Async(C.c_uint64(p + 1), C.c_size_t(16), 0xAB, C.c_size_t(5), C.c_size_t(3), s2))
    got = c.dtoh(p, 64)
    want = b"".join(b"\0" + b"\xab" * 5 + bytes(10) for _ in range(3))
    c.ok(cu.cuMemsetD2D32_v2(C.c_uint64(p + 48), C.c_size_t(8), 0x01020304, C.c_size_t(2), C.c_size_t(2)))
    out["memset2d"] = got == want + bytes(16) and c.dtoh(p, 64) == want + struct.pack("<I", 0x01020304) * 4
    src = bytes(range(40))
    dst = C.create_string_buffer(40)
    up = Memcpy2D(srcX=2, srcY=1, srcType=1, srcHost=C.cast(C.c_char_p(src), C.c_void_p), srcPitch=10,
                  dstX=0, dstY=0, dstType=2, dstDevice=p, dstPitch=8, width=6, height=3)
    c.ok(cu.cuMemcpy2D_v2(C.byref(up)))
    down = Memcpy2D(srcType=2, srcDevice=p, srcPitch=8, dstType=1, dstHost=C.cast(dst, C.c_void_p), dstPitch=6,
                    width=6, height=3)
    c.ok(cu.cuMemcpy2DAsync_v2(C.byref(down), s2))
    out["memcpy2d"] = dst.raw[:18] == src[12:18] + src[22:28] + src[32:38]
    too_far = Memcpy2D(srcType=2, srcDevice=p, srcPitch=32, dstType=1, dstHost=C.cast(dst, C.c_void_p), dstPitch=6,
                       width=6, height=3)  # rows at 0, 32, 64: past the 64-byte allocation
    narrow = Memcpy2D(srcType=2, srcDevice=p, srcPitch=4, dstType=1, dstHost=C.cast(dst, C.c_void_p), dstPitch=6,
                      width=6, height=3)  # pitch below the width
    out["memcpy2d_bad"] = [cu.cuMemcpy2DUnaligned_v2(C.byref(too_far)), cu.cuMemcpy2D_v2(C.byref(narrow))]

    # pointer attributes
    def attr(kind: int, ptr: int, ctype: type) -> tuple[int, Any]:
        v = ctype()
        return cu.cuPointerGetAttribute(C.byref(v), kind, C.c_uint64(ptr)), v.value

    q = c.alloc(4096)
    pctx = attr(1, q + 100, C.c_void_p)[1]
    start, size = attr(11, q + 100, C.c_uint64)[1], attr(12, q + 100, C.c_size_t)[1]
    device = {"type": attr(2, q + 100, C.c_uint)[1], "ordinal": attr(9, q, C.c_int)[1], "ctx": pctx == c.ctx.value,
              "range": (start, size) == (q, 4096), "host": attr(4, q, C.c_void_p)[0],
              "mapped": attr(13, q, C.c_uint)[1], "managed": attr(8, q, C.c_uint)[1]}
    h = C.c_void_p()
    c.ok(cu.cuMemAllocHost_v2(C.byref(h), C.c_size_t(256)))
    hp = h.value or 0
    host = {"type": attr(2, hp, C.c_uint)[1], "devptr_same": attr(3, hp + 8, C.c_uint64)[1] == hp + 8,
            "hostptr_same": attr(4, hp + 8, C.c_void_p)[1] == hp + 8}
    kinds = (C.c_int * 2)(2, 9)
    mt, ordinal = C.c_uint(5), C.c_int(5)
    data = (C.c_void_p * 2)(C.cast(C.byref(mt), C.c_void_p), C.cast(C.byref(ordinal), C.c_void_p))
    junk = C.create_string_buffer(16)
    unknown = {"single": attr(2, C.addressof(junk), C.c_uint)[0],
               "many": cu.cuPointerGetAttributes(2, kinds, data, C.c_uint64(C.addressof(junk))),
               "type": mt.value, "ordinal": ordinal.value}
    ids2 = [attr(7, x, C.c_ulonglong)[1] for x in (p, q, hp)]
    out["pointer"] = {"device": device, "host": host, "unknown": unknown,
                      "buffer_ids_distinct": len(set(ids2)) == 3 and 0 not in ids2}
    a = C.c_uint64()
    out["async_alloc"] = [cu.cuMemAllocAsync(C.byref(a), C.c_size_t(1024), s1),
                          cu.cuMemFreeAsync(a, s1), cu.cuMemFreeAsync(a, s1)]

    # occupancy and function attributes on a PTX function
    m = C.c_void_p()
    c.ok(cu.cuModuleLoadData(C.byref(m), c.buffer(PTX_VADD + b"\0")))
    f = c.function(m, "fg_vadd")
    calls: list[int] = []

    def b2d(block: int) -> int:
        calls.append(block)
        return 0

    b2d_fn = C.CFUNCTYPE(C.c_size_t, C.c_int)(b2d)
    grid, block = C.c_int(), C.c_int()
    c.ok(cu.cuOccupancyMaxPotentialBlockSize(C.byref(grid), C.byref(block), f, b2d_fn, C.c_size_t(0), 0))
    out["occupancy"] = {"block": block.value, "min_grid": grid.value, "callback_calls": len(calls)}
    v = C.c_int()
    out["func_attrs_all_ok"] = all(cu.cuFuncGetAttribute(C.byref(v), i, f) == SUCCESS for i in range(16)) and (
        cu.cuFuncSetAttribute(f, 9, 50) == SUCCESS and cu.cuFuncGetAttribute(C.byref(v), 9, f) == SUCCESS
        and v.value == 50 and cu.cuFuncSetAttribute(f, 4, 10) == INVALID_VALUE
        and cu.cuFuncSetCacheConfig(f, 1) == SUCCESS and cu.cuFuncSetCacheConfig(f, 9) == INVALID_VALUE)
    return out


SCENARIOS: dict[str, Callable[[Child, dict[str, Any]], dict[str, Any]]] = {
    "load_compare": scenario_load_compare,
    "load_codes": scenario_load_codes,
    "library": scenario_library,
    "hostfn": scenario_hostfn,
    "runtime_calls": scenario_runtime_calls,
}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]](Child(), json.loads(Path(sys.argv[2]).read_text()))
    print("RESULT " + json.dumps(result), flush=True)
