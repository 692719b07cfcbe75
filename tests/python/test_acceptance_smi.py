"""bench/acceptance_smi.py, the acceptance suite's nvidia-smi judge, checked on text shaped like driver 580's
nvidia-smi output and with a stand-in nvidia-smi on PATH (a shell script; the real one runs on the GPU host).
These test the judge: what it accepts and what it must refuse. No GPU claim rests on them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from e2e_helpers import REPO

sys.path.insert(0, str(REPO / "bench"))  # the bench scripts import their neighbours
import acceptance  # noqa: E402
import acceptance_smi as smi  # noqa: E402

PLAIN = """Fri Dec  4 17:31:09 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|=========================================+========================+======================|
|   0  NVIDIA H200                    {pm}  |   00000000:00:06.0 Off |                    0 |
| N/A   37C    P0             78W /  700W |       0MiB / {total}MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+
"""
Q = """
==============NVSMI LOG==============

Driver Version                                         : 580.159.04
Attached GPUs                                          : 1
GPU 00000000:00:06.0
    Product Name                                       : NVIDIA H200
    MIG Mode
        Current                                        : {mig}
    GPU Part Number                                    : {part}
"""


def test_table_fields() -> None:
    f = smi.table_fields(PLAIN.format(pm="On", total=143771))
    assert f == {"driver_version": "580.159.04", "cuda_version": "13.0",
                 "gpus": [{"index": 0, "name": "NVIDIA H200", "bus_id": "00000000:00:06.0",
                           "memory_total_mib": 143771}]}
    assert smi.table_fields(PLAIN.format(pm="N/A", total=1))["gpus"][0]["name"] == "NVIDIA H200"
    assert smi.table_fields("nothing here") == {"driver_version": "", "cuda_version": "", "gpus": []}


def test_q_fields_nest_by_indentation() -> None:
    f = smi.q_fields(Q.format(mig="Disabled", part="2335-895-A1"))
    assert f == {"Driver Version": "580.159.04", "Attached GPUs": "1",
                 "GPU 00000000:00:06.0/Product Name": "NVIDIA H200",
                 "GPU 00000000:00:06.0/MIG Mode/Current": "Disabled",
                 "GPU 00000000:00:06.0/GPU Part Number": "2335-895-A1"}


def _proof(path: Path, *mapped: str, fds: tuple[str, ...] = ()) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"pid": 7, "mapped": list(mapped), "nvidia_fds": list(fds)}) + "\n")


def test_proof_of_shim(tmp_path: Path) -> None:
    stub = tmp_path / "stub"
    stub.mkdir()
    ours = [str(stub / "libcuda.so.1"), str(stub / "libnvidia-ml.so.1")]
    p = tmp_path / "p.jsonl"
    assert smi.proof_of_shim(p, stub) == ["no proof written: the stub was not loaded, or nvidia-smi did not exit "
                                          "normally"]
    _proof(p, *ours)
    assert smi.proof_of_shim(p, stub) == []
    p.unlink()
    _proof(p, *ours, "/usr/lib/libnvidia-ml.so.580.159.04", fds=("/dev/nvidia0",))
    assert smi.proof_of_shim(p, stub) == ["pid 7 mapped /usr/lib/libnvidia-ml.so.580.159.04",
                                          "pid 7 held a GPU device node open: /dev/nvidia0"]
    p.unlink()
    _proof(p, ours[1])
    assert smi.proof_of_shim(p, stub) == [f"pid 7 did not map fargpu's libcuda from {stub}"]


# A stand-in nvidia-smi: prints the "native" text, or with FARGPU_SERVER set (the shim run) the shim text and a
# proof line; SHIM_* variables choose what the shim side gets wrong.
FAKE = r"""#!/bin/sh
if [ -n "$FARGPU_SERVER" ]; then
  side=shim
  printf '{"pid": 1, "mapped": ["%s/libcuda.so.1", "%s/libnvidia-ml.so.1"], "nvidia_fds": []}\n' \
    "$STUB" "$STUB" >> "$FARGPU_PROOF_FILE"
else
  side=native
fi
case "$1" in
  -L) [ "$side" = shim ] && [ -n "$SHIM_L" ] && echo "$SHIM_L" || echo "GPU 0: NVIDIA H200 (UUID: GPU-1)";;
  -q) cat "$DIR/q.$side";;
  *) [ "$side" = shim ] && [ -n "$SHIM_RC" ] && exit "$SHIM_RC"; cat "$DIR/plain.$side";;
esac
"""


@pytest.mark.parametrize("case", ["good", "memory_close", "memory_far", "name", "rc", "L", "no_rows"])
def test_nvidia_smi_check_judges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    stub = tmp_path / "stub"
    stub.mkdir()
    (tmp_path / "nvidia-smi").write_text(FAKE)
    (tmp_path / "nvidia-smi").chmod(0o755)
    native = PLAIN.format(pm="On", total=143771)
    shim_text = {"memory_close": PLAIN.format(pm="N/A", total=143200),
                 "memory_far": PLAIN.format(pm="N/A", total=100000),
                 "name": PLAIN.format(pm="N/A", total=143771).replace("NVIDIA H200", "NVIDIA H100"),
                 "no_rows": "no table\n"}.get(case, PLAIN.format(pm="N/A", total=143771))
    (tmp_path / "plain.native").write_text(native)
    (tmp_path / "plain.shim").write_text(shim_text)
    (tmp_path / "q.native").write_text(Q.format(mig="Disabled", part="2335-895-A1"))
    (tmp_path / "q.shim").write_text(Q.format(mig="Disabled", part="N/A"))
    out = tmp_path / "out"
    for sub in ("logs", "proofs", "work"):
        (out / sub).mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("DIR", str(tmp_path))
    monkeypatch.setenv("STUB", str(stub))
    if case == "rc":
        monkeypatch.setenv("SHIM_RC", "4")
    if case == "L":
        monkeypatch.setenv("SHIM_L", "GPU 0: something else")
    res = smi.nvidia_smi_check(out, stub, "127.0.0.1:1", "t", acceptance.run_process, acceptance.native_env)
    assert res["ran"]
    assert res["q"]["differ"] == 1 and res["q"]["same"] == 4, res["q"]  # reported, never judged
    expected = {
        "good": [], "memory_close": [],
        "memory_far": ["nvidia-smi (plain): GPU 0 total memory native 143771 MiB, shim 100000 MiB"],
        "name": ["nvidia-smi (plain): GPU 0 name native 'NVIDIA H200', shim 'NVIDIA H100'"],
        "rc": ["nvidia-smi (plain): native rc 0, shim rc 4"],
        "L": ["nvidia-smi -L: shim rc 0, output differs"],
        "no_rows": ["nvidia-smi (plain): the shim run shows no GPU row"],
    }[case]
    assert res["problems"] == expected
    assert res["pass"] == (not expected)
