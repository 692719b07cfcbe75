"""client_stub/nvml/tools/smi_trace: the diagnostic that stands in front of an NVML and records every call into
nvidia-smi's private table. Here it is put in front of the fargpu shim (on the GPU host it fronts the real NVML)
and a client calls two slots through it: the calls must reach the shim and come back with their results, and the
trace must show each call's arguments, result, and the memory the call wrote."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import REPO, NodeServer, run_client

from fargpu import paths

TOOL = REPO / "client_stub" / "nvml" / "tools" / "smi_trace.sh"


def test_tracer_forwards_and_records(node_server: NodeServer, tmp_path: Path) -> None:
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the tracer")
    shim = paths.stub_dir() / "libnvidia-ml.so.1"
    built = subprocess.run(["bash", str(TOOL), "--build", str(tmp_path / "t")], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "REAL_NVML": str(shim)}, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    trace = tmp_path / "trace.txt"
    env = node_server.client_env(SMI_TRACE_FILE=str(trace))
    env["LD_LIBRARY_PATH"] = f"{tmp_path / 't'}:{env['LD_LIBRARY_PATH']}"
    res = run_client(r'''
import ctypes
nv = ctypes.CDLL("libnvidia-ml.so.1")
guid = (ctypes.c_ubyte * 16)(*bytes.fromhex("c4fe3e6cc98f6c4ea327ee696e12f7c4"))
t = ctypes.c_void_p()
print("table", nv.nvmlInternalGetExportTable(ctypes.byref(t), guid))
words = ctypes.cast(t, ctypes.POINTER(ctypes.c_uint64))
fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)
print("init", nv.nvmlInit_v2())
h = ctypes.c_void_p()
print("slot81", fn(words[81])(0, ctypes.addressof(h), 0x22, 0), bool(h.value))
print("slot7", fn(words[7])(5, 6, 7, 8))
''', env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split("\n")[:4] == ["table 0", "init 0", "slot81 0 True", "slot7 3"], res.stdout
    text = trace.read_text()
    assert "getExportTable(6c3efec4-8fc9-4e6c-a327-ee696e12f7c4) -> 0" in text
    assert "size 2160 bytes (270 slots)" in text
    assert re.search(r"^#1 slot 81\(0, 0x[0-9a-f]+, 0x22, 0, .*\) -> 0 \(int 0\)  fn .*libnvml_real\.so\+0x", text,
                     re.M), text
    assert re.search(r"^    a1 after :", text, re.M), text  # slot 81 wrote the handle
    assert re.search(r"^#2 slot 7\(0x5, 0x6, 0x7, 0x8, .*\) -> 0x3 \(int 3\)", text, re.M), text
    # The shim behind the tracer is what answered (it logs the unknown slot once).
    assert "nvidia-smi private slot 7 is not supported by the fargpu NVML shim" in res.stderr
