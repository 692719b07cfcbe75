"""The Redis store: pool state shared by any number of pool managers, surviving their restarts.

Every decision is one Lua script (store_redis_lua.py), so Redis runs it atomically against all other clients:
booking VRAM (`PLACE` checks capacity and books in one step), ending a lease (`END` gives VRAM back once), renewing,
heartbeats that must not revive a down node, and marking a silent node down. Keys, under a prefix P:

    P nodes              set of node ids
    P node:<id>          hash: state, reason, hb (last heartbeat), info (static JSON), gpus, sessions, capidx,
                         overcommit (the node's own ratio; 0: the pool's)
    P states             hash: node id -> state (a copy of node:<id>.state that every script keeps in step)
    P hbs                hash: node id -> last heartbeat (a copy of node:<id>.hb, for placement's snapshot)
    P cap                hash: "<node id>:<gpu>" -> capacity bytes (from registration)
    P resv               hash: "<node id>:<gpu>" -> bytes booked by active leases
    P gresv              hash: "<node id>:<gpu>" -> the part of resv booked by guaranteed leases
    P overcommit         hash: node id -> its own overcommit ratio (a copy for placement's cached snapshot)
    P endpoints          hash: node id -> JSON list of endpoints
    P generation         counter, bumped by every registration
    P nleases:<id>       set of the node's active lease ids
    P lease:<id>         hash: state, node, allocs ("gpu:bytes,..."), guaranteed ("1": booked in gresv too),
                         expires_at, token (hash), doc (JSON), ended_at, end_reason, tenant, tquota
                         (the VRAM it books against its tenant's quota), seen (a node reported a session); expires
                         `ended_retention_s` after the lease ends
    P active             zset lease id -> expires_at (expiry sweep, listing)
    P ended              zset lease id -> ended_at (recently ended, listing)
    P token:<sha256>     lease id
    P cmds:<id>          list of queued node commands (JSON)
    P nodecreds          hash: node id -> SHA-256 (hex) of the node's credential (`SET_CREDENTIAL`)
    P tusage             hash: "<tenant>:vram" / "<tenant>:n" -> VRAM booked / active leases of the tenant
    P tenants            hash: tenant name -> JSON record
    P apikeys            hash: key id -> JSON record (SHA-256 of the key, never the key)
    P keyhash            hash: SHA-256 of a live key -> key id

Placement reads the whole pool with three HGETALLs (states, resv, gresv) plus capacity, endpoints and node
ratios, which it caches until `P generation` (bumped by every registration) changes. The
scripts touch keys they derive from the prefix, which is fine on one Redis (not Redis Cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fargpu.pool_manager import store_redis_lua as lua
from fargpu.pool_manager.models import (
    ApiKeyRecord,
    GpuInfo,
    LeaseRecord,
    LeaseState,
    NodeRecord,
    NodeState,
    QoS,
    SessionInfo,
    TenantRecord,
)
from fargpu.pool_manager.store import QUOTA_REFUSAL, Command, EndResult, NodeCapacity, TenantLimits


def _strs(values: Any) -> list[str]:
    """A reply of strings (the client decodes responses) as list[str], whatever redis-py's stubs say."""
    return [str(v) for v in values]


def _hash(values: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in values.items()}


def _per_node(h: Any) -> dict[str, dict[int, int]]:
    """{"node:gpu": bytes} -> {node: {gpu: bytes}}."""
    out: dict[str, dict[int, int]] = {}
    for field, value in h.items():
        node, _, gpu = str(field).rpartition(":")
        out.setdefault(node, {})[int(gpu)] = int(value)
    return out


