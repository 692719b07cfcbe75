"""A stand-in for the node agent (`NodeAgentAPI`), the collaborator of PoolLink in these tests: it reports
configured devices and sessions and records what the link asks of it."""

from __future__ import annotations

from fargpu.server.agent_api import DeviceInfo, SessionInfo

GiB = 1 << 30


class FakeAgent:
    backend = "sim"

    def __init__(self, endpoint: str = "127.0.0.1:7100", gpu_gib: tuple[int, ...] = (16,)) -> None:
        self.endpoint = endpoint
        self._devices = [
            DeviceInfo(
                index=i,
                name="Simulated GPU",
                uuid=f"GPU-sim-{i}",
                total_bytes=g * GiB,
                free_bytes=g * GiB,
                utilization_pct=0.0,
            )
            for i, g in enumerate(gpu_gib)
        ]
        self._sessions: list[SessionInfo] = []
        self.ended: list[tuple[str, str]] = []
        self.drained = False

    def add_session(self, session_id: str, lease_id: str, vram_used: int) -> None:
        self._sessions.append(SessionInfo(session_id, lease_id, pid=4242, vram_used_bytes=vram_used, client="laptop:1"))
        d = self._devices[0]
        self._devices[0] = DeviceInfo(d.index, d.name, d.uuid, d.total_bytes, d.free_bytes - vram_used, 37.5)

    def sessions(self) -> list[SessionInfo]:
        return list(self._sessions)

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    async def end_lease(self, lease_id: str, reason: str) -> int:
        self.ended.append((lease_id, reason))
        before = len(self._sessions)
        self._sessions = [s for s in self._sessions if s.lease_id != lease_id]
        return before - len(self._sessions)

    async def drain(self) -> None:
        self.drained = True
