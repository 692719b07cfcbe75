"""What the node reports about its devices (capacity, free memory, utilisation): NVML through
nvidia-ml-py on a real GPU, and clearly simulated values for the simulated device."""

from __future__ import annotations

import os

from .agent_api import DeviceInfo
from .backend import Backend

SIM_DEFAULT_BYTES = 16 * 1024**3


def _nvml_devices() -> list[DeviceInfo]:
    import pynvml

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
    know it (no NVML, or the process is in another PID namespace)."""
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


def devices(backend: Backend, used_bytes: int = 0) -> list[DeviceInfo]:
    if backend.simulated:
        total = int(os.environ.get("FARGPU_SIM_MEM_BYTES", SIM_DEFAULT_BYTES))
        return [
            DeviceInfo(
                index=i,
                name="fargpu simulated device",
                uuid=f"SIM-{i:08d}",
                total_bytes=total,
                free_bytes=max(total - used_bytes, 0),
                utilization_pct=0.0,
            )
            for i in range(backend.device_count)
        ]
    try:
        return _nvml_devices()
    except Exception:  # NVML missing or failing must not take the node down; report what we know
        return [DeviceInfo(i, "unknown (NVML unavailable)", "", 0, 0, 0.0) for i in range(backend.device_count)]
