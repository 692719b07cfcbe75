"""Sessions with several GPUs, end to end: a live pool manager places a 2-GPU lease on a node of three simulated
devices of different sizes; the node's worker sees exactly the lease's GPUs, in lease order (ordinals 0 and 1 are
the node's GPUs 1 and 2); device ordinals, UUIDs and PCI bus ids agree between the driver API (the stub), the NVML
shim and the node's own report to the pool; the quota is per GPU (64 MiB on each, not 128 on one); and a lease
whose GPUs no single node has is refused with the reason. (The simulated device is a test double.)"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import httpx
from _live_pool import LivePool, _key

from fargpu import paths

MiB = 1 << 20

CLIENT = r'''
import ctypes, json, sys
cu = ctypes.CDLL("libcuda.so.1")
nv = ctypes.CDLL("libnvidia-ml.so.1")
def ok(r, what):
    if r != 0:
        print(f"FAIL {what}: {r}"); sys.exit(1)
class PciInfo(ctypes.Structure):
    _fields_ = [("busIdLegacy", ctypes.c_char * 16), ("domain", ctypes.c_uint), ("bus", ctypes.c_uint),
                ("device", ctypes.c_uint), ("pciDeviceId", ctypes.c_uint), ("pciSubSystemId", ctypes.c_uint),
                ("busId", ctypes.c_char * 32)]
ok(cu.cuInit(0), "cuInit")
n = ctypes.c_int()
ok(cu.cuDeviceGetCount(ctypes.byref(n)), "count")
out = {"count": n.value, "cuda": [], "nvml": [], "alloc": []}
for i in range(n.value):
    u = ctypes.create_string_buffer(16)
    ok(cu.cuDeviceGetUuid_v2(u, i), "uuid")
    h = u.raw.hex()
    pci = ctypes.create_string_buffer(32)
    ok(cu.cuDeviceGetPCIBusId(pci, 32, i), "pci")
    tot = ctypes.c_size_t()
    ok(cu.cuDeviceTotalMem_v2(ctypes.byref(tot), i), "totalmem")
    out["cuda"].append({"uuid": f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
                        "pci": pci.value.decode(), "total": tot.value})
ok(nv.nvmlInit_v2(), "nvmlInit")
c = ctypes.c_uint()
ok(nv.nvmlDeviceGetCount_v2(ctypes.byref(c)), "nvml count")
out["nvml_count"] = c.value
for i in range(c.value):
    hd = ctypes.c_void_p()
    ok(nv.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(hd)), "nvml handle")
    ub = ctypes.create_string_buffer(96)
    ok(nv.nvmlDeviceGetUUID(hd, ub, ctypes.c_uint(96)), "nvml uuid")
    p = PciInfo()
    ok(nv.nvmlDeviceGetPciInfo_v3(hd, ctypes.byref(p)), "nvml pci")
    idx = ctypes.c_uint(99)
    ok(nv.nvmlDeviceGetIndex(hd, ctypes.byref(idx)), "nvml index")
    out["nvml"].append({"uuid": ub.value.decode(), "pci": p.busId.decode(), "index": idx.value})
# per-GPU quota: 48 MiB fits on each GPU, a second 32 MiB on the same GPU does not
for dev in range(n.value):
    ctx = ctypes.c_void_p()
    ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "retain")
    ok(cu.cuCtxSetCurrent(ctx), "set")
    p1, p2 = ctypes.c_uint64(), ctypes.c_uint64()
    r1 = cu.cuMemAlloc_v2(ctypes.byref(p1), ctypes.c_size_t(48 << 20))
    r2 = cu.cuMemAlloc_v2(ctypes.byref(p2), ctypes.c_size_t(32 << 20))
    f, t = ctypes.c_size_t(), ctypes.c_size_t()
    ok(cu.cuMemGetInfo_v2(ctypes.byref(f), ctypes.byref(t)), "meminfo")
    d = ctypes.c_int(-1)
    ok(cu.cuPointerGetAttribute(ctypes.byref(d), 9, ctypes.c_uint64(p1.value)), "ptr ordinal")  # DEVICE_ORDINAL
    out["alloc"].append({"first": r1, "second": r2, "total": t.value, "free": f.value, "ordinal": d.value})
print(json.dumps(out))
'''


def test_a_two_gpu_lease_sees_its_gpus_in_order_with_a_per_gpu_quota(tmp_path: Path) -> None:
    # GPU 0 is large, 1 and 2 small: packing puts a 2-GPU lease on 1 and 2, so ordinal 0 is the node's GPU 1.
    pool = LivePool.start(tmp_path, store_args=["--memory-only"],
                          node_env={"FARGPU_SIM_DEVICES": "3",
                                    "FARGPU_SIM_MEM_BYTES": f"{4 << 30},{1 << 30},{1 << 30}"})
    try:
        node = pool.get("/v1/nodes")[0]
        by_index = {g["index"]: g for g in node["gpus"]}
        assert len(by_index) == 3 and len({g["uuid"] for g in node["gpus"]}) == 3, node
        lease = pool.lease(vram="64M", gpus=2)
        gpus = [a["gpu"] for a in lease["allocs"]]
        assert gpus == [1, 2], lease
        env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(paths.stub_dir()),
               "FARGPU_SERVER": lease["endpoints"][0].removeprefix("tcp://"), "FARGPU_TOKEN": lease["token"]}
        res = subprocess.run([sys.executable, "-P", "-c", CLIENT], env=env, capture_output=True, text=True,
                             timeout=90, cwd="/")
        assert res.returncode == 0, res.stdout + res.stderr + pool.logs()
        out = json.loads(res.stdout.strip().splitlines()[-1])
        # exactly the lease's GPUs, in lease order, with the node's identities
        assert out["count"] == 2 and out["nvml_count"] == 2, out
        assert [c["uuid"] for c in out["cuda"]] == [by_index[g]["uuid"] for g in gpus], (out, node)
        assert [c["total"] for c in out["cuda"]] == [by_index[g]["total_bytes"] for g in gpus]
        assert [c["pci"] for c in out["cuda"]] == ["0000:19:00.0", "0000:1A:00.0"], out  # the sim's bus 0x18 + index
        # the NVML shim agrees with the driver API, index for index
        assert [n["uuid"] for n in out["nvml"]] == [c["uuid"] for c in out["cuda"]], out
        # (NVML writes the domain with 8 digits, the driver API with 4, as natively)
        assert [n["pci"].upper() for n in out["nvml"]] == ["0000" + c["pci"].upper() for c in out["cuda"]], out
        assert [n["index"] for n in out["nvml"]] == [0, 1], out
        # the quota is per GPU: 48 MiB on each fits, 48 + 32 on one does not (2 = CUDA_ERROR_OUT_OF_MEMORY)
        assert [(a["first"], a["second"]) for a in out["alloc"]] == [(0, 2), (0, 2)], out
        assert [a["total"] for a in out["alloc"]] == [64 * MiB, 64 * MiB], out
        assert [a["ordinal"] for a in out["alloc"]] == [0, 1], out
        log = (tmp_path / "node.log").read_text(errors="replace")
        assert f"on GPU(s) {by_index[1]['uuid']},{by_index[2]['uuid']}" in log, log[-3000:]
    finally:
        pool.stop()


def test_a_lease_whose_gpus_no_single_node_has_is_refused_with_the_reason(tmp_path: Path) -> None:
    pool = LivePool.start(tmp_path, store_args=["--memory-only"], node_env={"FARGPU_SIM_DEVICES": "2"})
    try:
        r = httpx.post(pool.url + "/v1/leases", json={"vram": "64M", "gpus": 3}, headers=_key(), timeout=10)
        assert r.status_code >= 400, r.text
        reason = r.text
        assert "one node" in reason and "the most on one node is 2" in reason, reason
    finally:
        pool.stop()


PEER_HOLD = r'''
import ctypes, sys
cu = ctypes.CDLL("libcuda.so.1")
C = ctypes.c_uint64
def ok(r, what):
    if r != 0:
        print(f"FAIL {what}: {r}", flush=True); sys.exit(1)
ok(cu.cuInit(0), "init")
ctx = [ctypes.c_void_p(), ctypes.c_void_p()]
for d in (0, 1):
    ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx[d]), d), "retain")
N = 1 << 20
ok(cu.cuCtxSetCurrent(ctx[1]), "set1")
B = C(); ok(cu.cuMemAlloc_v2(ctypes.byref(B), ctypes.c_size_t(N * 4)), "alloc")
ok(cu.cuCtxSetCurrent(ctx[0]), "set0")
ok(cu.cuCtxEnablePeerAccess(ctx[1], 0), "enable")
mod = ctypes.c_void_p(); ok(cu.cuModuleLoadData(ctypes.byref(mod), open(sys.argv[1], "rb").read() + b"\0"), "load")
fill = ctypes.c_void_p(); ok(cu.cuModuleGetFunction(ctypes.byref(fill), mod, b"fg_fill_u32"), "func")
def launch(val):  # from device 0 into device 1's memory: needs the peer access
    a, b, c = C(B.value), ctypes.c_uint32(val), ctypes.c_uint64(N)
    args = (ctypes.c_void_p * 3)(ctypes.addressof(a), ctypes.addressof(b), ctypes.addressof(c))
    r = cu.cuLaunchKernel(fill, 64, 1, 1, 128, 1, 1, 0, None, args, None) or cu.cuCtxSynchronize()
    buf = (ctypes.c_uint32 * N)()
    ok(cu.cuMemcpyDtoH_v2(buf, B, ctypes.c_size_t(N * 4)), "dtoh")
    return r, sorted(set(buf))
print("FIRST", *launch(5), flush=True)
sys.stdin.readline()
print("AFTER", *launch(6), flush=True)
sys.stdin.readline()
'''


def test_peer_access_survives_a_page_out_and_in(tmp_path: Path) -> None:
    from cuda_ctypes import TEST_PTX

    pool = LivePool.start(tmp_path, store_args=["--memory-only"], node_env={"FARGPU_SIM_DEVICES": "2"})
    proc = None
    try:
        lease = pool.lease(vram="64M", gpus=2)
        env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(paths.stub_dir()),
               "FARGPU_SERVER": lease["endpoints"][0].removeprefix("tcp://"), "FARGPU_TOKEN": lease["token"]}
        proc = subprocess.Popen([sys.executable, "-P", "-c", PEER_HOLD, str(TEST_PTX)], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        assert proc.stdout is not None and proc.stdin is not None

        def line() -> list[str]:  # with a deadline: a client stuck in a call fails the test, it does not hang it
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "the client did not answer within 60 s:\n" + pool.logs()
            return proc.stdout.readline().split()  # type: ignore[union-attr]

        assert line() == ["FIRST", "0", "[5]"]
        sid = pool.session_of(lease["lease_id"])["session_id"]
        r = pool.admin_post(f"/v1/admin/sessions/{sid}/page-out", {"to": "host"})
        assert r.status_code == 202, r.text
        paged = pool.wait_session(sid, lambda s: bool(s.get("page_result")), "the page-out outcome")
        assert paged["state"] == "paged-host", paged
        proc.stdin.write("go\n")
        proc.stdin.flush()
        # paged back in at the next call: device 1's memory mapped again, and device 0 still reaches it
        after = line()
        assert after == ["AFTER", "0", "[6]"], " ".join(after) + pool.logs()
    finally:
        if proc is not None:
            try:
                proc.communicate("go\n", timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pool.stop()
