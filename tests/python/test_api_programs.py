"""Issue 14's areas through fargpu on the simulated device: the acceptance programs written for them
(tests/acceptance/cuda/api_*.cu, real cudart + the driver API, their kernels named and laid out as the test
kernels so the simulated device runs them) must pass their own checks through the stub, and print what the
test expects of the simulated device. On the GPU host the acceptance suite runs the same programs natively and
through fargpu and compares the outputs. Also, with ctypes: client VMM memory counts against the lease's quota,
what paging could not bring back is refused with CUDA_ERROR_NOT_SUPPORTED, and a client VMM mapping is paged
out and back with every byte at the same address."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from acceptance_build import build_against_stub, load_runner
from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, start_server, stop_server, wait_log

from fargpu import paths

PROGRAMS = (
    "api_vmm", "api_managed", "api_graphs", "api_graph_nodes", "api_graph_cond", "api_arrays", "api_link",
    "api_mempool", "api_tensormap", "api_array_async", "api_memops", "api_userobj", "api_copies",
    "api_queries", "api_green", "api_capture_copies", "api_ipc",
)
MiB = 1 << 20


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_against_stub(load_runner(), PROGRAMS, tmp_path_factory.mktemp("api-bin"))


def _run(binary: Path, server: NodeServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = server.client_env(LD_PRELOAD=str(paths.stub_lib()))
    return subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=120, cwd="/")


def _passed(res: subprocess.CompletedProcess[str], server: NodeServer) -> list[str]:
    out = res.stdout.splitlines()
    why = f"rc {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}\n{server.log_text()[-2000:]}"
    assert res.returncode == 0 and out and out[-1] == "PASS", why
    assert not [ln for ln in out if ln.endswith("MISMATCH")], why
    return out


def test_vmm_occupancy_profiler_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_vmm"], node_server), node_server)
    assert "granularity minimum 2097152, recommended is a multiple: yes" in out
    assert "kernel fill across two mapped handles ok" in out and "retained handle is the mapped one ok" in out
    assert "access after set: read-write" in out
    assert "properties: type 1 location type 1 id 0" in out
    # The simulated device's own answer for the same kernel (132 SMs, 2048 threads per SM, no register limit):
    # the stub's search, running the program's callback, must land on it.
    assert "occupancy plain: grid 264 block 1024" in out
    assert "occupancy callback: grid 264 block 1024" in out
    assert "occupancy fixed smem, limit 200: grid 1320 block 192" in out
    assert "runtime template: grid 264 block 1024" in out
    assert "occupancy without minGridSize: invalid value" in out


def test_captured_host_copies_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    """Host copies captured into a graph move the program's page-locked bytes at every launch (capture_copies.c)."""
    before = len(node_server.log_text())
    out = _passed(_run(programs["api_capture_copies"], node_server), node_server)
    assert "captured graph: 8 nodes, 5 memcpy, 3 kernel, 0 other" in out, out
    assert len([ln for ln in out if ln.endswith(" ok")]) == 3, out
    assert len([ln for ln in out if ln.startswith("launch ")]) == 7, out
    assert "update result 0" in out, out
    assert "stream capture was invalidated" not in node_server.log_text()[before:]


def test_managed_and_mapped_memory_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_managed"], node_server), node_server)
    checks = [ln for ln in out if ln.endswith(" ok")]
    assert len(checks) == 16, out
    assert "read mostly: 1" in out and "preferred location: 0" in out and "last prefetch location: 0" in out
    assert "batched prefetch last locations: 0 -1" in out, out  # device 0 and cudaCpuDeviceId
    for what in ("prefetch with flags", "prefetch not starting at index 0", "prefetch of device memory",
                 "discard of device memory", "discard past the allocation", "discard on the legacy stream"):
        assert f"batched {what}: cudaErrorInvalidValue" in out, out
    assert "read mostly after unset: 0" in out
    assert "managed pointer type 3, device 0, host pointer same" in out  # cudaMemoryTypeManaged
    assert "device pointer type 2" in out


def test_graphs_built_by_hand_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_graphs"], node_server), node_server)
    assert "nodes 10: memset memcpy memcpy kernel graph memcpy host wait empty record" in out
    assert len([ln for ln in out if ln.endswith(" ok")]) == 14, out
    for captured in ("capture into an existing graph starts from the given node ok", "captured into the given graph ok",
                     "graph captured into runs after its memset node ok"):
        assert captured in out, out
    assert "cloned memset value 7 width 65536" in out and "exec update result 0" in out
    assert "update from a different topology: refused, result 2" in out  # CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED
    assert "instantiate with params: result 0" in out


