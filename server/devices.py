"""What the node reports about its devices (capacity, free memory, utilisation): NVML through
nvidia-ml-py on a real GPU, and clearly simulated values for the simulated device.

An NVML read can take hundreds of milliseconds on a busy GPU, so the event loop never makes one: it awaits
`devices_off_loop`, which reads on this module's one NVML thread. Every NVML use of the process (that thread, and
`gpu_memory_of_pid` on the pager's worker threads) holds one lock, so NVML calls never overlap."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .agent_api import DeviceInfo
from .backend import Backend

SIM_DEFAULT_BYTES = 16 * 1024**3

_nvml_lock = threading.Lock()  # held from nvmlInit to nvmlShutdown
_nvml_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fargpu-nvml")  # started at its first read


def _nvml_devices() -> list[DeviceInfo]:
    import pynvml

    with _nvml_lock:
        pynvml.nvmlInit()
        try:
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                name = pynvml.nvmlDeviceGetName(h)
                uuid = pynvml.nvmlDeviceGetUUID(h)
                out.append(
                    DeviceInfo(
                        index=i,
                        name=name.decode() if isinstance(name, bytes) else name,
                        uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                        total_bytes=int(mem.total),
                        free_bytes=int(mem.free),
                        utilization_pct=float(util.gpu),
                    )
                )
            return out
        finally:
            pynvml.nvmlShutdown()


def gpu_memory_of_pid(pid: int) -> int | None:
    """What NVML says process `pid` holds on the GPUs (context, module code, memory), or None when NVML does not
    know it (no NVML, or the process is in another PID namespace). Blocks: call it off the event loop."""
    with _nvml_lock:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:
            return None
        try:
            total, seen = 0, False
            for i in range(pynvml.nvmlDeviceGetCount()):
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i)):
                    if int(proc.pid) == pid and proc.usedGpuMemory is not None:
                        total += int(proc.usedGpuMemory)
                        seen = True
            return total if seen else None
        except Exception:
            return None
        finally:
            pynvml.nvmlShutdown()


def sim_uuid(index: int) -> str:
    """The UUID the simulated device gives physical device `index` (server/sim/sim_visible.c), as nvidia-smi writes
    UUIDs: what CUDA_VISIBLE_DEVICES names it by."""
    raw = b"fargpu" + bytes([0x4D, 0x69, 0x8D]) + bytes(6) + bytes([index & 0xFF])
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def sim_memory(index: int) -> int:
    """FARGPU_SIM_MEM_BYTES for physical device `index`: one value for all, or a comma-separated list (the last value
    repeats), as server/sim/sim_state.c reads it."""
    raw = os.environ.get("FARGPU_SIM_MEM_BYTES", "")
    try:
        values = [int(v) for v in raw.split(",")] if raw else [SIM_DEFAULT_BYTES]
    except ValueError:
        return SIM_DEFAULT_BYTES
    return values[min(index, len(values) - 1)]


def visible_devices_env(gpus: tuple[int, ...], infos: list[DeviceInfo]) -> dict[str, str]:
    """The environment that makes a worker's driver show exactly `gpus` (node indices), in that order, as ordinals
    0..n-1: CUDA_VISIBLE_DEVICES by UUID where the node knows them (NVML's index order need not be CUDA's),
    else by index with CUDA's order made NVML's (PCI bus order). Raises ValueError for an index the node lacks."""
    by_index = {d.index: d for d in infos}
    missing = [g for g in gpus if g not in by_index]
    if missing:
        raise ValueError(f"the lease names GPU(s) {missing} but this node has {sorted(by_index)}")
    uuids = [by_index[g].uuid for g in gpus]
    if all(u.startswith(("GPU-", "MIG-")) for u in uuids):
        return {"CUDA_VISIBLE_DEVICES": ",".join(uuids), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def devices(backend: Backend, used_bytes: int = 0) -> list[DeviceInfo]:
    """The node's devices; on a real GPU this reads NVML and blocks: on the event loop, await devices_off_loop."""
    if backend.simulated:
        out = []
        for i in range(backend.device_count):
            total = sim_memory(i)
            out.append(DeviceInfo(
                index=i,
                name="fargpu simulated device",
                uuid=sim_uuid(i),
                total_bytes=total,
                free_bytes=max(total - used_bytes, 0),
                utilization_pct=0.0,
            ))
        return out
    try:
        return _nvml_devices()
    except Exception:  # NVML missing or failing must not take the node down; report what we know
        return [DeviceInfo(i, "unknown (NVML unavailable)", "", 0, 0, 0.0) for i in range(backend.device_count)]


async def devices_off_loop(backend: Backend, used_bytes: int = 0) -> list[DeviceInfo]:
    """devices(backend, used_bytes), run on the NVML thread: the same answer, while the event loop goes on."""
    return await asyncio.get_running_loop().run_in_executor(_nvml_thread, devices, backend, used_bytes)
