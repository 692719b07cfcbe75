"""Prometheus metrics of the pool manager, served at `/metrics`.

Counters and the placement-latency histogram count what this process did. Gauges describe the shared pool and
are recomputed from the store on each scrape (`refresh`), so every pool manager on one Redis reports the same
pool. Each PoolMetrics has its own registry, so several pool managers can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fargpu.pool_manager.models import LeaseRecord, NodeRecord, NodeState, QoS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PoolMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.placements = Counter("fargpu_pool_placements", "Leases placed on a node", ["strategy"], registry=r)
        self.rejections = Counter(
            "fargpu_pool_rejections", "Lease requests refused for lack of capacity", ["reason"], registry=r
        )
        self.placement_conflicts = Counter(
            "fargpu_pool_placement_conflicts", "Placements retried because the store refused a stale choice", registry=r
        )
        self.placement_seconds = Histogram(
            "fargpu_pool_placement_seconds",
            "Time to place a lease (snapshot, choice, atomic booking), without queueing",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.leases_ended = Counter("fargpu_pool_leases_ended", "Leases ended, by how", ["state"], registry=r)
        self.heartbeats = Counter("fargpu_pool_heartbeats", "Node heartbeats received", registry=r)
        self.leases_active = Gauge("fargpu_pool_leases_active", "Active leases", ["qos"], registry=r)
        self.nodes = Gauge("fargpu_pool_nodes", "Nodes by state", ["state"], registry=r)
        self.vram_capacity = Gauge("fargpu_pool_node_vram_capacity_bytes", "VRAM of the node", ["node"], registry=r)
        self.vram_reserved = Gauge(
            "fargpu_pool_node_vram_reserved_bytes", "VRAM booked by active leases", ["node"], registry=r
        )
        self.vram_used = Gauge(
            "fargpu_pool_node_vram_used_bytes", "VRAM in use per node telemetry", ["node"], registry=r
        )
        self.heartbeat_age = Gauge(
            "fargpu_pool_node_heartbeat_age_seconds", "Seconds since the node's last heartbeat", ["node"], registry=r
        )
        self.sessions = Gauge("fargpu_pool_node_sessions", "Sessions the node reported", ["node"], registry=r)
        self.resident = Gauge(
            "fargpu_pool_node_vram_resident_bytes",
            "Device memory the node's sessions hold on its GPUs, by the node's own accounting (last heartbeat)",
            ["node"],
            registry=r,
        )
        self.paged = Gauge(
            "fargpu_pool_node_vram_paged_bytes",
            "Device memory of the node's sessions paged out to its host RAM or disk (last heartbeat)",
            ["node"],
            registry=r,
        )
        self.sessions_paged = Gauge(
            "fargpu_pool_node_sessions_paged", "Sessions the node reported as paged out (host or disk)", ["node"],
            registry=r,
        )  # fmt: skip
        self.overcommit = Gauge(
            "fargpu_pool_node_overcommit_ratio", "Overcommit ratio placement books the node's GPUs at", ["node"],
            registry=r,
        )  # fmt: skip

        # Scaling (autoscaler.py) and leases that outlive their node.
        self.relocations = Counter("fargpu_pool_lease_relocations", "Leases moved to another node", registry=r)
        self.leases_parked = Gauge(
            "fargpu_pool_leases_parked", "Active leases bound to no node (their sessions are parked)", registry=r
        )
        self.scale_events = Counter(
            "fargpu_pool_scale_events", "Nodes the autoscaler started or stopped, and why", ["action", "reason"],
            registry=r,
        )  # fmt: skip
        self.provider_nodes = Gauge(
            "fargpu_pool_provider_nodes", "Nodes by the provider's state (this manager's last look)", ["state"],
            registry=r,
        )  # fmt: skip
        self.scaler_leader = Gauge(
            "fargpu_pool_autoscaler_leader", "1 while this pool manager holds the autoscaler lock", registry=r
        )
        self.demand = Gauge(
            "fargpu_pool_waiting_requests", "Lease requests and moves waiting for room, all pool managers", registry=r
        )
        self.node_start_seconds = Histogram(
            "fargpu_pool_node_start_seconds", "From asking the provider for a node to the node registering",
            buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300), registry=r,
        )  # fmt: skip

    def refresh(
        self, nodes: Sequence[NodeRecord], leases: Sequence[LeaseRecord], now: float, pool_overcommit: float = 1.0
    ) -> None:
        for q in QoS:
            self.leases_active.labels(q.value).set(sum(1 for lease in leases if lease.qos == q))
        self.leases_parked.set(sum(1 for lease in leases if not lease.node_id))
        for s in NodeState:
            self.nodes.labels(s.value).set(sum(1 for n in nodes if n.state == s))
        per_node = (self.vram_capacity, self.vram_reserved, self.vram_used, self.heartbeat_age, self.sessions)
        for g in (*per_node, self.resident, self.paged, self.sessions_paged, self.overcommit):
            g.clear()
        for n in nodes:
            self.vram_capacity.labels(n.node_id).set(n.vram_total_bytes)
            self.vram_reserved.labels(n.node_id).set(n.vram_reserved_bytes)
            self.vram_used.labels(n.node_id).set(n.vram_used_bytes)
            self.heartbeat_age.labels(n.node_id).set(max(0.0, now - n.last_heartbeat))
            self.sessions.labels(n.node_id).set(len(n.sessions))
            self.resident.labels(n.node_id).set(n.resident_bytes)
            self.paged.labels(n.node_id).set(n.paged_bytes)
            self.sessions_paged.labels(n.node_id).set(sum(1 for s in n.sessions if s.state.startswith("paged")))
            self.overcommit.labels(n.node_id).set(n.overcommit if n.overcommit > 0 else pool_overcommit)

    def render(self) -> bytes:
        return generate_latest(self.registry)
