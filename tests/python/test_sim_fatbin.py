"""The simulated device with what nvcc-built programs hand the driver: fatbins (an sm_90 cubin plus PTX, PTX
only, behind a fatbin wrapper, compressed), hostile fatbin headers, the CUDA 12+ library API (cuLibrary*,
cuKernel*, a CUkernel launched as a CUfunction), cuLaunchKernelEx, host functions in stream order, and the
other calls the CUDA runtime makes at start-up.

Each scenario runs in a child process (sim_fatbin_child.py run as a script) that loads libfargpu_sim.so as
libcuda.so.1 from LD_LIBRARY_PATH: the sim's once-per-process log lines and its global state then belong to that
scenario alone. Hostile images are placed so that their last byte sits right before an inaccessible page: a read
past the extent the image describes kills the child, and the test fails. The simulated device is a test double
(server/sim/README.md); no claim about GPUs rests on these tests."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sim_fatbin_images import (
    FLAG_64BIT_LINUX,
    FLAG_ZSTD,
    INVALID_CONTEXT,
    INVALID_HANDLE,
    INVALID_IMAGE,
    INVALID_PTX,
    INVALID_VALUE,
    KIND_ELF,
    KIND_PTX,
    NO_BINARY_FOR_GPU,
    NOT_FOUND,
    NOT_SUPPORTED,
    PTX_VADD,
    SUCCESS,
    UNSUPPORTED_PTX_VERSION,
    fatbin,
    fatbin_entries,
    fatbin_entry,
)

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "sim_fatbin_data"
CHILD = Path(__file__).resolve().parent / "sim_fatbin_child.py"

# what a hostile image may give: an error, or success when the mutation left it valid; never a crash
HOSTILE_OK = {SUCCESS, INVALID_IMAGE, INVALID_PTX, NO_BINARY_FOR_GPU, NOT_SUPPORTED, UNSUPPORTED_PTX_VERSION}
COMPRESSED_MSG = ("compressed fatbin entries are not supported by the simulated device; "
                  "build with nvcc -no-compress")


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
    res = subprocess.run([sys.executable, str(CHILD), scenario, str(arg_file)], env=env, capture_output=True,
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
