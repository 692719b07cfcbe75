"""Listing the module globals of an image (server/replay/global_names.c), which parking saves by name: nvcc-built
cubins, PTX and fatbins, Zstandard-compressed entries included (nvcc's default), give exactly the variables the
source defines (`__device__`, file-static, `__constant__`, `__managed__`), never shared memory or kernel parameters;
malformed images are refused with a reason, never read out of bounds."""

from __future__ import annotations

import ctypes
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from fargpu import paths

SOURCE = r'''
__device__ unsigned int g_counter = 7;
__device__ float g_table[4096] = {1.0f};
static __device__ int s_hidden = 3;
__constant__ int c_coef[16];
__managed__ int m_val = 5;
extern "C" __global__ void bump(unsigned int a, float *o)
{
    __shared__ float sh[64];
    sh[threadIdx.x % 64] = a;
    __syncthreads();
    g_counter += a + s_hidden + c_coef[0] + m_val;
    g_table[a] += sh[0];
    s_hidden++;
    o[0] = sh[1];
}
'''
NAMES = {"g_counter", "g_table", "s_hidden", "c_coef", "m_val"}
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


def _list(image: bytes, sm: int = 90) -> tuple[int, list[str]]:
    lib = ctypes.CDLL(str(paths.replay_lib()))
    f = lib.fgs_list_image_globals
    f.restype = ctypes.c_long
    f.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong]
    out = ctypes.create_string_buffer(1 << 16)
    n = f(image, len(image), sm, out, len(out))
    text = out.value.decode(errors="replace")
    return n, text.split("\n") if n < 0 else text.split()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    if not NVCC:
        pytest.skip("nvcc is needed to build the images")
    d = tmp_path_factory.mktemp("images")
    (d / "g.cu").write_text(SOURCE)
    arch = ["-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_80,code=sm_80",
            "-gencode", "arch=compute_90,code=compute_90"]
    builds = {"cubin": ["-cubin", "-arch=sm_90"], "ptx": ["-ptx", "-arch=sm_90"],
              "fatbin_zstd": ["-fatbin", *arch, "-Xfatbin", "-compress-all"],
              "fatbin_plain": ["-fatbin", *arch, "--no-compress"]}
    out = {}
    for name, flags in builds.items():
        subprocess.run([NVCC, *flags, str(d / "g.cu"), "-o", str(d / name)], check=True, capture_output=True)
        out[name] = (d / name).read_bytes() + (b"\0" if name == "ptx" else b"")
    return out


def test_every_format_lists_exactly_the_variables(images: dict[str, bytes]) -> None:
    for name, image in images.items():
        n, names = _list(image)
        assert n == len(NAMES) and set(names) == NAMES, (name, n, names)
    # a fatbin without a cubin for the device's SM is read whole (its other cubins and PTX)
    n, names = _list(images["fatbin_zstd"], sm=75)
    assert set(names) == NAMES, names


def test_compressed_entries_are_really_compressed(images: dict[str, bytes]) -> None:
    fb = images["fatbin_zstd"]
    hsize, body = struct.unpack_from("<HQ", fb, 6)
    flags, off = [], hsize
    while off < hsize + body:
        kind, ehsize, psize = struct.unpack_from("<HxxIQ", fb, off)
        if kind == 0:
            break
        flags.append(struct.unpack_from("<Q", fb, off + 0x28)[0])
        off += ehsize + psize
    assert flags and all(f & 0x8000 for f in flags), [hex(f) for f in flags]  # every entry Zstandard


def test_malformed_images_are_refused_with_a_reason_never_overread(images: dict[str, bytes]) -> None:
    fb = bytearray(images["fatbin_plain"])
    struct.pack_into("<Q", fb, 8, len(fb) * 4)  # the container claims more than there is
    n, why = _list(bytes(fb))
    assert n == -1 and "malformed" in why[0], why
    elf = bytearray(images["cubin"])
    struct.pack_into("<Q", elf, 0x28, len(elf) - 8)  # section headers past the end
    n, why = _list(bytes(elf))
    assert n == -1 and "outside the file" in why[0], why
    rng = random.Random(7)
    for base in (images["fatbin_zstd"], images["cubin"]):
        for _ in range(300):  # flipped bytes: an answer or a refusal, never a crash (ASan builds check overreads)
            m = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                m[rng.randrange(len(m))] = rng.randrange(256)
            n, _names = _list(bytes(m))
            assert n >= -1
