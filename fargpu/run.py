"""`fargpu run`: lease GPU capacity, run a command against it with the stub loaded, give the capacity back.

    fargpu run [--vram 8G] [--gpus 1] [--qos standard] [--idle-timeout S] [--pool URL] -- CMD ARGS...

`--idle-timeout S`: the node pages CMD's GPU memory out after S idle seconds (0: never; default: the pool's),
unless `--qos guaranteed`, which is never paged; the next call pages it back in at the same addresses.

1. Finds the stub (`fargpu.paths`) before leasing, so a missing native build costs no lease.
2. Leases (POST /v1/leases, with the API key that `tenants.find_api_key` finds: FARGPU_API_KEY, the config file,
   or this machine's local key) and checks that the node's endpoint accepts a connection. A node that refuses
   it (or does not answer within a second) is avoided: the lease is released and taken again elsewhere
   (`avoid_nodes`), up to `MAX_PLACEMENTS` times, without a word unless all of them fail. Then it sets, for CMD
   only: FARGPU_SERVER (the node's endpoint as `host:port`, or a unix socket path when the node offers one on
   this host), FARGPU_TOKEN, FARGPU_LEASE_ID, LD_LIBRARY_PATH with the stub's folder first, and LD_PRELOAD with
   the stub.
3. Renews every third of the TTL while CMD runs. If the pool ends the lease (expiry, eviction, node loss), the
   reason is printed; CMD then gets an error from the node on its next call.
4. Forwards SIGINT, SIGTERM and SIGHUP to CMD, except a SIGINT from the terminal: the terminal already sent it
   to CMD, which shares our foreground process group, and a second one would cut its clean-up short.
5. Releases the lease when CMD ends, however it ends, and exits with CMD's exit code (128+N for signal N).
   Own failures use docker-run's codes: 125 (pool or stub problem), 126 (CMD not executable), 127 (not found)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fargpu import paths
from fargpu.pool_manager.client import PoolApiError, PoolClient, PoolUnreachable
from fargpu.pool_manager.units import format_size

EXIT_POOL = 125
MAX_PLACEMENTS = 4
PROBE_TIMEOUT_S = 1.0
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


def _say(msg: str) -> None:
    print(f"fargpu: {msg}", file=sys.stderr, flush=True)


def server_address(endpoint: str) -> str:
    """A lease endpoint as the stub's FARGPU_SERVER wants it: `tcp://h:p` -> `h:p`, `unix:///p` -> `/p`;
    `tls://h:p` stays (the stub speaks TLS to it)."""
    if endpoint.startswith("unix://"):
        return endpoint.removeprefix("unix://")
    if endpoint.startswith("tcp://"):
        return endpoint.removeprefix("tcp://")
    return endpoint


def pick_endpoint(endpoints: list[str]) -> str:
    """Prefers a unix socket that exists on this host (same-host node: shared memory path), else TCP."""
    for e in endpoints:
        addr = server_address(e)
        if addr.startswith("/") and Path(addr).exists():
            return addr
    for e in endpoints:
        addr = server_address(e)
        if not addr.startswith("/"):
            return addr
    if not endpoints:
        raise ValueError("the lease has no endpoint")
    return server_address(endpoints[0])


async def reachable(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the node endpoint (`host:port` or a socket path) accepts a connection, else why not. The probe
    connection is closed at once; the node sees a client that left before its handshake."""
    try:
        if endpoint.startswith("/"):
            _, w = await asyncio.wait_for(asyncio.open_unix_connection(endpoint), timeout_s)
        else:
            host, _, port = endpoint.removeprefix("tls://").rpartition(":")
            _, w = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout_s)
    except (OSError, TimeoutError, ValueError) as e:
        return str(e) or type(e).__name__
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return None


