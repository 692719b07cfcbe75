"""Prometheus metrics of a node server: its devices, its sessions, the leases it serves, its pool link, paging.

`NodeMetrics(agent, link)` keeps a snapshot that `refresh()` takes on the event loop (the agent's methods are
not called from the exporter's thread); `serve(host, port)` refreshes it periodically (`refresh_async`: the devices'
NVML read off the loop) and exposes it with prometheus_client's HTTP server, and `render()` gives the text for any
other HTTP front.

Paging: when the agent has a pager (`agent.pager`), NodeMetrics becomes its `observer` and counts every finished
page-out and page-in by where the memory went or came from (host page pool or disk), with histograms of the
bytes and seconds of each step; the gauges of resident and paged bytes are sums over the agent's sessions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fargpu.server.agent_api import DeviceInfo, NodeAgentAPI, SessionInfo

if TYPE_CHECKING:
    from fargpu.server.pool_link import PoolLink

_BYTES_BUCKETS = tuple(float(1 << k) for k in range(20, 37, 2))  # 1 MiB .. 64 GiB, by 4x
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class _Snapshot:
    devices: list[DeviceInfo] = field(default_factory=list)
    sessions: list[SessionInfo] = field(default_factory=list)
    quotas: dict[str, int] = field(default_factory=dict)  # lease id -> VRAM quota, for leases with sessions
    heartbeat_age_s: float | None = None


class NodeMetrics(Collector):
    def __init__(self, agent: NodeAgentAPI, link: PoolLink | None = None) -> None:
        self.agent = agent
        self.link = link
        self.registry = CollectorRegistry()
        self._snap = _Snapshot()
        self._task: asyncio.Task[None] | None = None
        self._http: object | None = None
        self.registry.register(self)
        r = self.registry
        self.pageouts = Counter(
            "fargpu_node_pageouts", "Page-outs of a session finished, by where its memory went", ["where"], registry=r
        )
        self.pageins = Counter(
            "fargpu_node_pageins", "Page-ins of a session finished, by where its memory came from", ["where"],
            registry=r,
        )  # fmt: skip
        self.pageout_bytes = Histogram(
            "fargpu_node_pageout_bytes", "Device memory moved by one page-out", ["where"], buckets=_BYTES_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.pagein_bytes = Histogram(
            "fargpu_node_pagein_bytes", "Device memory moved by one page-in", ["where"], buckets=_BYTES_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.pageout_seconds = Histogram(
            "fargpu_node_pageout_seconds", "Duration of one page-out", ["where"], buckets=_SECONDS_BUCKETS, registry=r
        )
        self.pagein_seconds = Histogram(
            "fargpu_node_pagein_seconds", "Duration of one page-in", ["where"], buckets=_SECONDS_BUCKETS, registry=r
        )
        self._chained: Callable[[str, str, int, float], None] | None = None  # an observer that was there before
        pager = getattr(agent, "pager", None)
        if pager is not None:
            self._chained = getattr(pager, "observer", None)
            pager.observer = self.observe_page_step

    def observe_page_step(self, kind: str, where: str, nbytes: int, seconds: float) -> None:
        """The pager's observer: one finished step, kind "pageout" or "pagein", where "host" or "disk"."""
        if kind == "pageout":
            self.pageouts.labels(where).inc()
            self.pageout_bytes.labels(where).observe(nbytes)
            self.pageout_seconds.labels(where).observe(seconds)
        elif kind == "pagein":
            self.pageins.labels(where).inc()
            self.pagein_bytes.labels(where).observe(nbytes)
            self.pagein_seconds.labels(where).observe(seconds)
        if self._chained is not None:
            self._chained(kind, where, nbytes, seconds)

    def refresh(self) -> None:
        self._take(self.agent.devices())

    async def refresh_async(self) -> None:
        self._take(await self.agent.read_devices())

    def _take(self, devices: list[DeviceInfo]) -> None:
        quotas: dict[str, int] = {}
        sessions = self.agent.sessions()
        if self.link is not None:
            live = {s.lease_id for s in sessions}
            for g in self.link.auth.grants():
                if g.lease_id in live and g.vram_quota_bytes:
                    quotas[g.lease_id] = g.vram_quota_bytes
        age = None
        if self.link is not None and self.link.last_heartbeat_ok is not None:
            age = max(0.0, time.time() - self.link.last_heartbeat_ok)
        self._snap = _Snapshot(devices, sessions, quotas, age)

    def collect(self) -> Iterable[Metric]:
        s = self._snap
        labels = ["gpu"]
        total = GaugeMetricFamily("fargpu_node_gpu_vram_total_bytes", "VRAM of the GPU", labels=labels)
        free = GaugeMetricFamily("fargpu_node_gpu_vram_free_bytes", "Free VRAM of the GPU", labels=labels)
        util = GaugeMetricFamily("fargpu_node_gpu_utilization_pct", "GPU utilization", labels=labels)
        for d in s.devices:
            total.add_metric([str(d.index)], d.total_bytes)
            free.add_metric([str(d.index)], d.free_bytes)
            util.add_metric([str(d.index)], d.utilization_pct)
        yield from (total, free, util)
        used = sum(x.vram_used_bytes for x in s.sessions)
        yield GaugeMetricFamily("fargpu_node_vram_used_bytes", "VRAM used by this node's sessions", value=used)
        reserved = sum(s.quotas.values())
        yield GaugeMetricFamily("fargpu_node_vram_reserved_bytes", "VRAM quota of leases with sessions", value=reserved)
        yield GaugeMetricFamily("fargpu_node_sessions", "Open sessions", value=len(s.sessions))
        leases = len({x.lease_id for x in s.sessions})
        yield GaugeMetricFamily("fargpu_node_leases", "Leases with open sessions", value=leases)
        per = GaugeMetricFamily(
            "fargpu_node_session_vram_used_bytes", "VRAM used per session", labels=["session", "lease"]
        )
        for x in s.sessions:
            per.add_metric([x.session_id, x.lease_id], x.vram_used_bytes)
        yield per
        yield GaugeMetricFamily(
            "fargpu_node_vram_resident_bytes",
            "Device memory this node's sessions hold on the GPUs now",
            value=sum(x.resident_bytes for x in s.sessions),
        )
        yield GaugeMetricFamily(
            "fargpu_node_vram_paged_bytes",
            "Device memory of this node's sessions paged out to host RAM or disk",
            value=sum(x.paged_bytes for x in s.sessions),
        )
        by_state = GaugeMetricFamily("fargpu_node_sessions_by_paging_state", "Open sessions by paging state",
                                     labels=["state"])  # fmt: skip
        for state in ("resident", "paging-out", "paged-host", "paged-disk", "paging-in"):
            by_state.add_metric([state], sum(1 for x in s.sessions if x.state == state))
        yield by_state
        if s.heartbeat_age_s is not None:
            yield GaugeMetricFamily(
                "fargpu_node_pool_heartbeat_age_seconds",
                "Seconds since the last heartbeat the pool accepted",
                value=s.heartbeat_age_s,
            )

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)

    async def serve(self, host: str = "127.0.0.1", port: int = 9400, interval_s: float = 2.0) -> int:
        """Exposes /metrics on host:port (0: any free port); returns the port."""
        await self.refresh_async()
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        self._task = asyncio.create_task(self._loop(interval_s), name="node-metrics")
        return int(server.server_port)

    async def _loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh_async()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            self._http.shutdown()  # type: ignore[attr-defined]
            self._http = None
