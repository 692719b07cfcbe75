"""The NVML shim (libnvidia-ml.so.1, client_stub/nvml/): installed beside the stub, it answers NVML queries from
the stub's driver API, so NVML clients see the remote GPU. Each check runs a client process that loads the shim
through ctypes (and pynvml, when installed) against a real node server with the simulated device, and compares
the NVML answers with what the driver API says. (The simulated device is a test double.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import REPO, NodeServer, free_port, run_client, start_server, stop_server

from fargpu import paths

EXPORTS = REPO.parent / "shared" / "reference" / "libnvidia-ml-580.159.04-exports.txt"
NVML_SUCCESS, NVML_ERROR_UNINITIALIZED, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED = 0, 1, 2, 3
NVML_ERROR_NOT_FOUND, NVML_ERROR_INSUFFICIENT_SIZE, NVML_ERROR_DRIVER_NOT_LOADED = 6, 7, 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_DEVICE_ARCH_HOPPER = 9
SIM_NAME = "fargpu simulated device"
UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Client prelude: the shim and the stub through ctypes, NVML structs, and `out` (printed as JSON at the end).
PRELUDE = r'''
import ctypes, json, sys
nv = ctypes.CDLL("libnvidia-ml.so.1")
cu = ctypes.CDLL("libcuda.so.1")
nv.nvmlErrorString.restype = ctypes.c_char_p
class PciInfo(ctypes.Structure):
    _fields_ = [("busIdLegacy", ctypes.c_char * 16), ("domain", ctypes.c_uint), ("bus", ctypes.c_uint),
                ("device", ctypes.c_uint), ("pciDeviceId", ctypes.c_uint), ("pciSubSystemId", ctypes.c_uint),
                ("busId", ctypes.c_char * 32)]
class Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]
class MemoryV2(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("total", ctypes.c_ulonglong), ("reserved", ctypes.c_ulonglong),
                ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]
MEMORY_V2 = ctypes.sizeof(MemoryV2) | (2 << 24)
out = {}
def handle(i=0):
    h = ctypes.c_void_p()
    r = nv.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(h))
    return r, h
def text(fn, *args, size=96):
    buf = ctypes.create_string_buffer(size)
    r = fn(*args, buf, ctypes.c_uint(size))
    return r, buf.value.decode()
def uint(fn, *args):
    v = ctypes.c_uint(12345)
    return fn(*args, ctypes.byref(v)), v.value
# nvidia-smi's private table (nvmlInternalGetExportTable). Slots are called the way nvidia-smi does: integer
# registers, pointers passed as addresses.
SMI_GUID = (ctypes.c_ubyte * 16)(*bytes.fromhex("c4fe3e6cc98f6c4ea327ee696e12f7c4"))
nv.nvmlInternalGetExportTable.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
def smi_table(guid=SMI_GUID):
    t = ctypes.c_void_p(0x1234)
    return nv.nvmlInternalGetExportTable(ctypes.byref(t), guid), t
SLOT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)
def slot(t, n):
    return SLOT_FN(ctypes.cast(t, ctypes.POINTER(ctypes.c_uint64))[n])
def addr(obj):
    return ctypes.addressof(obj)
'''


def run_nvml(code: str, env: dict[str, str], timeout: float = 60) -> tuple[dict[str, Any], str]:
    """Runs PRELUDE + code in a client process; returns its `out` dict and its stderr."""
    res = run_client(PRELUDE + code + "\nprint(json.dumps(out))\n", env, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def sim_total_bytes() -> int:
    return int(os.environ.get("FARGPU_SIM_MEM_BYTES", str(16 << 30)))


def shim_lib() -> Path:
    lib = paths.stub_dir() / "libnvidia-ml.so.1"
    assert lib.exists(), f"the NVML shim is not built next to the stub ({lib})"
    return lib


def env_without_driver_version(server: NodeServer, **extra: str) -> dict[str, str]:
    """The client environment with no FARGPU_NVML_DRIVER_VERSION from the caller's (only what `extra` sets)."""
    env = server.client_env()
    env.pop("FARGPU_NVML_DRIVER_VERSION", None)
    env.update(extra)
    return env


