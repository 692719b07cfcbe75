"""The server's content-addressed module cache, end to end through the real stub, server and simulated device:
the first session that loads an image sends its bytes once; a second session (a new process) loading the same
image sends only its SHA-256 name; the cache entry is the verified image; a different image is sent again; and
with the cache disabled every session sends the bytes. cuModuleLoadFatBinary takes the same path: a fatbin that
cuModuleLoadData loaded once is sent as its name only, its kernels are found, and bad arguments are refused.

The simulated device is a test double: these tests are about what crosses the wire, not about a GPU."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda_ctypes import PRELUDE
from e2e_helpers import REPO, NodeServer, run_client, start_server, stop_server

PTX = REPO / "fargpu" / "generated" / "test_kernels.ptx"

LOAD = PRELUDE + r'''
import sys
ctx0()
img = open(sys.argv[1] if len(sys.argv) > 1 else "__PTX__", "rb").read() + b"\0"
mod = ctypes.c_void_p()
ok(cu.cuModuleLoadData(ctypes.byref(mod), img), "load")
fn = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"fg_vadd"), "getfunction")
ok(cu.cuModuleUnload(mod), "unload")
print("OK")
'''


@pytest.fixture
def cached_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeServer]:
    monkeypatch.setenv("FARGPU_MODULE_CACHE", str(tmp_path / "cache"))
    s = start_server(tmp_path)
    yield s
    stop_server(s)


def _load(server: NodeServer, tmp: Path, image: Path, tag: str) -> int:
    proof = tmp / f"proof-{tag}.jsonl"
    r = run_client(LOAD.replace("__PTX__", str(image)), server.client_env(FARGPU_PROOF_FILE=str(proof)))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr + server.log_text()
    return int(json.loads(proof.read_text().splitlines()[-1])["image_bytes_sent"])


def test_second_session_sends_only_the_hash(cached_server: NodeServer, tmp_path: Path) -> None:
    image = PTX.read_bytes() + b"\0"
    first = _load(cached_server, tmp_path, PTX, "first")
    second = _load(cached_server, tmp_path, PTX, "second")
    assert first == len(image)
    assert second == 0
    entry = tmp_path / "cache" / hashlib.sha256(image).hexdigest()
    assert entry.read_bytes() == image


def test_a_different_image_is_sent(cached_server: NodeServer, tmp_path: Path) -> None:
    other = tmp_path / "other.ptx"
    other.write_bytes(PTX.read_bytes() + b"\n// a different image\n")
    assert _load(cached_server, tmp_path, PTX, "a") > 0
    assert _load(cached_server, tmp_path, other, "b") == len(other.read_bytes()) + 1


def test_cache_off_sends_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARGPU_MODULE_CACHE", "off")
    s = start_server(tmp_path)
    try:
        n = len(PTX.read_bytes()) + 1
        assert _load(s, tmp_path, PTX, "1") == n
        assert _load(s, tmp_path, PTX, "2") == n
    finally:
        stop_server(s)


FROM_FILE = PRELUDE + r'''
ctx0()
mod = ctypes.c_void_p()
ok(cu.cuModuleLoad(ctypes.byref(mod), b"__PTX__"), "cuModuleLoad")
fn = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"fg_vadd"), "getfunction")
print("missing", cu.cuModuleLoad(ctypes.byref(mod), b"/nonexistent/kernels.ptx"))
print("OK")
'''


def test_cu_module_load_reads_the_client_file(cached_server: NodeServer, tmp_path: Path) -> None:
    proof = tmp_path / "proof-file.jsonl"
    r = run_client(FROM_FILE.replace("__PTX__", str(PTX)), cached_server.client_env(FARGPU_PROOF_FILE=str(proof)))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    assert "missing 301" in r.stdout  # CUDA_ERROR_FILE_NOT_FOUND, as the driver answers
    assert int(json.loads(proof.read_text().splitlines()[-1])["image_bytes_sent"]) == len(PTX.read_bytes()) + 1


# A fatbin as nvcc lays it out (header: magic, version, header size, body size; one entry: kind 1 = PTX, its header
# size and payload size, the PTX version and target sm_90, 64-bit Linux), wrapping the test kernels' PTX.
def _fatbin_of(ptx: bytes) -> bytes:
    ptx += bytes(-len(ptx) % 8)
    entry = struct.pack("<HHIQIIIIIIQQQ", 1, 0x0101, 64, len(ptx), 0, 0, 8 << 16, 90, 0, 0, 0x11, 0, 0) + ptx
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entry)) + entry


FATBIN = PRELUDE + r"""
ctx0()
img = open("__FATBIN__", "rb").read()
mod = ctypes.c_void_p()
ok(getattr(cu, "__LOADER__")(ctypes.byref(mod), img), "load")
fn = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"fg_vadd"), "getfunction")
print("no module pointer", cu.cuModuleLoadFatBinary(None, img))
print("no image", cu.cuModuleLoadFatBinary(ctypes.byref(mod), None))
ok(cu.cuModuleUnload(mod), "unload")
print("OK")
"""


def test_fatbinary_load_goes_the_same_way(cached_server: NodeServer, tmp_path: Path) -> None:
    fb = tmp_path / "kernels.fatbin"
    fb.write_bytes(_fatbin_of(PTX.read_bytes() + b"\0"))
    sent = []
    for tag, loader in (("data", "cuModuleLoadData"), ("fatbinary", "cuModuleLoadFatBinary")):
        proof = tmp_path / f"proof-{tag}.jsonl"
        code = FATBIN.replace("__FATBIN__", str(fb)).replace("__LOADER__", loader)
        r = run_client(code, cached_server.client_env(FARGPU_PROOF_FILE=str(proof)))
        assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr + cached_server.log_text()
        assert "no module pointer 1" in r.stdout and "no image 1" in r.stdout, r.stdout  # CUDA_ERROR_INVALID_VALUE
        sent.append(int(json.loads(proof.read_text().splitlines()[-1])["image_bytes_sent"]))
    # the fatbin crossed once; cuModuleLoadFatBinary found it in the node's cache by its hash
    assert sent == [fb.stat().st_size, 0], sent
