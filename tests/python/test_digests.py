"""Known-answer tests of the stub's digests (MD2 for the runtime's integrity check, SHA-256 for the module
cache), built from the real sources with -Wall -Wextra -Werror under ASan/UBSan. That the real CUDA runtime
accepts the integrity answer is shown by the nvcc-program tests (test_acceptance_sim.py) and on the GPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_digest_known_answers(tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler")
    exe = tmp_path / "test_digests"
    subprocess.run(
        [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", f"-I{REPO / 'client_stub'}", f"-I{REPO / 'protocol/c'}",
         str(REPO / "tests/c/test_digests.c"), str(REPO / "client_stub/integrity.c"),
         str(REPO / "protocol/c/fg_sha256.c"), "-o", str(exe)],
        check=True,
    )
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ALL OK" in r.stdout, r.stdout + r.stderr
    assert r.stdout.count("ok ") == 9