async def _lease_reachable(client: PoolClient, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A lease whose node accepts connections: nodes that do not are avoided and the lease is taken again."""
    avoid: list[str] = []
    for _ in range(MAX_PLACEMENTS):
        lease = await client.create_lease(avoid_nodes=avoid or None, **kwargs)
        why = await reachable(pick_endpoint(list(lease["endpoints"])))
        if why is None:
            return lease
        avoid.append(lease["node_id"])
        with contextlib.suppress(PoolApiError, PoolUnreachable):
            await client.release_lease(lease["lease_id"])
    raise PoolApiError(503, "unreachable_nodes", f"no node the pool offered accepted a connection (tried "
                       f"{', '.join(avoid)}; last: {why})")  # fmt: skip


def child_env(base: Mapping[str, str], lease: dict[str, Any], stub_dir: Path, stub_lib: Path) -> dict[str, str]:
    env = dict(base)
    env["FARGPU_SERVER"] = pick_endpoint(list(lease["endpoints"]))
    env["FARGPU_TOKEN"] = lease["token"]
    env["FARGPU_LEASE_ID"] = lease["lease_id"]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(stub_dir), base.get("LD_LIBRARY_PATH", "")) if p)
    preload = [p for p in base.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    env["LD_PRELOAD"] = ":".join([str(stub_lib), *[p for p in preload if p != str(stub_lib)]])
    return env


def _terminal_sent_it() -> bool:
    """True when a SIGINT most likely came from the terminal (Ctrl-C), which also delivered it to the child."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


async def _renew_loop(client: PoolClient, lease: dict[str, Any], interval_s: float) -> None:
    warned = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            await client.renew_lease(lease["lease_id"])
            warned = False
        except PoolApiError as e:
            if e.status in (404, 409):
                _say(f"the lease ended: {e.reason}")
                return
            if not warned:
                _say(f"renewing the lease failed: {e.reason}")
                warned = True
        except PoolUnreachable as e:
            if not warned:
                _say(f"renewing the lease failed, will retry: {e}")
                warned = True


async def run_leased(
    cmd: list[str],
    *,
    pool_url: str | None = None,
    vram_bytes: int,
    gpus: int = 1,
    qos: str | None = None,
    ttl_s: float = 60.0,
    wait_s: float = 0.0,
    label: str | None = None,
    quiet: bool = False,
    idle_timeout_s: float | None = None,
) -> int:
    if not cmd:
        _say("no command given: fargpu run [OPTIONS] -- CMD ARGS...")
        return EXIT_POOL
    try:
        stub_dir, stub_lib = paths.stub_dir(), paths.stub_lib()
    except FileNotFoundError as e:
        _say(str(e))
        return EXIT_POOL
    async with PoolClient(pool_url) as client:
        asking = asyncio.ensure_future(_lease_reachable(client, dict(
            vram_bytes=vram_bytes,
            gpus=gpus,
            qos=qos,
            ttl_s=ttl_s,
            wait_s=wait_s,
            label=label or " ".join(cmd)[:200],
            idle_timeout_s=idle_timeout_s,
        )))  # fmt: skip
        try:
            done, _ = await asyncio.wait([asking], timeout=2.0)
            if not done and not quiet:  # no room now: the pool queues the request, or starts a node for it
                _say("waiting for capacity: no node has room yet (a pool with a node provider starts one; "
                     "`fargpu pool nodes` shows it)")  # fmt: skip
            lease = await asking
        except PoolUnreachable as e:
            _say(str(e))
            return EXIT_POOL
        except PoolApiError as e:
            retry = f" (retry after {e.retry_after_s}s)" if e.retry_after_s else ""
            _say(f"no lease: {e.reason}{retry}")
            return EXIT_POOL
        try:
            return await _run_child(client, cmd, lease, stub_dir, stub_lib, ttl_s, quiet)
        finally:
            try:
                await client.release_lease(lease["lease_id"])
            except PoolApiError as e:
                if e.status not in (404, 409):
                    _say(f"releasing lease {lease['lease_id']} failed: {e.reason}")
            except PoolUnreachable as e:
                _say(f"could not release lease {lease['lease_id']}; it expires by itself: {e}")


async def _run_child(
    client: PoolClient,
    cmd: list[str],
    lease: dict[str, Any],
    stub_dir: Path,
    stub_lib: Path,
    ttl_s: float,
    quiet: bool,
) -> int:
    env = child_env(os.environ, lease, stub_dir, stub_lib)
    env["FARGPU_POOL_URL"] = client.base_url  # where the stub asks for its lease after a park (client_stub/reconnect.c)
    if not quiet:
        _say(
            f"lease {lease['lease_id']}: {lease['gpu_count']} GPU x {format_size(lease['vram_bytes'])} "
            f"on node {lease['node_id']} ({env['FARGPU_SERVER']})"
        )
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, env=env)
    except FileNotFoundError:
        _say(f"command not found: {cmd[0]}")
        return EXIT_NOT_FOUND
    except PermissionError:
        _say(f"command not executable: {cmd[0]}")
        return EXIT_NOT_EXECUTABLE
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        if sig == signal.SIGINT and _terminal_sent_it():
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in forwarded:
        loop.add_signal_handler(sig, forward, sig)
    renew = asyncio.create_task(_renew_loop(client, lease, max(0.5, ttl_s / 3)))
    try:
        rc = await proc.wait()
    finally:
        renew.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renew
        for sig in forwarded:
            loop.remove_signal_handler(sig)
    return rc if rc >= 0 else 128 - rc