class RedisStore:
    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "fargpu:",
        ended_retention_s: int = 3600,
        max_connections: int = 64,
    ) -> None:
        self._url = url
        self._p = prefix
        self._retention = ended_retention_s
        # A blocking pool: under load, callers wait for a free connection instead of failing. Socket deadlines make
        # a dead or stopped Redis an error in seconds (503 to clients, see api.py), never a hung request.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=30,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
        )
        self._r: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._place = self._r.register_script(lua.PLACE)
        self._end = self._r.register_script(lua.END)
        self._renew = self._r.register_script(lua.RENEW)
        self._heartbeat = self._r.register_script(lua.HEARTBEAT)
        self._mark_down = self._r.register_script(lua.MARK_DOWN)
        self._drain = self._r.register_script(lua.DRAIN)
        self._undrain = self._r.register_script(lua.UNDRAIN)
        self._register = self._r.register_script(lua.REGISTER)
        self._set_credential = self._r.register_script(lua.SET_CREDENTIAL)
        self._move = self._r.register_script(lua.MOVE)
        self._forget = self._r.register_script(lua.FORGET)
        self._lock = self._r.register_script(lua.LOCK)
        self._unlock = self._r.register_script(lua.UNLOCK)
        self._seen = self._r.register_script(lua.SEEN)
        self._revoke = self._r.register_script(lua.REVOKE)
        self._wakeups: dict[str, asyncio.Event] = {}
        self._static: tuple[Any, dict[str, dict[int, int]], dict[str, list[str]], dict[str, float]] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def open(self) -> None:
        try:
            await self._r.ping()
        except (RedisError, OSError) as e:
            raise ConnectionError(f"cannot reach Redis at {self._url}: {e}") from e

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()  # redis-py may absorb one cancellation mid-read; the flag ends the loop
            if self._listener.get_loop() is asyncio.get_running_loop():
                await asyncio.wait([self._listener], timeout=2.0)
            self._listener = None
        await self._r.aclose(close_connection_pool=True)

    # --- decoding ----------------------------------------------------------------------------------------
    @staticmethod
    def _lease(h: dict[str, str]) -> LeaseRecord | None:
        if not h or "doc" not in h:
            return None
        lease = LeaseRecord.model_validate_json(h["doc"])
        lease.state = LeaseState(h["state"])
        lease.expires_at = float(h["expires_at"])
        lease.sessions_seen = h.get("seen") == "1"
        if "ended_at" in h:
            lease.ended_at = float(h["ended_at"])
            lease.end_reason = h.get("end_reason")
        return lease

    @staticmethod
    def _node(
        h: dict[str, str], capacity: dict[int, int], reserved: dict[int, int], guaranteed: dict[int, int]
    ) -> NodeRecord | None:
        if not h or "info" not in h:
            return None
        info: dict[str, Any] = json.loads(h["info"])
        gpus = [GpuInfo.model_validate(g) for g in json.loads(h.get("gpus", "[]"))]
        gpus = [g.model_copy(update={"total_bytes": capacity[g.index]}) for g in gpus if g.index in capacity]
        return NodeRecord(
            **info,
            gpus=gpus,
            sessions=[SessionInfo.model_validate(s) for s in json.loads(h.get("sessions", "[]"))],
            state=NodeState(h["state"]),
            state_reason=h.get("reason") or None,
            last_heartbeat=float(h.get("hb", "0")),
            reserved={g: b for g, b in reserved.items() if b != 0},
            guaranteed_reserved={g: b for g, b in guaranteed.items() if b != 0},
        )

    # --- nodes -------------------------------------------------------------------------------------------
    async def register_node(self, node: NodeRecord) -> NodeRecord:
        info = node.model_dump_json(
            include={"node_id", "endpoints", "backend", "version", "registered_at", "overcommit", "capabilities"}
        )
        pairs: list[str] = []
        for g in node.gpus:
            pairs += [str(g.index), str(g.total_bytes)]
        await self._register(
            keys=[
                self._k("nodes"),
                self._k("node", node.node_id),
                self._k("states"),
                self._k("cap"),
                self._k("endpoints"),
                self._k("generation"),
                self._k("overcommit"),
                self._k("hbs"),
            ],
            args=[
                node.node_id,
                repr(node.last_heartbeat),
                info,
                json.dumps(node.endpoints),
                json.dumps([g.model_dump(mode="json") for g in node.gpus]),
                json.dumps([g.index for g in node.gpus]),
                repr(float(node.overcommit)),
                *pairs,
            ],
        )
        rec = await self.get_node(node.node_id)
        assert rec is not None
        return rec

    async def heartbeat(
        self, node_id: str, gpus: list[GpuInfo], sessions: list[SessionInfo], draining: bool, now: float
    ) -> bool:
        ok = await self._heartbeat(
            keys=[self._k("node", node_id), self._k("states"), self._k("hbs")],
            args=[
                repr(now),
                json.dumps([g.model_dump(mode="json") for g in gpus]),
                json.dumps([s.model_dump(mode="json") for s in sessions]),
                "1" if draining else "0",
                node_id,
            ],
        )
        return bool(ok)

    async def get_node(self, node_id: str) -> NodeRecord | None:
        h = _hash(await self._r.hgetall(self._k("node", node_id)))
        if not h:
            return None
        idx = [int(g) for g in json.loads(h.get("capidx", "[]"))]
        fields = [f"{node_id}:{g}" for g in idx]
        if not fields:
            return self._node(h, {}, {}, {})
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k("cap"), fields)
            pipe.hmget(self._k("resv"), fields)
            pipe.hmget(self._k("gresv"), fields)
            caps, resv, gresv = await pipe.execute()
        capacity = {g: int(c) for g, c in zip(idx, caps, strict=True) if c is not None}
        reserved = {g: int(r) for g, r in zip(idx, resv, strict=True) if r is not None}
        guaranteed = {g: int(r) for g, r in zip(idx, gresv, strict=True) if r is not None}
        return self._node(h, capacity, reserved, guaranteed)

    async def _node_ids(self) -> list[str]:
        return sorted(_strs(await self._r.smembers(self._k("nodes"))))

    async def list_nodes(self) -> list[NodeRecord]:
        ids = await self._node_ids()
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k("cap"))
            pipe.hgetall(self._k("resv"))
            pipe.hgetall(self._k("gresv"))
            for nid in ids:
                pipe.hgetall(self._k("node", nid))
            raw = await pipe.execute()
        caps, resv, gresv = _per_node(raw[0]), _per_node(raw[1]), _per_node(raw[2])
        nodes = [
            self._node(h, caps.get(nid, {}), resv.get(nid, {}), gresv.get(nid, {}))
            for nid, h in zip(ids, raw[3:], strict=True)
        ]
        return [n for n in nodes if n is not None]

    async def placement_view(self) -> list[NodeCapacity]:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.get(self._k("generation"))
            pipe.hgetall(self._k("states"))
            pipe.hgetall(self._k("resv"))
            pipe.hgetall(self._k("gresv"))
            pipe.hgetall(self._k("hbs"))
            generation, states, resv, gresv, hbs = await pipe.execute()
        if self._static is None or self._static[0] != generation:
            # Capacity, endpoints and ratios change only when a node registers (which bumps the generation).
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.get(self._k("generation"))
                pipe.hgetall(self._k("cap"))
                pipe.hgetall(self._k("endpoints"))
                pipe.hgetall(self._k("overcommit"))
                gen2, cap, endpoints, ratios = await pipe.execute()
            self._static = (
                gen2,
                _per_node(cap),
                {str(k): json.loads(v) for k, v in endpoints.items()},
                {str(k): float(v) for k, v in ratios.items()},
            )
        _, caps, eps, node_ratios = self._static
        booked, booked_guaranteed = _per_node(resv), _per_node(gresv)
        return [
            NodeCapacity(
                nid,
                NodeState(state),
                eps.get(nid, []),
                caps.get(nid, {}),
                booked.get(nid, {}),
                booked_guaranteed.get(nid, {}),
                node_ratios.get(nid, 0.0),
                float(hbs.get(nid, 0.0)),
            )
            for nid, state in sorted(states.items())
        ]

    async def set_draining(self, node_id: str, reason: str) -> NodeRecord | None:
        if not await self._drain(keys=[self._k("node", node_id), self._k("states")], args=[reason, node_id]):
            return None
        return await self.get_node(node_id)

    async def set_undrained(self, node_id: str) -> NodeRecord | None:
        if not await self._undrain(keys=[self._k("node", node_id), self._k("states")], args=[node_id]):
            return None
        return await self.get_node(node_id)

    async def mark_down(self, node_id: str, reason: str, stale_before: float | None) -> list[str] | None:
        res = await self._mark_down(
            keys=[self._k("node", node_id), self._k("nleases", node_id), self._k("states")],
            args=[reason, "" if stale_before is None else repr(stale_before), node_id],
        )
        if not res:
            return None
        return sorted(_strs(res[1]))

    async def active_lease_ids_on(self, node_id: str) -> list[str]:
        return sorted(_strs(await self._r.smembers(self._k("nleases", node_id))))

    # --- node credentials --------------------------------------------------------------------------------
    async def set_node_credential(self, node_id: str, sha256_hex: str) -> bool:
        res = await self._set_credential(
            keys=[self._k("node", node_id), self._k("nodecreds")], args=[node_id, sha256_hex]
        )
        return bool(res)

    async def node_credential(self, node_id: str) -> str | None:
        digest = await self._r.hget(self._k("nodecreds"), node_id)
        return str(digest) if digest is not None else None

    # --- leases ------------------------------------------------------------------------------------------
    async def place_lease(
        self, lease: LeaseRecord, overcommit: float = 1.0, limits: TenantLimits | None = None
    ) -> str | None:
        limits = limits or TenantLimits()
        pairs: list[str] = []
        for a in lease.allocs:
            pairs += [str(a.gpu), str(a.vram_bytes)]
        allocs = ",".join(f"{a.gpu}:{a.vram_bytes}" for a in lease.allocs)
        res: str = await self._place(
            keys=[
                self._k("node", lease.node_id),
                self._k("cap"),
                self._k("resv"),
                self._k("nleases", lease.node_id),
                self._k("lease", lease.lease_id),
                self._k("active"),
                self._k("token", lease.token_hash),
                self._k("gresv"),
                self._k("tusage"),
            ],
            args=[
                lease.lease_id,
                repr(lease.expires_at),
                lease.token_hash,
                lease.model_dump_json(),
                lease.node_id,
                allocs,
                repr(float(overcommit)),
                "1" if lease.qos == QoS.guaranteed else "0",
                lease.tenant,
                "" if limits.vram_bytes is None else str(limits.vram_bytes),
                "" if limits.leases is None else str(limits.leases),
                str(lease.quota_bytes),
                QUOTA_REFUSAL,
                *pairs,
            ],
        )
        return res or None

    async def end_lease(self, lease_id: str, state: LeaseState, reason: str, now: float) -> EndResult:
        res = await self._end(
            keys=[
                self._k("lease", lease_id),
                self._k("active"),
                self._k("ended"),
                self._k("resv"),
                self._k("gresv"),
                self._k("tusage"),
            ],
            args=[lease_id, state.value, reason, repr(now), str(self._retention), self._p],
        )
        if res == -1:
            return EndResult(None, False)
        return EndResult(await self.get_lease(lease_id), res == 1)

    async def mark_sessions_seen(self, lease_id: str) -> None:
        await self._seen(keys=[self._k("lease", lease_id)], args=[])

    async def tenant_usage(self, tenant: str) -> tuple[int, int]:
        vram, n = await self._r.hmget(self._k("tusage"), [f"{tenant}:vram", f"{tenant}:n"])
        return int(vram or 0), int(n or 0)

    # --- tenants and API keys ----------------------------------------------------------------------------
    async def put_tenant(self, tenant: TenantRecord) -> None:
        await self._r.hset(self._k("tenants"), tenant.name, tenant.model_dump_json())

    async def get_tenant(self, name: str) -> TenantRecord | None:
        raw = await self._r.hget(self._k("tenants"), name)
        return TenantRecord.model_validate_json(raw) if raw else None

    async def list_tenants(self) -> list[TenantRecord]:
        raw = _hash(await self._r.hgetall(self._k("tenants")))
        return [TenantRecord.model_validate_json(v) for _, v in sorted(raw.items())]

    async def put_api_key(self, key: ApiKeyRecord) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("apikeys"), key.key_id, key.model_dump_json())
            if key.revoked_at is None:
                pipe.hset(self._k("keyhash"), key.key_hash, key.key_id)
            await pipe.execute()

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        key_id = await self._r.hget(self._k("keyhash"), key_hash)
        if not key_id:
            return None
        raw = await self._r.hget(self._k("apikeys"), key_id)
        k = ApiKeyRecord.model_validate_json(raw) if raw else None
        return k if k is not None and k.revoked_at is None and k.key_hash == key_hash else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        raw = _hash(await self._r.hgetall(self._k("apikeys")))
        keys = [ApiKeyRecord.model_validate_json(v) for v in raw.values()]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    async def revoke_api_key(self, key_id: str, now: float) -> ApiKeyRecord | None:
        raw = await self._r.hget(self._k("apikeys"), key_id)
        if not raw:
            return None
        k = ApiKeyRecord.model_validate_json(raw)
        if k.revoked_at is None:
            k.revoked_at = now
            await self._revoke(
                keys=[self._k("apikeys"), self._k("keyhash")], args=[key_id, k.model_dump_json(), k.key_hash]
            )
        return k

    async def ping(self) -> None:
        await self._r.ping()

    async def renew_lease(self, lease_id: str, expires_at: float) -> LeaseRecord | None:
        res = await self._renew(keys=[self._k("lease", lease_id), self._k("active")], args=[lease_id, repr(expires_at)])
        if res == -1:
            return None
        return await self.get_lease(lease_id)

    async def get_lease(self, lease_id: str) -> LeaseRecord | None:
        return self._lease(_hash(await self._r.hgetall(self._k("lease", lease_id))))

    async def lease_by_token_hash(self, token_hash: str) -> LeaseRecord | None:
        lease_id = await self._r.get(self._k("token", token_hash))
        return await self.get_lease(str(lease_id)) if lease_id else None

    async def list_leases(self, include_ended: bool = False) -> list[LeaseRecord]:
        ids = _strs(await self._r.zrange(self._k("active"), 0, -1))
        if include_ended:
            ids += _strs(await self._r.zrange(self._k("ended"), 0, -1))
        async with self._r.pipeline(transaction=False) as pipe:
            for lid in ids:
                pipe.hgetall(self._k("lease", lid))
            raw = await pipe.execute()
        leases = [lease for h in raw if (lease := self._lease(h)) is not None]
        if not include_ended:
            leases = [lease for lease in leases if lease.state == LeaseState.active]
        return sorted(leases, key=lambda x: (x.created_at, x.lease_id))

    async def expired_lease_ids(self, now: float) -> list[str]:
        return sorted(_strs(await self._r.zrangebyscore(self._k("active"), "-inf", now)))

    async def next_expiry(self) -> float | None:
        first: Any = await self._r.zrange(self._k("active"), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def purge_ended(self, before: float) -> int:
        # The lease hashes expire by themselves; this trims the index of recently ended leases.
        return int(await self._r.zremrangebyscore(self._k("ended"), "-inf", f"({before}"))

    # --- node commands -----------------------------------------------------------------------------------
    # Queued in a list per node; a PUBLISH on P cmd-ready wakes the pool manager that holds the node's command
    # stream (one subscription per process), so nothing polls. A missed wake-up costs at most `timeout_s`.
    async def push_command(self, node_id: str, command: Command) -> None:
        key = self._k("cmds", node_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(command.__dict__))
            pipe.expire(key, 86400)
            pipe.publish(self._k("cmd-ready"), node_id)
            await pipe.execute()

    def _ready(self, node_id: str) -> asyncio.Event:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="redis-command-wakeups")
        return self._wakeups.setdefault(node_id, asyncio.Event())

    async def _listen(self) -> None:
        pubsub = self._r.pubsub()
        try:
            await pubsub.subscribe(self._k("cmd-ready"))
            while not self._closing:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    event = self._wakeups.get(str(msg["data"]))
                    if event is not None:
                        event.set()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1.0)

    async def take_commands(self, node_id: str, timeout_s: float) -> list[Command]:
        key = self._k("cmds", node_id)
        ready = self._ready(node_id)
        ready.clear()
        raw = await self._r.lpop(key, 100)
        if not raw:
            try:
                await asyncio.wait_for(ready.wait(), timeout_s)
            except TimeoutError:
                pass
            raw = await self._r.lpop(key, 100)
        return [Command(**json.loads(item)) for item in _strs(raw or [])]

    # --- scaling and moving leases -----------------------------------------------------------------------
    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        ms = str(max(1, int(ttl_s * 1000)))
        return bool(await self._lock(keys=[self._k("lock", name)], args=[owner, ms]))

    async def unlock(self, name: str, owner: str) -> None:
        await self._unlock(keys=[self._k("lock", name)], args=[owner])

    async def put_demand(self, owner: str, payload: str, ttl_s: float) -> None:
        # Each entry carries its own deadline (unix time of the writer); readers skip lapsed ones.
        if payload:
            await self._r.hset(self._k("demand"), owner, f"{time.time() + ttl_s!r}|{payload}")
        else:
            await self._r.hdel(self._k("demand"), owner)

    async def demand(self) -> list[str]:
        now, out, lapsed = time.time(), [], []
        for owner, value in _hash(await self._r.hgetall(self._k("demand"))).items():
            until, _, payload = value.partition("|")
            try:
                live = float(until) > now
            except ValueError:
                live = False
            if live:
                out.append(payload)
            else:
                lapsed.append(owner)
        if lapsed:
            await self._r.hdel(self._k("demand"), *lapsed)
        return out

    async def move_lease(self, lease: LeaseRecord, overcommit: float = 1.0) -> str | None:
        pairs: list[str] = []
        for a in lease.allocs:
            pairs += [str(a.gpu), str(a.vram_bytes)]
        allocs = ",".join(f"{a.gpu}:{a.vram_bytes}" for a in lease.allocs)
        res: str = await self._move(
            keys=[self._k("lease", lease.lease_id), self._k("cap"), self._k("resv"), self._k("gresv")],
            args=[lease.lease_id, lease.node_id, lease.model_dump_json(), allocs, repr(float(overcommit)), self._p,
                  *pairs],
        )  # fmt: skip
        return res or None

    async def forget_node(self, node_id: str) -> bool:
        keys = [self._k("nodes"), self._k("node", node_id), self._k("states"), self._k("cap"), self._k("endpoints"),
                self._k("overcommit"), self._k("generation"), self._k("nleases", node_id)]  # fmt: skip
        return bool(await self._forget(keys=keys, args=[node_id]))
