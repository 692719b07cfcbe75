"""`fargpu pool ...`: the operators' view of the pool (status, nodes, leases, sessions) and its two levers
(drain a node, evict a lease). Every command takes --json for scripts; tables otherwise. Exit codes: 0 done,
1 the pool refused (the reason is printed), 2 the pool manager could not be reached."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from fargpu.pool_manager.client import PoolApiError, PoolClient, PoolUnreachable, default_pool_url
from fargpu.pool_manager.units import format_size

T = TypeVar("T")

app = typer.Typer(help="Inspect and operate the GPU pool (talks to the pool manager's REST API).", no_args_is_help=True)

PoolOpt = Annotated[
    str | None,
    typer.Option("--pool", envvar="FARGPU_POOL_URL", help="pool manager URL [default: http://127.0.0.1:7000]"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
AdminOpt = Annotated[
    str | None, typer.Option("--admin-token", envvar="FARGPU_ADMIN_TOKEN", help="admin token of the pool manager")
]


def _out() -> Console:
    return Console()  # made per command, so that the terminal's width at that moment applies


def _err() -> Console:
    return Console(stderr=True)


def _call(pool: str | None, admin_token: str | None, fn: Callable[[PoolClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with PoolClient(pool or default_pool_url(), admin_token=admin_token) as client:
            return await fn(client)

    try:
        return asyncio.run(go())
    except PoolUnreachable as e:
        _err().print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    except PoolApiError as e:
        _err().print(f"[red]error ({e.status} {e.code}):[/red] {e.reason}", highlight=False)
        raise typer.Exit(1) from None


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _ago(t: float | None) -> str:
    return "-" if t is None else f"{max(0.0, time.time() - t):.0f}s ago"


def _in(t: float) -> str:
    left = t - time.time()
    return f"in {left:.0f}s" if left >= 0 else f"{-left:.0f}s ago"


@app.command()
def status(pool: PoolOpt = None, as_json: JsonOpt = False) -> None:
    """Summary of the pool: nodes, GPUs, VRAM, leases, sessions."""
    s = _call(pool, None, lambda c: c.status())
    if as_json:
        return _json(s)
    t = Table(title=f"fargpu pool ({s['store']} store)", show_header=False)
    t.add_row("nodes", f"{s['nodes_up']} up, {s['nodes_draining']} draining, {s['nodes_down']} down")
    t.add_row("GPUs", str(s["gpus"]))
    t.add_row(
        "VRAM",
        f"{format_size(s['vram_reserved_bytes'])} reserved / {format_size(s['vram_total_bytes'])} "
        f"({format_size(s['vram_used_bytes'])} in use)",
    )
    t.add_row("leases", str(s["leases_active"]))
    t.add_row("sessions", str(s["sessions"]))
    _out().print(t)


@app.command()
def nodes(pool: PoolOpt = None, as_json: JsonOpt = False) -> None:
    """Nodes with their state, VRAM booked and in use, and heartbeat age."""
    ns = _call(pool, None, lambda c: c.nodes())
    if as_json:
        return _json(ns)
    t = Table(title=f"{len(ns)} node(s)")
    for col in ("node", "state", "backend", "GPUs", "reserved / total", "in use", "sessions", "heartbeat", "endpoints"):
        t.add_column(col)
    for n in ns:
        total = sum(g["total_bytes"] for g in n["gpus"])
        used = sum(max(0, g["total_bytes"] - g["free_bytes"]) for g in n["gpus"])
        state = n["state"] + (f" ({n['state_reason']})" if n.get("state_reason") and n["state"] != "up" else "")
        t.add_row(
            n["node_id"],
            state,
            n["backend"],
            str(len(n["gpus"])),
            f"{format_size(sum(n['reserved'].values()))} / {format_size(total)}",
            format_size(used),
            str(len(n["sessions"])),
            _ago(n["last_heartbeat"]),
            " ".join(n["endpoints"]),
        )
    _out().print(t)


@app.command()
def leases(
    pool: PoolOpt = None,
    as_json: JsonOpt = False,
    include_ended: Annotated[bool, typer.Option("--all", help="also recently ended leases")] = False,
) -> None:
    """Active leases (with --all, recently ended ones and why they ended)."""
    ls = _call(pool, None, lambda c: c.leases(include_ended))
    if as_json:
        return _json(ls)
    t = Table(title=f"{len(ls)} lease(s)")
    for col in ("lease", "state", "node", "GPUs", "VRAM/GPU", "qos", "expires", "label"):
        t.add_column(col)
    for lease in ls:
        state = lease["state"] + (f": {lease['end_reason']}" if lease.get("end_reason") else "")
        t.add_row(
            lease["lease_id"],
            state,
            lease["node_id"],
            ",".join(str(a["gpu"]) for a in lease["allocs"]),
            format_size(lease["vram_bytes"]),
            lease["qos"],
            _in(lease["expires_at"]) if lease["state"] == "active" else "-",
            lease.get("label") or "",
        )
    _out().print(t)


@app.command()
def sessions(pool: PoolOpt = None, as_json: JsonOpt = False) -> None:
    """Sessions running on the nodes, as the nodes last reported them."""
    ss = _call(pool, None, lambda c: c.sessions())
    if as_json:
        return _json(ss)
    t = Table(title=f"{len(ss)} session(s)")
    for col in ("session", "lease", "node", "pid", "VRAM used", "client"):
        t.add_column(col)
    for s in ss:
        t.add_row(
            s["session_id"], s["lease_id"], s["node_id"], str(s["pid"]), format_size(s["vram_used_bytes"]), s["client"]
        )
    _out().print(t)


@app.command()
def drain(
    node: Annotated[str, typer.Argument(help="node id")],
    reason: Annotated[str | None, typer.Option(help="why (shown in the node's state)")] = None,
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop placing leases on NODE; its running sessions finish. Needs the admin token."""
    n = _call(pool, admin_token, lambda c: c.drain(node, reason))
    if as_json:
        return _json(n)
    _out().print(f"node {n['node_id']} is {n['state']}")


@app.command()
def evict(
    lease_id: Annotated[str, typer.Argument(help="lease id")],
    reason: Annotated[str | None, typer.Option(help="why (the client sees it)")] = None,
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """End lease LEASE_ID now; its sessions are closed. Needs the admin token."""
    lease = _call(pool, admin_token, lambda c: c.evict(lease_id, reason))
    if as_json:
        return _json(lease)
    _out().print(f"lease {lease['lease_id']} {lease['state']}: {lease['end_reason']}")
