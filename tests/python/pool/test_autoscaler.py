"""The autoscaler's decisions on both stores, with a hand-driven clock: min and max nodes, scale-up on unmet
demand (once per starting node), scale-down of idle nodes after the idle period and the cool-down (hysteresis),
never while a lease or a session is on the node; idle sessions paged out, parked where the node offers Park,
and parking a clear, logged no-op where it does not.

The provider here is `RegisteringProvider`, an in-process stand-in whose "nodes" register with the service the
moment they are started: these tests are about decisions, not processes. The real local provider, with real
node server processes, is in test_autoscaler_local.py and test_provider_local.py."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import FakeClock, GiB, eventually, gpus

from fargpu.pool_manager.autoscaler import Autoscaler, AutoscalerConfig
from fargpu.pool_manager.models import NodeState, QoS, SessionInfo
from fargpu.pool_manager.providers import ProviderNode, ProviderState
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import LeaseRequest


class RegisteringProvider:
    name = "registering"

    def __init__(self, service: PoolService, clock: FakeClock, register: bool = True) -> None:
        self.service, self.clock, self.register = service, clock, register
        self.nodes: dict[str, ProviderNode] = {}
        self.starts = 0
        self.stops: list[str] = []

    async def list(self) -> list[ProviderNode]:
        return list(self.nodes.values())

    async def start(self) -> ProviderNode:
        node_id = f"n{self.starts}"
        self.starts += 1
        self.nodes[node_id] = ProviderNode(node_id, ProviderState.running, self.clock())
        if self.register:
            await self.service.register_node(node_id, [f"tcp://{node_id}:1"], "sim", "", gpus(16))
        return self.nodes[node_id]

    async def stop(self, node_id: str) -> None:
        self.stops.append(node_id)
        self.nodes.pop(node_id, None)

    async def close(self) -> None:
        pass


def scaler(service: PoolService, clock: FakeClock, **kw: object) -> tuple[Autoscaler, RegisteringProvider]:
    provider = RegisteringProvider(service, clock, register=bool(kw.pop("register", True)))
    base: dict[str, object] = dict(min_nodes=0, max_nodes=3, node_idle_s=60, scale_down_cooldown_s=30)
    base.update(kw)
    return Autoscaler(service, provider, AutoscalerConfig(**base), clock=clock), provider  # type: ignore[arg-type]


async def test_min_nodes_then_idle_scale_down_with_hysteresis(service: PoolService, clock: FakeClock) -> None:
    a, p = scaler(service, clock, min_nodes=1)
    await a.tick()
    assert p.starts == 1 and a.leader
    await a.tick()
    assert p.starts == 1  # at the minimum
    assert [n.node_id for n in await service.list_nodes()] == ["n0"]
    clock.advance(3600)
    await a.tick()
    assert p.stops == []  # idle, but the minimum keeps it


async def test_demand_starts_one_node_and_idle_node_goes(service: PoolService, clock: FakeClock) -> None:
    a, p = scaler(service, clock, register=False)
    await a.tick()
    assert p.starts == 0  # no demand, no minimum: zero nodes
    await service.store.put_demand("m", '[{"vram_bytes": 1073741824, "gpus": 1, "qos": "standard"}]', 60)
    await a.tick()
    await a.tick()
    assert p.starts == 1  # one node is starting: the demand waits for it, no second start
    assert await a.can_scale_up()
    await service.register_node("n0", ["tcp://n0:1"], "sim", "", gpus(16))
    lease, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    await service.store.put_demand("m", "", 60)
    clock.advance(1000)
    await a.tick()
    assert p.stops == []  # a lease is on it
    await service.release_lease(lease.lease_id)
    await a.tick()
    clock.advance(59)
    await a.tick()
    assert p.stops == []  # idle 59 s < 60 s
    await service.node_heartbeat("n0", gpus(16), [SessionInfo(session_id="s", lease_id="x", node_id="n0", pid=1,
                                                              vram_used_bytes=0, client="c")], False)  # fmt: skip
    clock.advance(5)
    await a.tick()
    assert p.stops == []  # a session is reported there: the idle timer restarts
    await service.node_heartbeat("n0", gpus(16), [], False)
    await a.tick()
    clock.advance(60)
    await a.tick()
    assert p.stops == ["n0"]
    assert await service.list_nodes() == []  # stopped, marked down and forgotten
    assert a.last_action.startswith("stopped n0: idle for 60s")


async def test_max_nodes_and_cooldown(service: PoolService, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    a, p = scaler(service, clock, max_nodes=2, node_idle_s=10, scale_down_cooldown_s=100)
    big = '[{"vram_bytes": 17179869184, "gpus": 1, "qos": "standard"}]'  # 16 GiB: a whole node each
    await service.store.put_demand("m", big, 60)
    for _ in range(2):
        await a.tick()  # the demand fits no node: one more starts
        await service.create_lease(LeaseRequest(vram_bytes=16 * GiB))  # and fills it
    assert p.starts == 2
    with caplog.at_level(logging.WARNING, "fargpu.pool_manager.autoscaler"):
        await a.tick()
        await a.tick()
    assert p.starts == 2
    assert sum("maximum of 2 node(s)" in r.message for r in caplog.records) == 1  # said once
    assert not await a.can_scale_up()
    await service.store.put_demand("m", "", 60)
    for lease in await service.list_leases():
        await service.release_lease(lease.lease_id)
    clock.advance(50)
    await a.tick()
    clock.advance(20)
    await a.tick()
    assert p.stops == []  # idle long enough, but within the cool-down after the last scale-up
    clock.advance(40)
    await a.tick()
    assert len(p.stops) == 1  # one node per pass
    await a.tick()
    assert len(p.stops) == 2


async def test_scale_down_race_keeps_a_node_that_got_a_lease(service: PoolService, clock: FakeClock) -> None:
    a, p = scaler(service, clock, min_nodes=1, node_idle_s=5, scale_down_cooldown_s=0)
    await a.tick()
    a.config.min_nodes = 0
    await a.tick()
    clock.advance(10)
    real_drain = service.drain_node

    async def drain_then_lease(node_id: str, reason: str | None = None) -> object:
        # a lease lands in the instant before the node is drained (placed through another pool manager)
        await service.create_lease(LeaseRequest(vram_bytes=GiB))
        return await real_drain(node_id, reason)

    service.drain_node = drain_then_lease  # type: ignore[method-assign]
    await a.tick()
    assert p.stops == []
    assert (await service.get_node("n0")).state == NodeState.up  # undrained: it keeps serving


async def _session(service: PoolService, node: str, lease_id: str, state: str, idle_s: float, blocker: str = "",
                   result: str | None = None) -> None:  # fmt: skip
    s = SessionInfo(session_id=f"s-{lease_id}", lease_id=lease_id, node_id=node, pid=1, vram_used_bytes=GiB,
                    client="c", state=state, idle_s=idle_s, park_blocker=blocker, page_result=result)  # fmt: skip
    await service.node_heartbeat(node, gpus(16), [s], False)


@pytest.mark.parametrize("capable", [False, True])
async def test_idle_sessions_page_out_then_park_or_log_why_not(
    service: PoolService, clock: FakeClock, caplog: pytest.LogCaptureFixture, capable: bool
) -> None:
    a, p = scaler(service, clock, park_idle_s=30)
    await service.register_node("g", ["tcp://g:1"], "sim", "", gpus(16), capabilities=["park"] if capable else [])
    lease, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    guaranteed, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB, qos=QoS.guaranteed))
    await _session(service, "g", lease.lease_id, "resident", 10)
    await a.tick()
    assert await service.next_commands("g", 0.01) == []  # not idle long enough
    await _session(service, "g", lease.lease_id, "resident", 31)
    await a.tick()
    cmds = await service.next_commands("g", 0.01)
    assert [(c.kind, c.session_id, c.to) for c in cmds] == [("page_out", f"s-{lease.lease_id}", "auto")]
    await _session(service, "g", guaranteed.lease_id, "resident", 1000)
    await a.tick()
    assert await service.next_commands("g", 0.01) == []  # guaranteed sessions are never paged or parked
    await _session(service, "g", lease.lease_id, "paged-host", 40)
    with caplog.at_level(logging.INFO, "fargpu.pool_manager.autoscaler"):
        await a.tick()
        await a.tick()
    cmds = await service.next_commands("g", 0.01)
    if capable:
        assert [(c.kind, c.session_id) for c in cmds] == [("park", f"s-{lease.lease_id}")]
    else:
        assert cmds == []
        said = [r.message for r in caplog.records if "parking it is a no-op" in r.message]
        assert len(said) == 1 and "does not offer Park" in said[0]
    assert p.stops == []  # the paged session keeps its node


async def test_unparkable_session_stays_paged_with_its_reason(
    service: PoolService, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    a, p = scaler(service, clock, park_idle_s=30, node_idle_s=5, scale_down_cooldown_s=0)
    await service.register_node("g", ["tcp://g:1"], "sim", "", gpus(16), capabilities=["park"])
    lease, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    with caplog.at_level(logging.INFO, "fargpu.pool_manager.autoscaler"):
        await _session(service, "g", lease.lease_id, "paged-disk", 100, blocker="a CUDA graph (cannot be rebuilt)")
        await a.tick()
    assert await service.next_commands("g", 0.01) == []
    said = [r.message for r in caplog.records if "parking it is a no-op" in r.message]
    assert len(said) == 1 and "it cannot be parked: a CUDA graph (cannot be rebuilt)" in said[0]


async def test_node_with_only_parked_leases_goes_and_they_resume_elsewhere(service: PoolService,
                                                                          clock: FakeClock) -> None:  # fmt: skip
    a, p = scaler(service, clock, min_nodes=1, node_idle_s=10, scale_down_cooldown_s=0)
    await a.tick()  # n0
    lease, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    assert lease.node_id == "n0"
    a.config.min_nodes = 0
    await _session(service, "n0", lease.lease_id, "paged-host", 100)
    await a.tick()
    clock.advance(60)
    await a.tick()
    assert p.stops == []  # a paged (not parked) session keeps its node
    await _session(service, "n0", lease.lease_id, "parked", 0, result="parked sessions/s-x 4096 100")
    await a.tick()
    clock.advance(11)
    await a.tick()
    assert p.stops == ["n0"]
    parked = await service.get_lease(lease.lease_id)
    assert parked.node_id == "" and parked.parked_ref == "sessions/s-x" and parked.state.value == "active"
    assert await service.list_nodes() == []  # zero nodes, the lease lives on
    # the client calls again: the lease waits for a node; the autoscaler starts one; the lease is placed there
    resume = asyncio.create_task(service.resume_lease(lease.lease_id, wait_s=10))
    for _ in range(100):
        await asyncio.sleep(0.01)
        await service.publish_demand()
        await a.tick()
        if resume.done():
            break
    assert (await resume).node_id == "n1" and p.starts == 2


async def test_a_node_that_runs_but_never_registers_is_stopped(service: PoolService, clock: FakeClock) -> None:
    a, p = scaler(service, clock, register=False, min_nodes=1, start_timeout_s=120)
    await a.tick()
    assert p.starts == 1
    clock.advance(100)
    await a.tick()
    assert p.stops == []
    p.nodes["pending-pod"] = ProviderNode("pending-pod", ProviderState.starting, 0.0)  # waits for a machine
    clock.advance(30)
    await a.tick()
    assert p.stops == ["n0"]  # ran 130 s without registering; the Pending one is the cluster autoscaler's
    clock.advance(1000)
    await a.tick()
    assert "pending-pod" not in p.stops


async def test_no_node_is_started_for_a_request_no_provider_node_can_hold(
    service: PoolService, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    a, p = scaler(service, clock, min_nodes=1)
    assert await a.can_scale_up(64 * GiB, 1)  # no provider node seen yet: one may fit
    await a.tick()
    await a.tick()  # n0 (16 GiB) registered: the provider's nodes are that big
    assert p.starts == 1
    assert not await a.can_scale_up(32 * GiB, 1) and not await a.can_scale_up(GiB, 2)
    assert await a.can_scale_up(8 * GiB, 1)
    await service.store.put_demand("m", '[{"vram_bytes": 34359738368, "gpus": 1, "qos": "standard"}]', 60)
    with caplog.at_level(logging.WARNING, "fargpu.pool_manager.autoscaler"):
        await a.tick()
        await a.tick()
    assert p.starts == 1
    assert sum("no node is started for them" in r.message for r in caplog.records) == 1


async def test_a_new_waiting_lease_wakes_the_autoscaler_at_once(service: PoolService, clock: FakeClock) -> None:
    """A lease that finds no room publishes its demand and wakes the autoscaler: the node is asked for at once, not
    at the next pass (an hour away here), and the lease is placed on it."""
    a, p = scaler(service, clock, interval_s=3600.0, lock_ttl_s=7200.0)
    await a.start()
    try:
        await eventually(lambda: a.leader, 30)  # its first pass ran: the next one is an hour away
        assert p.starts == 0
        task = asyncio.create_task(service.create_lease(LeaseRequest(vram_bytes=GiB)))
        await eventually(lambda: p.starts == 1, 30)
        await service.serve_queue()  # this service runs no background loops: serve its wait queue by hand
        lease, _ = await asyncio.wait_for(task, 30)
        assert lease.node_id == "n0"
        assert p.starts == 1  # one node for one request
    finally:
        await a.stop()
    assert service.on_demand is None  # a stopped autoscaler is no longer woken

