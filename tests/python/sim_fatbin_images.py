"""Shared by test_sim_fatbin.py and its child process (sim_fatbin_child.py): CUDA result codes, the fatbin
container format (magics, entry kinds, flags), a PTX module with the test kernel fg_vadd, and fatbins built and
read here independently of the simulated device."""

from __future__ import annotations

import struct

SUCCESS, INVALID_VALUE, INVALID_IMAGE, INVALID_CONTEXT, NO_BINARY_FOR_GPU = 0, 1, 200, 201, 209
INVALID_PTX, UNSUPPORTED_PTX_VERSION, INVALID_HANDLE, NOT_FOUND, NOT_SUPPORTED = 218, 222, 400, 500, 801

FATBIN_MAGIC = 0xBA55ED50
WRAPPER_MAGIC = 0x466243B1
KIND_PTX, KIND_ELF = 1, 2
FLAG_64BIT_LINUX = 0x11
FLAG_ZSTD = 0x8000

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
