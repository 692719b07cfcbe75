"""A stand-in for the node agent (`NodeAgentAPI`), the collaborator of PoolLink in these tests: it reports
configured devices and sessions and records what the link asks of it (ending leases, draining, paging)."""

from __future__ import annotations

import asyncio
import dataclasses

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
        self.paged: list[tuple[str, str]] = []  # (session id, "out:<to>" or "in")
        self.page_gate: asyncio.Event | None = None  # when set: page steps wait for it (a slow step)

    def add_session(self, session_id: str, lease_id: str, vram_used: int) -> None:
        self._sessions.append(
            SessionInfo(
                session_id, lease_id, pid=4242, vram_used_bytes=vram_used, client="laptop:1", resident_bytes=vram_used
            )
        )
        d = self._devices[0]
        self._devices[0] = DeviceInfo(d.index, d.name, d.uuid, d.total_bytes, d.free_bytes - vram_used, 37.5)

    def sessions(self) -> list[SessionInfo]:
        return list(self._sessions)

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    async def read_devices(self) -> list[DeviceInfo]:
        return self.devices()

    async def end_lease(self, lease_id: str, reason: str) -> int:
        self.ended.append((lease_id, reason))
        before = len(self._sessions)
        self._sessions = [s for s in self._sessions if s.lease_id != lease_id]
        return before - len(self._sessions)

    async def drain(self) -> None:
        self.drained = True

    async def undrain(self) -> None:
        self.drained = False

    def _set_state(self, session_id: str, **changes: object) -> bool:
        for i, s in enumerate(self._sessions):
            if s.session_id == session_id:
                self._sessions[i] = dataclasses.replace(s, **changes)  # type: ignore[arg-type]
                return True
        return False

    async def page_out(self, session_id: str, to: str = "auto") -> str:
        self.paged.append((session_id, f"out:{to}"))
        if self.page_gate is not None:
            await self.page_gate.wait()
        s = next((x for x in self._sessions if x.session_id == session_id), None)
        if s is None:
            return "failed no such session on this node"
        if s.state != "resident":
            return f"failed the session is {s.state}"
        where = "disk" if to == "disk" else "host"
        self._set_state(session_id, state=f"paged-{where}", paged_bytes=s.vram_used_bytes, resident_bytes=0)
        return f"paged {where} {s.vram_used_bytes} 1000 0"

    async def page_in(self, session_id: str) -> str:
        self.paged.append((session_id, "in"))
        s = next((x for x in self._sessions if x.session_id == session_id), None)
        if s is None:
            return "failed no such session on this node"
        if not s.state.startswith("paged"):
            return f"failed the session is {s.state}"
        self._set_state(session_id, state="resident", paged_bytes=0, resident_bytes=s.paged_bytes)
        return f"resident {s.paged_bytes} 1000"