def test_graph_queries_and_memory_nodes_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_graph_nodes"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 33, out
    assert "edges 8" in out
    # memset, memcpy, memcpy, kernel, graph, memcpy, host, wait, record (cudaGraphNodeType values)
    assert "types: 2 1 1 0 4 1 3 6 7" in out


def test_conditional_graph_nodes_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_graph_cond"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 7, out


def test_stream_ordered_allocation_and_pools_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_mempool"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 31, out
    assert "the first allocation's pool is the default pool ok" in out and "pointers name their pools ok" in out, out


def test_arrays_textures_and_3d_copies_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    # The simulated device runs no texture or surface kernel: the objects are made and destroyed, no launch.
    out = _passed(_run(programs["api_arrays"], node_server, "--no-kernels"), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 12, out
    assert "texture with a resource view: cudaSuccess" in out, out
    assert "mipmapped texture description names the mipmapped array ok" in out, out
    assert "array info: 32 bits x, kind 2, extent 64 x 32 x 0" in out  # cudaChannelFormatKindFloat
    assert "mip level 1: extent 8 x 8" in out


def test_jit_link_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    # The simulated linker merges the two PTX inputs into one image; fg_vadd then runs as the test kernel.
    out = _passed(_run(programs["api_link"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 5, out
    assert "linked image non-empty: yes" in out and "linked global fg_link_tag 42 (4 bytes)" in out, out
    assert "broken input: CUDA_ERROR_INVALID_PTX, error log non-empty: yes" in out, out


def test_tensor_map_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    # The simulated device runs no TMA kernel: the maps are encoded (by its driver, through the node), not used.
    out = _passed(_run(programs["api_tensormap"], node_server, "--no-kernels"), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 2, out
    for refused in ("misaligned address", "zero box", "rank 6", "inner box of 12 bytes",
                    "replace with a misaligned address"):
        assert f"{refused}: CUDA_ERROR_INVALID_VALUE" in out, out
    assert "im2col: CUDA_SUCCESS" in out and "im2col wide: CUDA_SUCCESS" in out, out  # the sim encodes both


def test_async_array_copies_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_array_async"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 3, out
    assert "copy past the end: CUDA_ERROR_INVALID_VALUE" in out, out


def test_stream_memops_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_memops"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 9, out
    # The simulated device has no flush of remote writes (its attribute says 0): the stub refuses it at the call. A
    # batch refuses a write without a memory barrier, as the H100 did natively (the driver's refusal reaches the
    # program at the synchronisation after the batch, which the program counts alike).
    assert [ln for ln in out if ln.startswith("batch of one:")] == [
        "batch of one: 32-bit wait, greater or equal ran", "batch of one: 64-bit wait, equal ran",
        "batch of one: 32-bit wait, and ran", "batch of one: 32-bit wait, nor ran",
        "batch of one: flush of remote writes refused", "batch of one: 32-bit write, no memory barrier refused"], out


def test_ipc_between_two_processes_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    """The program starts itself again as a second process: two sessions of one lease, the node brokering device
    memory, an interprocess event and a VMM file descriptor between their workers."""
    out = _passed(_run(programs["api_ipc"], node_server), node_server)
    assert [ln for ln in out if ln.startswith("child")] == [
        "child: the parent's device memory through its IPC handle ok",
        "child: the parent's interprocess event has completed ok",
        "child: the imported allocation is device memory of device 0 ok",
        "child: the parent's VMM allocation through its file descriptor ok", "child PASS"], out
    assert len([ln for ln in out if ln.startswith("parent:") and ln.endswith(" ok")]) == 4, out


def test_batched_and_peer_3d_copies_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_copies"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 8, out
    assert "batch without a source access order: CUDA_ERROR_INVALID_VALUE" in out, out


def test_driver_queries_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_queries"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 9, out
    assert "library kernels 2: fg_fill_u32 fg_scale" in out, out
    for line in ("device LUID: CUDA_ERROR_NOT_SUPPORTED",  # as a Linux driver: the simulated device says so too
                 "host atomic capabilities of an invalid operation: CUDA_ERROR_INVALID_VALUE",
                 "atomic capabilities between a device and itself: CUDA_ERROR_INVALID_DEVICE",
                 "plane 0 of a float array: CUDA_ERROR_INVALID_VALUE",
                 "memory requirements of an ordinary array: CUDA_ERROR_INVALID_VALUE",
                 "memory requirements of an ordinary mipmapped array: CUDA_ERROR_INVALID_VALUE",
                 "sparse properties of an ordinary mipmapped array: CUDA_ERROR_INVALID_VALUE",
                 "mipmapped memory requirements without an output: CUDA_ERROR_INVALID_VALUE",
                 "sparse properties of an ordinary array: CUDA_ERROR_INVALID_VALUE",
                 "sparse array: mip tail first level 0 size 0 flags 0",  # documented for a sparse array without layers
                 "sparse properties without an output: CUDA_ERROR_INVALID_VALUE",
                 "sparse properties of a mipmapped array's level: CUDA_ERROR_INVALID_VALUE",
                 "sync memops of fresh memory: 0", "sync memops after setting it: 1",
                 "setting another attribute: CUDA_ERROR_INVALID_VALUE", "sync memops after unsetting it: 0",
                 "sync memops on a VMM mapping: CUDA_ERROR_NOT_SUPPORTED",
                 # no MPS: no SM-count contexts (the simulated device answers as a GPU's driver does without it)
                 "SM-count affinity supported: 0",
                 "affinity support of an invalid type: CUDA_ERROR_INVALID_VALUE",
                 "affinity support of an invalid device: CUDA_ERROR_INVALID_DEVICE",
                 "the primary context's SM limit: CUDA_SUCCESS",
                 "context affinity without an output: CUDA_ERROR_INVALID_VALUE",
                 # no decompression engine (as H100 and H200): the node's driver refuses the batch, index untouched
                 "decompression algorithms: 0",
                 "decompression batch: CUDA_ERROR_NOT_SUPPORTED, error index other"):  # untouched, as on the H100
        assert line in out, out


def test_green_contexts_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_green"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 22, out
    # The simulated device's partitioning (132 SMs, groups of at least 8 in pairs): a quarter is 33, so two groups
    # of 34 and a remainder of 64.
    assert "device resource type: 1" in out and "split into 2 groups of 34 SMs, 64 left" in out, out
    # the simulated device's choice: a converted context is limited to its green context's SMs
    assert "the converted context's SM limit: CUDA_SUCCESS, its green context's SMs: yes" in out, out
    for line in ("event after the wait: CUDA_SUCCESS",
                 "cuStreamGetCtx_v2 of the per-thread stream with a green context current: CUDA_ERROR_INVALID_HANDLE",
                 "green stream without CU_STREAM_NON_BLOCKING: CUDA_ERROR_INVALID_VALUE",
                 "green context id without an output: CUDA_ERROR_INVALID_VALUE",
                 "converting without an output: CUDA_ERROR_INVALID_VALUE",
                 "green resource of the wrong type: CUDA_ERROR_INVALID_RESOURCE_TYPE",
                 "green context without CU_GREEN_CTX_DEFAULT_STREAM: CUDA_ERROR_INVALID_VALUE",
                 "green context without an output: CUDA_ERROR_INVALID_VALUE",
                 "device resource without an output: CUDA_ERROR_INVALID_VALUE",
                 "device resource of an invalid type: CUDA_ERROR_INVALID_RESOURCE_TYPE",
                 "device resource of a device that does not exist: CUDA_ERROR_INVALID_DEVICE",
                 "context resource without an output: CUDA_ERROR_INVALID_VALUE",
                 "split without a group count: CUDA_ERROR_INVALID_VALUE",
                 "split without an input: CUDA_ERROR_INVALID_VALUE",
                 "split asking more SMs than the device has: CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION",
                 "split of a resource of no type: CUDA_ERROR_INVALID_RESOURCE_TYPE",
                 "split with an unknown flag: CUDA_ERROR_INVALID_VALUE",
                 "descriptor mixing two splits: CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION",
                 "descriptor without an output: CUDA_ERROR_INVALID_VALUE",
                 "descriptor without resources: CUDA_ERROR_INVALID_VALUE",
                 "green context without a descriptor: CUDA_ERROR_INVALID_VALUE",
                 "current green context id with an ordinary context current: CUDA_ERROR_INVALID_CONTEXT",
                 "green context of a stream without an output: CUDA_ERROR_INVALID_VALUE"):
        assert line in out, out


def test_user_objects_program(programs: dict[str, Path], node_server: NodeServer) -> None:
    out = _passed(_run(programs["api_userobj"], node_server), node_server)
    assert len([ln for ln in out if ln.endswith(" ok")]) == 5, out


VMM = PRELUDE + r'''
class Prop(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("loc_type", ctypes.c_int),
                ("loc_id", ctypes.c_int), ("win32", ctypes.c_void_p), ("compression", ctypes.c_ubyte),
                ("gpuDirectRDMACapable", ctypes.c_ubyte), ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]
class Access(ctypes.Structure):
    _fields_ = [("loc_type", ctypes.c_int), ("loc_id", ctypes.c_int), ("flags", ctypes.c_int)]
ctx0()
prop = Prop(type=1, loc_type=1, loc_id=0)
g = ctypes.c_size_t()
ok(cu.cuMemGetAllocationGranularity(ctypes.byref(g), ctypes.byref(prop), 0), "granularity")
G = g.value
def create(n, p=prop):
    h = ctypes.c_uint64()
    return cu.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(n), ctypes.byref(p), ctypes.c_ulonglong(0)), h.value
va = ctypes.c_uint64()
ok(cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(64 * G), ctypes.c_size_t(0), ctypes.c_uint64(0),
                          ctypes.c_ulonglong(0)), "reserve")
VA = va.value
r, h = create(16 * G); ok(r, "create")
print("over quota", create(64 * G)[0])
print("map part", cu.cuMemMap(ctypes.c_uint64(VA), ctypes.c_size_t(G), ctypes.c_size_t(0), ctypes.c_uint64(h),
                              ctypes.c_ulonglong(0)))
ok(cu.cuMemMap(ctypes.c_uint64(VA), ctypes.c_size_t(16 * G), ctypes.c_size_t(0), ctypes.c_uint64(h),
               ctypes.c_ulonglong(0)), "map")
print("map twice", cu.cuMemMap(ctypes.c_uint64(VA + 32 * G), ctypes.c_size_t(16 * G), ctypes.c_size_t(0),
                               ctypes.c_uint64(h), ctypes.c_ulonglong(0)))
print("map outside a reservation", cu.cuMemMap(ctypes.c_uint64(0x10000000), ctypes.c_size_t(16 * G),
                                               ctypes.c_size_t(0), ctypes.c_uint64(h), ctypes.c_ulonglong(0)))
print("foreign handle", cu.cuMemMap(ctypes.c_uint64(VA + 32 * G), ctypes.c_size_t(16 * G), ctypes.c_size_t(0),
                                    ctypes.c_uint64(h ^ 0x5a5a0000), ctypes.c_ulonglong(0)))
print("free a VMM mapping with cuMemFree", cu.cuMemFree_v2(ctypes.c_uint64(VA)))
hostprop = Prop(type=1, loc_type=2, loc_id=0)
print("host memory", create(G, hostprop)[0])
ok(cu.cuMemRelease(ctypes.c_uint64(h)), "release while mapped")
acc = Access(loc_type=1, loc_id=0, flags=3)
ok(cu.cuMemSetAccess(ctypes.c_uint64(VA), ctypes.c_size_t(16 * G), ctypes.byref(acc), ctypes.c_size_t(1)), "access")
n = 16 * G
data = bytes((i * 7 + 3) & 0xff for i in range(4096)) * (n // 4096)
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(VA), data, ctypes.c_size_t(n)), "htod")
f0, _ = meminfo()
print("FILLED", flush=True)
sys.stdin.readline()
out = ctypes.create_string_buffer(n)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(VA), ctypes.c_size_t(n)), "dtoh")
print("SAME" if out.raw == data else "DIFFERENT", flush=True)
ok(cu.cuMemUnmap(ctypes.c_uint64(VA), ctypes.c_size_t(n)), "unmap")
f1, _ = meminfo()
print("freed by unmap of a released handle", f1 - f0)
ok(cu.cuMemAddressFree(ctypes.c_uint64(VA), ctypes.c_size_t(64 * G)), "free")
'''


def test_client_vmm_quota_refusals_and_paging(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--vram-quota", str(96 * MiB), "--idle-page-out", "1", "--host-page-pool", "128M")
    try:
        p = subprocess.Popen([sys.executable, "-P", "-c", VMM], env=s.client_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert p.stdout is not None
        head = []
        while True:
            line = p.stdout.readline()
            assert line, "".join(head) + (p.stderr.read() if p.stderr else "")
            if line.strip() == "FILLED":
                break
            head.append(line)
        m = wait_log(s, r"page-out of session (\w+): paged host (\d+)")
        assert int(m.group(2)) >= 32 * MiB  # the client's mapping went with the session's memory
        out, err = p.communicate("go\n", timeout=60)
        lines = [ln.strip() for ln in head + out.splitlines()]
        assert "over quota 2" in lines, lines  # CUDA_ERROR_OUT_OF_MEMORY
        assert "map part 801" in lines and "map twice 801" in lines, lines  # CUDA_ERROR_NOT_SUPPORTED
        assert "map outside a reservation 1" in lines and "foreign handle 400" in lines, lines
        assert "free a VMM mapping with cuMemFree 1" in lines and "host memory 801" in lines, lines
        assert "SAME" in lines, lines + [err]
        assert "freed by unmap of a released handle 33554432" in lines, lines
        log = s.log_text()
        assert "cuMemMap of part of a handle" in log and "already mapped at another address" in log
    finally:
        stop_server(s)


STALE_GREEN = PRELUDE + r'''
ctx = ctx0()
res = ctypes.create_string_buffer(144)
ok(cu.cuDeviceGetDevResource(0, res, 1), "device resource")  # CU_DEV_RESOURCE_TYPE_SM
desc = ctypes.c_void_p()
ok(cu.cuDevResourceGenerateDesc(ctypes.byref(desc), res, 1), "descriptor")
g = ctypes.c_void_p()
ok(cu.cuGreenCtxCreate(ctypes.byref(g), desc, 0, 1), "green context")  # CU_GREEN_CTX_DEFAULT_STREAM
gc = ctypes.c_void_p()
ok(cu.cuCtxFromGreenCtx(ctypes.byref(gc), g), "convert")
ok(cu.cuCtxPushCurrent_v2(gc), "push")
ok(cu.cuGreenCtxDestroy(g), "destroy")
cur = ctypes.c_void_p()
ok(cu.cuCtxGetCurrent(ctypes.byref(cur)), "current")
print("current after the destroy is the primary context:", cur.value == ctx.value)
idv = ctypes.c_ulonglong()
print("id of the destroyed green context:", cu.cuGreenCtxGetId(g, ctypes.byref(idv)))
print("destroying it again:", cu.cuGreenCtxDestroy(g))
print("converting it:", cu.cuCtxFromGreenCtx(ctypes.byref(gc), g))
print("its converted context made current:", cu.cuCtxSetCurrent(gc), "then a call:", cu.cuCtxSynchronize())
ok(cu.cuCtxSetCurrent(ctx), "primary again")
forged = ctypes.c_void_p(desc.value)  # a live id of another kind
print("a descriptor id as a green context:", cu.cuGreenCtxGetId(forged, ctypes.byref(idv)))
print("a green context from a green context id as descriptor:", cu.cuGreenCtxCreate(ctypes.byref(g), g, 0, 1))
'''


def test_stale_and_forged_green_context_ids(node_server: NodeServer) -> None:
    # Through fargpu only (natively a destroyed handle is undefined behaviour): the node checks every id it is given.
    res = subprocess.run([sys.executable, "-P", "-c", STALE_GREEN], env=node_server.client_env(), capture_output=True,
                         text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout.splitlines()
    # The converted context left the thread's stack with its green context; every later use of either id is refused
    # (400 CUDA_ERROR_INVALID_HANDLE for a lookup, 201 CUDA_ERROR_INVALID_CONTEXT where the driver names contexts,
    # 1 CUDA_ERROR_INVALID_VALUE for a descriptor that is none).
    assert out == ["current after the destroy is the primary context: True",
                   "id of the destroyed green context: 400",
                   "destroying it again: 201",
                   "converting it: 400",
                   "its converted context made current: 0 then a call: 201",
                   "a descriptor id as a green context: 400",
                   "a green context from a green context id as descriptor: 1"], res.stdout + res.stderr
