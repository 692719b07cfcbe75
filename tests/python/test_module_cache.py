"""The server's content-addressed module cache, end to end through the real stub, server and simulated device:
the first session that loads an image sends its bytes once; a second session (a new process) loading the same
image sends only its SHA-256 name; the cache entry is the verified image; a different image is sent again; and
with the cache disabled every session sends the bytes.

The simulated device is a test double: these tests are about what crosses the wire, not about a GPU."""

from __future__ import annotations

import hashlib
import json
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