def test_exports_every_name_the_real_library_exports() -> None:
    if not EXPORTS.exists():
        pytest.skip(f"reference export list not found at {EXPORTS}")
    out = subprocess.run(["nm", "-D", "--defined-only", str(shim_lib())], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    expected = set(EXPORTS.read_text().split())
    assert len(expected) == 404
    assert expected - exported == set()
    assert {name for name in exported if not name.startswith("nvml")} == set()  # nothing of ours leaks out


def test_calls_before_init_and_refcounted_shutdown() -> None:
    """No server needed: nothing before init touches the driver, and errors are NVML's."""
    env = dict(os.environ, LD_LIBRARY_PATH=f"{paths.stub_dir()}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    env.pop("FARGPU_SERVER", None)
    got, _ = run_nvml(r'''
n = ctypes.c_uint()
out["count"] = nv.nvmlDeviceGetCount_v2(ctypes.byref(n))
out["handle"] = handle(0)[0]
out["shutdown"] = nv.nvmlShutdown()
out["errstr"] = nv.nvmlErrorString(3).decode()
out["errstr_unknown"] = nv.nvmlErrorString(12345).decode()
# nvidia-smi may ask for its table before nvmlInit: the table is served, the device slots refuse.
r, t = smi_table(); out["smi_table"] = r
h = ctypes.c_void_p(); n = ctypes.c_uint(4); buf = ctypes.create_string_buffer(4128 * 4)
out["smi_slot81"] = slot(t, 81)(0, addr(h), 0x22, 0) if r == 0 else None
out["smi_processes"] = (slot(t, 213)(0, addr(n), addr(buf), 0), n.value) if r == 0 else None
''', env)
    assert got == {"count": NVML_ERROR_UNINITIALIZED, "handle": NVML_ERROR_UNINITIALIZED,
                   "shutdown": NVML_ERROR_UNINITIALIZED, "errstr": "Not Supported", "errstr_unknown": "Unknown Error",
                   "smi_table": NVML_SUCCESS, "smi_slot81": NVML_ERROR_UNINITIALIZED,
                   "smi_processes": [NVML_ERROR_UNINITIALIZED, 4]}


def test_reports_the_simulated_device_like_the_driver_api(node_server: NodeServer) -> None:
    got, _ = run_nvml(r'''
out["init"] = nv.nvmlInit_v2()
n = ctypes.c_uint(); out["count"] = (nv.nvmlDeviceGetCount_v2(ctypes.byref(n)), n.value)
r, h = handle(0); out["handle"] = r
out["name"] = text(nv.nvmlDeviceGetName, h)
out["uuid"] = text(nv.nvmlDeviceGetUUID, h)
u = (ctypes.c_ubyte * 16)(); ok = cu.cuDeviceGetUuid_v2(u, 0)
out["cu_uuid"] = (ok, bytes(u).hex())
tm = ctypes.c_size_t(); out["cu_total"] = (cu.cuDeviceTotalMem_v2(ctypes.byref(tm), 0), tm.value)
b = ctypes.create_string_buffer(64); out["cu_busid"] = (cu.cuDeviceGetPCIBusId(b, 64, 0), b.value.decode())
pci = PciInfo(); out["pci_rc"] = nv.nvmlDeviceGetPciInfo_v3(h, ctypes.byref(pci))
out["pci"] = [pci.busId.decode(), pci.busIdLegacy.decode(), pci.domain, pci.bus, pci.device, pci.pciDeviceId]
m = Memory(); out["mem_rc"] = nv.nvmlDeviceGetMemoryInfo(h, ctypes.byref(m)); out["mem"] = [m.total, m.free, m.used]
m2 = MemoryV2(version=MEMORY_V2); out["mem2_rc"] = nv.nvmlDeviceGetMemoryInfo_v2(h, ctypes.byref(m2))
out["mem2"] = [m2.total, m2.reserved, m2.free, m2.used]
# Memory in use is live: allocate in the primary context and query again.
ctx = ctypes.c_void_p(); cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0); cu.cuCtxSetCurrent(ctx)
p = ctypes.c_uint64(); out["alloc"] = cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(64 << 20))
m3 = Memory(); nv.nvmlDeviceGetMemoryInfo(h, ctypes.byref(m3)); out["mem_after"] = [m3.total, m3.free, m3.used]
ma, mi = ctypes.c_int(), ctypes.c_int()
out["cc"] = (nv.nvmlDeviceGetCudaComputeCapability(h, ctypes.byref(ma), ctypes.byref(mi)), ma.value, mi.value)
out["arch"] = uint(nv.nvmlDeviceGetArchitecture, h)
out["brand"] = uint(nv.nvmlDeviceGetBrand, h)
out["index"] = uint(nv.nvmlDeviceGetIndex, h)
out["minor"] = uint(nv.nvmlDeviceGetMinorNumber, h)
out["multi"] = uint(nv.nvmlDeviceGetMultiGpuBoard, h)
out["persist"] = uint(nv.nvmlDeviceGetPersistenceMode, h)
out["compute_mode"] = uint(nv.nvmlDeviceGetComputeMode, h)
out["is_mig"] = uint(nv.nvmlDeviceIsMigDeviceHandle, h)
cur, pend = ctypes.c_uint(7), ctypes.c_uint(7)
out["mig"] = (nv.nvmlDeviceGetMigMode(h, ctypes.byref(cur), ctypes.byref(pend)), cur.value, pend.value)
out["sm_clock"] = uint(nv.nvmlDeviceGetMaxClockInfo, h, ctypes.c_int(1))
out["bus_width"] = uint(nv.nvmlDeviceGetMemoryBusWidth, h)
cv = ctypes.c_int(); out["cuda_version"] = (nv.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(cv)), cv.value)
dv = ctypes.c_int(); cu.cuDriverGetVersion(ctypes.byref(dv)); out["cu_driver_version"] = dv.value
out["driver"] = text(nv.nvmlSystemGetDriverVersion, size=80)
out["nvml_version"] = text(nv.nvmlSystemGetNVMLVersion, size=80)
h2 = ctypes.c_void_p()
out["by_uuid"] = (nv.nvmlDeviceGetHandleByUUID(out["uuid"][1].upper().encode(),
                                               ctypes.byref(h2)), h2.value == h.value)
h3 = ctypes.c_void_p()
out["by_pci"] = (nv.nvmlDeviceGetHandleByPciBusId_v2(pci.busIdLegacy, ctypes.byref(h3)), h3.value == h.value)
out["units"] = uint(nv.nvmlUnitGetCount)
out["shutdown"] = nv.nvmlShutdown()
''', env_without_driver_version(node_server))
    assert got["init"] == NVML_SUCCESS
    assert got["count"] == [NVML_SUCCESS, 1]
    assert got["handle"] == NVML_SUCCESS
    assert got["name"] == [NVML_SUCCESS, SIM_NAME]

    rc, uuid = got["uuid"]
    assert rc == NVML_SUCCESS and UUID_RE.match(uuid), uuid
    cu_rc, raw = got["cu_uuid"]
    assert cu_rc == 0
    assert uuid == f"GPU-{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    assert got["by_uuid"] == [NVML_SUCCESS, True]

    assert got["cu_busid"][0] == 0
    cu_dom, cu_bus, cu_dev = (int(x, 16) for x in re.split(r"[:.]", got["cu_busid"][1])[:3])
    assert got["pci_rc"] == NVML_SUCCESS
    bus_id, legacy, domain, bus, device, pci_device_id = got["pci"]
    assert (domain, bus, device) == (cu_dom, cu_bus, cu_dev)
    assert bus_id == f"{cu_dom:08X}:{cu_bus:02X}:{cu_dev:02X}.0"
    assert legacy == f"{cu_dom:04X}:{cu_bus:02X}:{cu_dev:02X}.0"
    assert pci_device_id == 0x233010DE  # the simulated device's id (H100 SXM, NVIDIA's vendor id)
    assert got["by_pci"] == [NVML_SUCCESS, True]

    total = sim_total_bytes()
    assert got["cu_total"] == [0, total]
    assert got["mem_rc"] == NVML_SUCCESS and got["mem2_rc"] == NVML_SUCCESS
    t, f, u = got["mem"]
    assert t == total and f + u == total
    t2, reserved, f2, u2 = got["mem2"]
    assert t2 == total and reserved == 0 and f2 + u2 == total
    assert got["alloc"] == 0
    t3, f3, u3 = got["mem_after"]
    assert t3 == total and f3 + u3 == total and u3 >= u + (64 << 20)

    assert got["cc"] == [NVML_SUCCESS, 9, 0]
    assert got["arch"] == [NVML_SUCCESS, NVML_DEVICE_ARCH_HOPPER]
    assert got["brand"] == [NVML_SUCCESS, 0]  # unknown: the simulated device's name carries no brand
    assert got["index"] == [NVML_SUCCESS, 0]
    # Not visible through the driver API: refused, output left alone, rather than made up.
    assert got["minor"] == [NVML_ERROR_NOT_SUPPORTED, 12345]
    assert got["multi"] == [NVML_SUCCESS, 0]
    assert got["persist"] == [NVML_ERROR_NOT_SUPPORTED, 12345]
    assert got["compute_mode"] == [NVML_SUCCESS, 0]
    assert got["is_mig"] == [NVML_SUCCESS, 0]
    assert got["mig"] == [NVML_ERROR_NOT_SUPPORTED, 7, 7]
    assert got["sm_clock"] == [NVML_SUCCESS, 1980]
    assert got["bus_width"] == [NVML_SUCCESS, 5120]

    cuda_version = got["cu_driver_version"]
    assert got["cuda_version"] == [NVML_SUCCESS, cuda_version]
    # The node's driver version string, as the node server told the stub ("simulated" for the simulated device).
    assert got["driver"] == [NVML_SUCCESS, "simulated"]
    assert got["nvml_version"] == [NVML_SUCCESS, f"{cuda_version // 1000}.simulated"]
    assert got["units"] == [NVML_SUCCESS, 0]
    assert got["shutdown"] == NVML_SUCCESS


def test_bad_arguments_and_unsupported_calls(node_server: NodeServer) -> None:
    got, stderr = run_nvml(r'''
out["init"] = nv.nvmlInit_v2()
r, h = handle(0)
out["bad_index"] = handle(1)[0]
out["null_count"] = nv.nvmlDeviceGetCount_v2(None)
out["short_name"] = text(nv.nvmlDeviceGetName, h, size=8)[0]
out["short_uuid"] = text(nv.nvmlDeviceGetUUID, h, size=20)[0]
out["bogus_handle"] = text(nv.nvmlDeviceGetName, ctypes.c_void_p(0x1000), size=96)[0]
out["null_handle"] = text(nv.nvmlDeviceGetName, ctypes.c_void_p(0), size=96)[0]
m2 = MemoryV2(version=1); out["mem2_version"] = nv.nvmlDeviceGetMemoryInfo_v2(h, ctypes.byref(m2))
h2 = ctypes.c_void_p()
out["unknown_uuid"] = nv.nvmlDeviceGetHandleByUUID(b"GPU-00000000-0000-0000-0000-000000000000", ctypes.byref(h2))
out["bad_busid"] = nv.nvmlDeviceGetHandleByPciBusId_v2(b"not a bus id", ctypes.byref(h2))
out["unknown_busid"] = nv.nvmlDeviceGetHandleByPciBusId_v2(b"0000:EE:00.0", ctypes.byref(h2))
temp = ctypes.c_uint()
out["unsupported"] = [nv.nvmlDeviceGetTemperature(h, 0, ctypes.byref(temp)) for _ in range(3)]
out["serial"] = text(nv.nvmlDeviceGetSerial, h, size=30)[0]
out["shutdown"] = [nv.nvmlShutdown(), nv.nvmlShutdown()]
''', node_server.client_env())
    assert got == {
        "init": NVML_SUCCESS, "bad_index": NVML_ERROR_INVALID_ARGUMENT, "null_count": NVML_ERROR_INVALID_ARGUMENT,
        "short_name": NVML_ERROR_INSUFFICIENT_SIZE, "short_uuid": NVML_ERROR_INSUFFICIENT_SIZE,
        "bogus_handle": NVML_ERROR_INVALID_ARGUMENT, "null_handle": NVML_ERROR_INVALID_ARGUMENT,
        "mem2_version": NVML_ERROR_ARGUMENT_VERSION_MISMATCH, "unknown_uuid": NVML_ERROR_NOT_FOUND,
        "bad_busid": NVML_ERROR_INVALID_ARGUMENT, "unknown_busid": NVML_ERROR_NOT_FOUND,
        "unsupported": [NVML_ERROR_NOT_SUPPORTED] * 3, "serial": NVML_ERROR_NOT_SUPPORTED,
        "shutdown": [NVML_SUCCESS, NVML_ERROR_UNINITIALIZED],
    }
    notices = [line for line in stderr.splitlines() if "nvmlDeviceGetTemperature" in line]
    assert len(notices) == 1, stderr
    assert notices[0].startswith("fargpu-nvml: nvmlDeviceGetTemperature is not supported")


def test_p2p_status_for_nccl(tmp_path: Path) -> None:
    """nvmlDeviceGetP2PStatus, which NCCL needs for every device pair before it starts: on two simulated devices
    (one P2P clique) read, write and atomics are OK both ways; a device with itself succeeds with status
    NOT_SUPPORTED for the defined indexes and OK past them, as the real library answers on the H100; between two
    devices the NVLink and PCI indexes are refused (not visible through the driver API), logged once; bad arguments
    are refused."""
    s = start_server(tmp_path, env_extra={"FARGPU_SIM_DEVICES": "2"})
    try:
        got, stderr = run_nvml(r'''
out["init"] = nv.nvmlInit_v2()
h0, h1 = handle(0)[1], handle(1)[1]
def p2p(a, b, index):
    st = ctypes.c_uint(99)
    r = nv.nvmlDeviceGetP2PStatus(a, b, ctypes.c_uint(index), ctypes.byref(st))
    return [r, st.value]
out["pairs"] = {f"{i}{j}{k}": p2p(a, b, k) for i, a in enumerate((h0, h1)) for j, b in enumerate((h0, h1))
                for k in (0, 1, 3)}
out["nvlink"] = [p2p(h0, h1, 2)[0], p2p(h1, h0, 2)[0], p2p(h0, h1, 4)[0]]
out["bad_index"] = p2p(h0, h1, 5)[0]
out["self"] = [p2p(h1, h1, k) for k in (2, 4, 5, 77)]
out["null_status"] = nv.nvmlDeviceGetP2PStatus(h0, h1, ctypes.c_uint(0), None)
out["bogus_handle"] = p2p(h0, ctypes.c_void_p(0x1000), 0)[0]
out["shutdown"] = nv.nvmlShutdown()
out["after_shutdown"] = p2p(h0, h1, 0)[0]
''', s.client_env())
    finally:
        stop_server(s)
    assert got["init"] == NVML_SUCCESS and got["shutdown"] == NVML_SUCCESS
    assert len(got["pairs"]) == 12
    assert got["pairs"] == {key: [NVML_SUCCESS, 5 if key[0] == key[1] else 0] for key in got["pairs"]}
    assert got["self"] == [[NVML_SUCCESS, 5], [NVML_SUCCESS, 5], [NVML_SUCCESS, 0], [NVML_SUCCESS, 0]]
    assert got["nvlink"] == [NVML_ERROR_NOT_SUPPORTED] * 3
    assert got["bad_index"] == NVML_ERROR_INVALID_ARGUMENT and got["null_status"] == NVML_ERROR_INVALID_ARGUMENT
    assert got["bogus_handle"] == NVML_ERROR_INVALID_ARGUMENT
    assert got["after_shutdown"] == NVML_ERROR_UNINITIALIZED
    notices = [line for line in stderr.splitlines() if "nvmlDeviceGetP2PStatus" in line]
    assert len(notices) == 1 and "NVLink or PCI index" in notices[0], stderr


def test_event_sets_deliver_no_events(node_server: NodeServer) -> None:
    """Event sets are real objects (nvidia-smi creates one before printing its table), but the shim delivers no
    events: a device supports none, registering any is refused, a wait runs out after its timeout. The MIG device
    count under a handle is 0, as NVML defines it when MIG devices are not available (nvidia-smi exits 3 if the
    call fails)."""
    got, stderr = run_nvml(r'''
import time
out["before_init"] = nv.nvmlEventSetCreate(ctypes.byref(ctypes.c_void_p()))
nv.nvmlInit_v2()
r, h = handle(0)
s1, s2 = ctypes.c_void_p(), ctypes.c_void_p()
out["create"] = [nv.nvmlEventSetCreate(ctypes.byref(s1)), nv.nvmlEventSetCreate(ctypes.byref(s2)),
                 bool(s1.value) and s1.value != s2.value]
out["create_null"] = nv.nvmlEventSetCreate(None)
types = ctypes.c_ulonglong(0xff)
out["supported"] = [nv.nvmlDeviceGetSupportedEventTypes(h, ctypes.byref(types)), types.value]
out["supported_bad"] = [nv.nvmlDeviceGetSupportedEventTypes(h, None),
                        nv.nvmlDeviceGetSupportedEventTypes(ctypes.c_void_p(0x1000), ctypes.byref(types))]
out["register_none"] = nv.nvmlDeviceRegisterEvents(h, ctypes.c_ulonglong(0), s1)
out["register_xid"] = [nv.nvmlDeviceRegisterEvents(h, ctypes.c_ulonglong(8), s1) for _ in range(2)]
out["register_bad_set"] = nv.nvmlDeviceRegisterEvents(h, ctypes.c_ulonglong(8), ctypes.c_void_p(0x1000))
data = (ctypes.c_ubyte * 64)(*([0xab] * 64))
t = time.monotonic()
out["wait"] = [nv.nvmlEventSetWait_v2(s1, ctypes.byref(data), ctypes.c_uint(150)), bytes(data) == b"\xab" * 64]
out["wait_s"] = time.monotonic() - t
out["wait_v1"] = nv.nvmlEventSetWait(s2, ctypes.byref(data), ctypes.c_uint(0))
out["wait_null"] = nv.nvmlEventSetWait_v2(s1, None, ctypes.c_uint(0))
out["free"] = [nv.nvmlEventSetFree(s1), nv.nvmlEventSetFree(s1), nv.nvmlEventSetFree(s2)]
out["wait_freed"] = nv.nvmlEventSetWait_v2(s1, ctypes.byref(data), ctypes.c_uint(0))
n = ctypes.c_uint(9)
out["max_mig"] = [nv.nvmlDeviceGetMaxMigDeviceCount(h, ctypes.byref(n)), n.value,
                  nv.nvmlDeviceGetMaxMigDeviceCount(h, None)]
''', node_server.client_env())
    assert got.pop("wait_s") >= 0.14
    assert got == {
        "before_init": NVML_ERROR_UNINITIALIZED, "create": [NVML_SUCCESS, NVML_SUCCESS, True],
        "create_null": NVML_ERROR_INVALID_ARGUMENT, "supported": [NVML_SUCCESS, 0],
        "supported_bad": [NVML_ERROR_INVALID_ARGUMENT] * 2, "register_none": NVML_SUCCESS,
        "register_xid": [NVML_ERROR_NOT_SUPPORTED] * 2, "register_bad_set": NVML_ERROR_INVALID_ARGUMENT,
        "wait": [NVML_ERROR_TIMEOUT, True], "wait_v1": NVML_ERROR_TIMEOUT, "wait_null": NVML_ERROR_INVALID_ARGUMENT,
        "free": [NVML_SUCCESS, NVML_ERROR_INVALID_ARGUMENT, NVML_SUCCESS],
        "wait_freed": NVML_ERROR_INVALID_ARGUMENT,
        "max_mig": [NVML_SUCCESS, 0, NVML_ERROR_INVALID_ARGUMENT],
    }
    notices = [line for line in stderr.splitlines() if "nvmlDeviceRegisterEvents" in line]
    assert len(notices) == 1 and "delivers no events" in notices[0], stderr


def test_driver_version_from_the_node_or_the_environment(node_server: NodeServer) -> None:
    """The node's driver version string comes from the node server (HELLO_OK, through the stub's FARGPU_NODE
    table; the simulated device says "simulated"), or from FARGPU_NVML_DRIVER_VERSION when set, with NVML's buffer
    rules; an over-long value is refused, not cut."""
    code = r'''
out["init"] = nv.nvmlInit_v2()
out["driver"] = text(nv.nvmlSystemGetDriverVersion, size=80)
out["driver_exact"] = text(nv.nvmlSystemGetDriverVersion, size=11)
out["driver_short"] = text(nv.nvmlSystemGetDriverVersion, size=10)[0]
out["driver_null"] = nv.nvmlSystemGetDriverVersion(None, 80)
out["nvml_version"] = text(nv.nvmlSystemGetNVMLVersion, size=80)
out["nvml_short"] = text(nv.nvmlSystemGetNVMLVersion, size=5)[0]
dv = ctypes.c_int(); cu.cuDriverGetVersion(ctypes.byref(dv)); out["cuda_major"] = dv.value // 1000
'''
    got, _ = run_nvml(code, env_without_driver_version(node_server, FARGPU_NVML_DRIVER_VERSION="580.159.04"))
    major = got["cuda_major"]
    assert got == {
        "init": NVML_SUCCESS, "driver": [NVML_SUCCESS, "580.159.04"], "driver_exact": [NVML_SUCCESS, "580.159.04"],
        "driver_short": NVML_ERROR_INSUFFICIENT_SIZE, "driver_null": NVML_ERROR_INVALID_ARGUMENT,
        "nvml_version": [NVML_SUCCESS, f"{major}.580.159.04"], "nvml_short": NVML_ERROR_INSUFFICIENT_SIZE,
        "cuda_major": major,
    }
    got, stderr = run_nvml(code, env_without_driver_version(node_server, FARGPU_NVML_DRIVER_VERSION="9" * 80))
    assert got["driver"] == [NVML_ERROR_NOT_SUPPORTED, ""] and got["nvml_version"] == [NVML_ERROR_NOT_SUPPORTED, ""]
    assert "FARGPU_NVML_DRIVER_VERSION is longer than 79 characters" in stderr, stderr
    got, stderr = run_nvml(code, env_without_driver_version(node_server))
    assert got["driver"] == [NVML_SUCCESS, "simulated"] and got["nvml_version"] == [NVML_SUCCESS, f"{major}.simulated"]
    assert got["driver_short"] == NVML_SUCCESS and got["driver_null"] == NVML_ERROR_INVALID_ARGUMENT


SMI_KNOWN_SLOTS = {26, 81, 213, 214, 215, 230, 231, 237, 249}
SMI_SLOTS = 270  # driver 580's table: 2160 bytes


def test_nvidia_smi_export_table(node_server: NodeServer) -> None:
    """nvmlInternalGetExportTable, nvidia-smi's private interface: one GUID, a 270-slot table as driver 580's;
    slot 81 is the device handle by index, 213-215 the process lists (empty: not visible from here), and every
    slot whose meaning is not known answers NOT_SUPPORTED and says so once."""
    got, stderr = run_nvml(r'''
out["init"] = nv.nvmlInit_v2()
r, t = smi_table(); out["table"] = r
words = ctypes.cast(t, ctypes.POINTER(ctypes.c_uint64))
out["size"] = words[0]
fns = [words[i] for i in range(1, __SLOTS__)]
out["slot_fns"] = [len(set(fns)), all(fns)]
r2, t2 = smi_table(); out["same_table"] = [r2, t2.value == t.value]

r, h = handle(0)
h81 = ctypes.c_void_p()
out["slot81"] = [slot(t, 81)(0, addr(h81), 0x22, 0), h81.value == h.value]
out["slot81_name"] = [text(nv.nvmlDeviceGetName, h81), text(nv.nvmlDeviceGetName, h)]
out["slot81_uuid"] = [text(nv.nvmlDeviceGetUUID, h81), text(nv.nvmlDeviceGetUUID, h)]
h81b = ctypes.c_void_p()  # the index is a 32-bit argument: the upper half of its register is not part of it
out["slot81_upper_bits"] = [slot(t, 81)(0xdeadbeef00000000, addr(h81b), 0x22, 0), h81b.value == h.value]
out["slot81_bad_index"] = slot(t, 81)(1, addr(ctypes.c_void_p()), 0x22, 0)
out["slot81_null"] = slot(t, 81)(0, 0, 0x22, 0)

ENTRY = 4128
for n in (213, 214, 215):
    buf = ctypes.create_string_buffer(b"\xab" * (ENTRY * 4), ENTRY * 4)
    count = ctypes.c_uint(4)
    rc = slot(t, n)(h.value, addr(count), addr(buf), 0)
    out[f"processes_{n}"] = [rc, count.value, buf.raw == b"\xab" * (ENTRY * 4)]
buf = ctypes.create_string_buffer(ENTRY)
count = ctypes.c_uint(1)
out["processes_null_count"] = slot(t, 213)(h.value, 0, addr(buf), 0)
out["processes_null_array"] = [slot(t, 213)(h.value, addr(count), 0, 0), count.value]
count0 = ctypes.c_uint(0)
out["processes_size_query"] = [slot(t, 214)(h.value, addr(count0), 0, 0), count0.value]
out["processes_bad_handle"] = [slot(t, 215)(0x1000, addr(count), addr(buf), 0), count.value]

v = ctypes.c_uint(7)
out["host_pcie_gen"] = [slot(t, 230)(h.value, addr(v), 0, 0), v.value]
out["sparse_mode"] = [slot(t, 249)(h.value, addr(v), 0, 0), v.value]
out["sparse_null"] = slot(t, 249)(h.value, 0, 0, 0)
out["sparse_bad_handle"] = slot(t, 249)(0x1000, addr(v), 0, 0)
part = ctypes.create_string_buffer(b"\xab" * 80, 80)
for n in (231, 237):
    out[f"part_{n}"] = [slot(t, n)(h.value, addr(part), 80, 0), part.raw == b"\xab" * 80]
    out[f"part_{n}_bad"] = [slot(t, n)(h.value, 0, 80, 0), slot(t, n)(h.value, addr(part), 0, 0),
                            slot(t, n)(0x1000, addr(part), 80, 0)]

# Every other slot, twice, with a device handle first: NOT_SUPPORTED, nothing written.
others = [n for n in range(1, __SLOTS__) if n not in __KNOWN__]
out["others"] = sorted({slot(t, n)(h.value, addr(v), addr(v), 0) for n in others for _ in range(2)})
out["others_wrote"] = v.value

other = (ctypes.c_ubyte * 16)(*range(16))
r3, t3 = smi_table(other); out["other_guid"] = [r3, t3.value]
near = (ctypes.c_ubyte * 16)(*SMI_GUID); near[15] ^= 1
out["near_guid"] = smi_table(near)[0]
out["null_table"] = nv.nvmlInternalGetExportTable(None, SMI_GUID)
r4, t4 = smi_table(None); out["null_guid"] = [r4, t4.value]
out["shutdown"] = nv.nvmlShutdown()
'''.replace("__KNOWN__", repr(SMI_KNOWN_SLOTS)).replace("__SLOTS__", str(SMI_SLOTS)), node_server.client_env())
    name = [NVML_SUCCESS, SIM_NAME]
    assert got["table"] == NVML_SUCCESS
    assert got["size"] == SMI_SLOTS * 8
    assert got["slot_fns"] == [SMI_SLOTS - 1, True]  # distinct functions: each slot knows its number
    assert got["same_table"] == [NVML_SUCCESS, True]

    assert got["slot81"] == [NVML_SUCCESS, True]
    assert got["slot81_name"] == [name, name]
    uuid = got["slot81_uuid"][1]
    assert uuid[0] == NVML_SUCCESS and UUID_RE.match(uuid[1]) and got["slot81_uuid"][0] == uuid
    assert got["slot81_upper_bits"] == [NVML_SUCCESS, True]
    assert got["slot81_bad_index"] == NVML_ERROR_INVALID_ARGUMENT
    assert got["slot81_null"] == NVML_ERROR_INVALID_ARGUMENT

    for n in (213, 214, 215):  # count overwritten with 0, array untouched
        assert got[f"processes_{n}"] == [NVML_SUCCESS, 0, True], n
    assert got["processes_null_count"] == NVML_ERROR_INVALID_ARGUMENT
    assert got["processes_null_array"] == [NVML_ERROR_INVALID_ARGUMENT, 1]
    assert got["processes_size_query"] == [NVML_SUCCESS, 0]
    assert got["processes_bad_handle"] == [NVML_ERROR_INVALID_ARGUMENT, 1]

    assert got["host_pcie_gen"] == [NVML_ERROR_NOT_SUPPORTED, 7]
    assert got["sparse_mode"] == [NVML_ERROR_NOT_SUPPORTED, 7]
    assert got["sparse_null"] == NVML_ERROR_INVALID_ARGUMENT
    assert got["sparse_bad_handle"] == NVML_ERROR_INVALID_ARGUMENT
    for n in (231, 237):  # part numbers: refused, buffer untouched; bad arguments refused as such
        assert got[f"part_{n}"] == [NVML_ERROR_NOT_SUPPORTED, True]
        assert got[f"part_{n}_bad"] == [NVML_ERROR_INVALID_ARGUMENT] * 3
    assert got["others"] == [NVML_ERROR_NOT_SUPPORTED]
    assert got["others_wrote"] == 7

    assert got["other_guid"] == [NVML_ERROR_NOT_SUPPORTED, 0x1234]  # table pointer left alone
    assert got["near_guid"] == NVML_ERROR_NOT_SUPPORTED
    assert got["null_table"] == NVML_ERROR_INVALID_ARGUMENT
    assert got["null_guid"] == [NVML_ERROR_INVALID_ARGUMENT, 0x1234]
    assert got["shutdown"] == NVML_SUCCESS

    # Each unknown slot is named once, with its own number and the first call's arguments.
    lines = stderr.splitlines()
    unknown = re.compile(r"^fargpu-nvml: nvidia-smi private slot (\d+) is not supported by the fargpu NVML shim; "
                         r"it returns NVML_ERROR_NOT_SUPPORTED \(first call's raw arguments: 0x[0-9a-f]+ "
                         r"\(device 0's handle\), 0x[0-9a-f]+, ")
    named = [int(m.group(1)) for m in map(unknown.match, lines) if m]
    assert sorted(named) == sorted(set(range(1, SMI_SLOTS)) - SMI_KNOWN_SLOTS), stderr
    for n, what in ((230, "host-side maximum PCIe link generation"), (249, "sparse operation mode"),
                    (231, "GPU part number"), (237, "FRU part number")):
        notices = [line for line in lines if line.startswith(f"fargpu-nvml: nvidia-smi private slot {n} ({what})")]
        assert len(notices) == 1 and "NVML_ERROR_NOT_SUPPORTED" in notices[0], stderr
    assert len([line for line in lines if "process list (private slots 213-215) is reported empty" in line]) == 1
    guid_notices = [line for line in lines if "nvmlInternalGetExportTable: GUID" in line]
    assert guid_notices[0].startswith("fargpu-nvml: nvmlInternalGetExportTable: GUID "
                                      "03020100-0504-0706-0809-0a0b0c0d0e0f is not supported"), stderr
    assert any("6c3efec4-8fc9-4e6c-a327-ee696e12f7c5" in line for line in guid_notices), stderr
    assert not any("slot 81" in line for line in lines), stderr  # 0x22, as nvidia-smi passes: nothing to say


def test_nvidia_smi_export_table_trace(node_server: NodeServer) -> None:
    """FARGPU_LOG=debug traces every slot call with its arguments and result (for mapping nvidia-smi's calls)."""
    _, stderr = run_nvml(r'''
nv.nvmlInit_v2()
r, t = smi_table()
h = ctypes.c_void_p()
out["slot81"] = slot(t, 81)(0, addr(h), 0x22, 0)
out["slot7"] = slot(t, 7)(5, 6, 7, 8)
out["slot81_odd"] = slot(t, 81)(0, addr(h), 0x23, 0)
''', node_server.client_env(FARGPU_LOG="debug"))
    assert re.search(r"^fargpu-nvml: nvidia-smi private slot 81\(0, 0x[0-9a-f]+, 0x22, 0\) -> 0 \(Success\)$",
                     stderr, re.M), stderr
    assert re.search(r"^fargpu-nvml: nvidia-smi private slot 7\(0x5, 0x6, 0x7, 0x8\) -> 3 \(Not Supported\)$",
                     stderr, re.M), stderr
    assert "slot 81 (device handle by index) was called with third argument 0x23" in stderr, stderr


def test_nvidia_smi_debug_log_slot(node_server: NodeServer) -> None:
    """Slot 26 is nvidia-smi's debug log, fn(format, ...): nvidia-smi hands it every line it prints and stops with
    "Internal NVML error" unless it succeeds. The shim formats it into its own log at debug level (variadic
    arguments read as passed, a double included) and succeeds; without debug logging it succeeds silently."""
    code = r'''
r, t = smi_table()
words = ctypes.cast(t, ctypes.POINTER(ctypes.c_uint64))
log = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p)(words[26])
out["line"] = log(b"nvidia-smi %s: %s\n", b"stdout", b"| NVIDIA-SMI line |")
mixed = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_double, ctypes.c_char_p)(words[26])
out["mixed"] = mixed(b"n=%d x=%.3f s=%s", 42, 2.5, b"end")
out["null"] = log(None, None, None)
'''
    for level, shown in (("debug", True), ("info", False)):
        got, stderr = run_nvml(code, node_server.client_env(FARGPU_LOG=level))
        assert got == {"line": NVML_SUCCESS, "mixed": NVML_SUCCESS, "null": NVML_ERROR_INVALID_ARGUMENT}, level
        lines = stderr.splitlines()
        expected = ["fargpu-nvml: nvidia-smi private slot 26 (debug log): nvidia-smi stdout: | NVIDIA-SMI line |",
                    "fargpu-nvml: nvidia-smi private slot 26 (debug log): n=42 x=2.500 s=end"]
        assert [line for line in lines if "slot 26" in line] == (expected if shown else []), stderr


def test_concurrent_init_is_refcounted(node_server: NodeServer) -> None:
    got, _ = run_nvml(r'''
import threading
results = []
def worker():
    for _ in range(20):
        r = nv.nvmlInit_v2()
        n = ctypes.c_uint(); c = nv.nvmlDeviceGetCount_v2(ctypes.byref(n))
        hr, h = handle(0); nr, name = text(nv.nvmlDeviceGetName, h)
        results.append((r, c, n.value, hr, nr, name, nv.nvmlShutdown()))
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
out["distinct"] = sorted(set(map(tuple, results)))
out["n"] = len(results)
out["after"] = nv.nvmlDeviceGetCount_v2(ctypes.byref(ctypes.c_uint()))
''', node_server.client_env())
    assert got["n"] == 160
    assert got["distinct"] == [[0, 0, 1, 0, 0, SIM_NAME, 0]]
    assert got["after"] == NVML_ERROR_UNINITIALIZED


def test_found_by_path_without_ld_library_path(node_server: NodeServer) -> None:
    """Loaded by absolute path, the shim finds the stub beside it rather than whatever libcuda the loader would."""
    env = node_server.client_env()
    env["LD_LIBRARY_PATH"] = os.environ.get("LD_LIBRARY_PATH", "")
    code = f'''
import ctypes, sys
nv = ctypes.CDLL({str(shim_lib())!r})
r = nv.nvmlInit_v2(); buf = ctypes.create_string_buffer(96); h = ctypes.c_void_p()
nv.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h))
print(r, nv.nvmlDeviceGetName(h, buf, 96), buf.value.decode())
'''
    res = run_client(code, env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"0 0 {SIM_NAME}", res.stdout + res.stderr


@pytest.mark.parametrize("server", ["unreachable", "unset"])
def test_no_server_fails_init_quickly_with_advice(server: str) -> None:
    env = dict(os.environ, LD_LIBRARY_PATH=f"{paths.stub_dir()}:{os.environ.get('LD_LIBRARY_PATH', '')}",
               FARGPU_TOKEN="x")
    env.pop("LD_PRELOAD", None)
    env.pop("FARGPU_POOL_URL", None)
    if server == "unreachable":
        env["FARGPU_SERVER"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    else:
        env.pop("FARGPU_SERVER", None)
    start = time.monotonic()
    got, stderr = run_nvml(r'''
out["init"] = nv.nvmlInit_v2()
out["count"] = nv.nvmlDeviceGetCount_v2(ctypes.byref(ctypes.c_uint()))
n = ctypes.c_uint(7)
out["no_gpus"] = (nv.nvmlInitWithFlags(1), nv.nvmlDeviceGetCount_v2(ctypes.byref(n)), n.value, nv.nvmlShutdown())
''', env, timeout=30)
    assert time.monotonic() - start < 15
    assert got == {"init": NVML_ERROR_DRIVER_NOT_LOADED, "count": NVML_ERROR_UNINITIALIZED,
                   "no_gpus": [NVML_SUCCESS, NVML_SUCCESS, 0, NVML_SUCCESS]}
    assert "fargpu-nvml: cuInit failed" in stderr and "FARGPU_SERVER" in stderr and "fargpu run" in stderr, stderr


def test_pynvml_sees_the_remote_device(node_server: NodeServer) -> None:
    pytest.importorskip("pynvml")
    code = r'''
import json, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
mem = pynvml.nvmlDeviceGetMemoryInfo(h)
mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
pci = pynvml.nvmlDeviceGetPciInfo(h)
try:
    pynvml.nvmlDeviceGetPowerUsage(h)
    power = "ok"
except pynvml.NVMLError_NotSupported:
    power = "not supported"
try:
    driver = pynvml.nvmlSystemGetDriverVersion()
except pynvml.NVMLError_NotSupported:
    driver = "not supported"
print(json.dumps({
    "count": pynvml.nvmlDeviceGetCount(), "name": pynvml.nvmlDeviceGetName(h), "uuid": pynvml.nvmlDeviceGetUUID(h),
    "total": mem.total, "free_plus_used": mem.free + mem.used, "total2": mem2.total,
    "bus_id": pci.busId if isinstance(pci.busId, str) else pci.busId.decode(),
    "cc": list(pynvml.nvmlDeviceGetCudaComputeCapability(h)), "driver": driver,
    "power": power,
}))
pynvml.nvmlShutdown()
'''
    res = subprocess.run([sys.executable, "-c", code], env=env_without_driver_version(node_server), capture_output=True,
                         text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    total = sim_total_bytes()
    assert got["count"] == 1 and got["name"] == SIM_NAME and UUID_RE.match(got["uuid"])
    assert got["total"] == total and got["free_plus_used"] == total and got["total2"] == total
    assert re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.0", got["bus_id"]), got["bus_id"]
    assert got["cc"] == [9, 0]
    assert got["driver"] == "simulated"  # what the node server says of the simulated device
    assert got["power"] == "not supported"
