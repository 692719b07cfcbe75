"""`fargpu pool ...`: the operators' view of the pool (status, nodes, leases, sessions with their paging state)
and its levers (drain or undrain a node, evict a lease, page a session out or in). Every command takes --json for
scripts; tables otherwise. Exit codes: 0 done, 1 the pool refused (the reason is printed, in one line), 2 the pool
manager could not be reached. Under --json every error prints as JSON too (on stdout:
`{"error": code, "reason": text, ...}`), so a script reads one document whatever happens.

Every command presents an API key (FARGPU_API_KEY, the config file, or this machine's local key: see tenants.py);
a tenant's key shows that tenant's leases and sessions only. Admin commands (drain, undrain, evict, page-out,
page-in, and tenants/keys in tenants_cli.py) need the pool manager's admin token: start the pool manager with
FARGPU_ADMIN_TOKEN set and pass the same value with --admin-token or FARGPU_ADMIN_TOKEN here (or an admin key).

page-out and page-in queue a command for the session's node and return; with --wait S they poll the sessions
listing until the node reports that command's outcome (or S seconds pass), then print the session. They succeed
when the session ends up where it was asked to go (paged out, or resident), even if it got there by itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from fargpu.pool_manager.client import PoolApiError, PoolClient, PoolUnreachable, default_pool_url
from fargpu.pool_manager.models import PageTarget
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
    return Console(stderr=True, soft_wrap=True)  # errors stay on one line


def _admin_hint(e: PoolApiError) -> str:
    """What to do about a refused admin call, in a few words (empty for other errors)."""
    if e.status == 401:
        return (" - pass the pool manager's admin token: --admin-token TOKEN or FARGPU_ADMIN_TOKEN=TOKEN (the pool "
                "manager must be started with FARGPU_ADMIN_TOKEN set)")
    if e.status == 403:
        return (" - the admin token must equal FARGPU_ADMIN_TOKEN (or --admin-token) of the pool manager; without "
                "one set there, start it with FARGPU_ADMIN_TOKEN=TOKEN")
    return ""


def _fail(as_json: bool, rc: int, error: dict[str, Any], text: str) -> NoReturn:
    """One error: a JSON document on stdout under --json, else one red line on stderr; then exit `rc`."""
    if as_json:
        _json(error)
    else:
        _err().print(f"[red]error{text}", highlight=False)
    raise typer.Exit(rc)


def _call(
    pool: str | None, admin_token: str | None, fn: Callable[[PoolClient], Awaitable[T]], as_json: bool = False
) -> T:
    async def go() -> T:
        async with PoolClient(pool or default_pool_url(), admin_token=admin_token) as client:
            return await fn(client)

    try:
        return asyncio.run(go())
    except PoolUnreachable as e:
        _fail(as_json, 2, {"error": "unreachable", "reason": str(e)}, f":[/red] {e}")
    except PoolApiError as e:
        reason = e.reason + _admin_hint(e)
        _fail(as_json, 1, {"error": e.code, "status": e.status, "reason": reason},
              f" ({e.status} {e.code}):[/red] {reason}")  # fmt: skip


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _ago(t: float | None) -> str:
    return "-" if t is None else f"{max(0.0, time.time() - t):.0f}s ago"


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _idle_policy(lease: dict[str, Any]) -> str:
    """When the lease's sessions are paged out for idleness."""
    idle = lease.get("idle_timeout_s")
    if lease["qos"] == "guaranteed" or idle == 0:
        return "never"
    return "pool default" if idle is None else f"after {_duration(idle)}"


def _in(t: float) -> str:
    left = t - time.time()
    return f"in {left:.0f}s" if left >= 0 else f"{-left:.0f}s ago"


@app.command()
def status(pool: PoolOpt = None, as_json: JsonOpt = False) -> None:
    """Summary of the pool: nodes, GPUs, VRAM, leases, sessions."""
    s = _call(pool, None, lambda c: c.status(), as_json)
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
    """Nodes with their state, VRAM booked and in use, and heartbeat age; with a node provider, its view too
    (starting nodes that have not registered yet, nodes being stopped)."""
    ns = _call(pool, None, lambda c: c.nodes(), as_json)
    scaling = _call(pool, None, lambda c: c.scaling(), as_json)
    by_id = {p["node_id"]: p for p in scaling.get("nodes", []) if p.get("node_id")}
    for n in ns:
        n["provider_state"] = by_id[n["node_id"]]["provider_state"] if n["node_id"] in by_id else None
    if as_json:
        return _json(ns)
    pending = [p for p in scaling.get("nodes", []) if p.get("node_id") not in {n["node_id"] for n in ns}]
    t = Table(title=f"{len(ns)} node(s)" + (f", {len(pending)} more starting or stopping" if pending else ""))
    cols = ("node", "state", "provider", "backend", "GPU count", "reserved / total", "overcommit", "in use", "paged",
            "sessions",
            "heartbeat", "endpoints")  # fmt: skip
    for col in cols:
        t.add_column(col)
    for n in ns:
        total = sum(g["total_bytes"] for g in n["gpus"])
        used = sum(max(0, g["total_bytes"] - g["free_bytes"]) for g in n["gpus"])
        state = n["state"] + (f" ({n['state_reason']})" if n.get("state_reason") and n["state"] != "up" else "")
        t.add_row(
            n["node_id"],
            state,
            n["provider_state"] or "-",
            n["backend"],
            str(len(n["gpus"])),
            f"{format_size(sum(n['reserved'].values()))} / {format_size(total)}",
            f"x{n['overcommit']:g}" if n.get("overcommit") else "pool's",
            format_size(used),
            format_size(sum(x.get("paged_bytes", 0) for x in n["sessions"])),
            str(len(n["sessions"])),
            _ago(n["last_heartbeat"]),
            " ".join(n["endpoints"]),
        )
    for p in pending:
        t.add_row(p["node_id"] or "(not named yet)", "-", p["provider_state"], *["-"] * 8, p.get("detail", ""))
    _out().print(t)


@app.command()
def leases(
    pool: PoolOpt = None,
    as_json: JsonOpt = False,
    include_ended: Annotated[bool, typer.Option("--all", help="also recently ended leases")] = False,
) -> None:
    """Active leases (with --all, recently ended ones and why they ended)."""
    ls = _call(pool, None, lambda c: c.leases(include_ended), as_json)
    if as_json:
        return _json(ls)
    t = Table(title=f"{len(ls)} lease(s)")
    for col in ("lease", "tenant", "state", "node", "GPU index", "VRAM/GPU", "qos", "idle page-out", "expires",
                "label"):  # fmt: skip
        t.add_column(col)
    for lease in ls:
        state = lease["state"] + (f": {lease['end_reason']}" if lease.get("end_reason") else "")
        t.add_row(
            lease["lease_id"],
            lease.get("tenant") or "-",
            state,
            lease["node_id"],
            ",".join(str(a["gpu"]) for a in lease["allocs"]),
            format_size(lease["vram_bytes"]),
            lease["qos"],
            _idle_policy(lease),
            _in(lease["expires_at"]) if lease["state"] == "active" else "-",
            lease.get("label") or "",
        )
    _out().print(t)


@app.command()
def sessions(pool: PoolOpt = None, as_json: JsonOpt = False) -> None:
    """Sessions running on the nodes, as the nodes last reported them."""
    ss = _call(pool, None, lambda c: c.sessions(), as_json)
    if as_json:
        return _json(ss)
    t = Table(title=f"{len(ss)} session(s)")
    for col in ("session", "lease", "node", "state", "resident", "paged", "idle", "VRAM used", "pid", "client"):
        t.add_column(col)
    for s in ss:
        t.add_row(
            s["session_id"],
            s["lease_id"],
            s["node_id"],
            s.get("state", "resident"),
            format_size(s.get("resident_bytes", 0)),
            format_size(s.get("paged_bytes", 0)),
            _duration(s.get("idle_s", 0.0)),
            format_size(s["vram_used_bytes"]),
            str(s["pid"]),
            s["client"],
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
    n = _call(pool, admin_token, lambda c: c.drain(node, reason), as_json)
    if as_json:
        return _json(n)
    _out().print(f"node {n['node_id']} is {n['state']}")


@app.command()
def undrain(
    node: Annotated[str, typer.Argument(help="node id")],
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Place leases on NODE again after a drain. Needs the admin token."""
    n = _call(pool, admin_token, lambda c: c.undrain(node), as_json)
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
    lease = _call(pool, admin_token, lambda c: c.evict(lease_id, reason), as_json)
    if as_json:
        return _json(lease)
    _out().print(f"lease {lease['lease_id']} {lease['state']}: {lease['end_reason']}")


# --- paging ----------------------------------------------------------------------------------------------------
_GOAL = {"page-out": ("paged-host", "paged-disk"), "page-in": ("resident",)}


class _PageFailed(Exception):
    def __init__(self, code: str, reason: str, session: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.session = session


async def _page_and_wait(
    client: PoolClient, action: str, session_id: str, to: str | None, wait_s: float
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Queues the command; with `wait_s` > 0, polls /v1/sessions until the node reports its outcome."""
    accepted = await (client.page_out(session_id, to) if action == "page-out" else client.page_in(session_id))
    if wait_s <= 0:
        return accepted, None
    deadline = time.monotonic() + wait_s
    last: dict[str, Any] | None = None
    while True:
        last = next((x for x in await client.sessions() if x["session_id"] == session_id), None)
        if last is None:
            raise _PageFailed("session_gone", f"session {session_id} is no longer reported by any node")
        if last.get("page_command_id") == accepted["command_id"]:
            if last.get("state") in _GOAL[action]:
                return accepted, last
            why = str(last.get("page_result") or "").removeprefix("failed ")
            raise _PageFailed("page_failed", f"{action} of session {session_id}: {why}", last)
        if time.monotonic() >= deadline:
            raise _PageFailed(
                "timeout",
                f"{action} of session {session_id}: the node did not report the outcome within {wait_s:g}s "
                f"(the session is {last.get('state', 'resident')})",
                last,
            )
        await asyncio.sleep(0.2)


def _page_command(action: str, session_id: str, to: str | None, wait_s: float, pool: str | None,
                  admin_token: str | None, as_json: bool) -> None:  # fmt: skip
    def fail(rc: int, error: dict[str, Any], text: str) -> None:
        _fail(as_json, rc, error, text)

    async def go() -> tuple[dict[str, Any], dict[str, Any] | None]:
        async with PoolClient(pool or default_pool_url(), admin_token=admin_token) as client:
            return await _page_and_wait(client, action, session_id, to, wait_s)

    try:
        if wait_s > 0 and not as_json:  # progress while the node pages (a spinner on a terminal only)
            with _err().status(f"{action} of session {session_id}: waiting up to {wait_s:g}s for the node"):
                accepted, session = asyncio.run(go())
        else:
            accepted, session = asyncio.run(go())
    except PoolUnreachable as e:
        return fail(2, {"error": "unreachable", "reason": str(e)}, f":[/red] {e}")
    except PoolApiError as e:
        reason = e.reason + _admin_hint(e)
        body = {"error": e.code, "status": e.status, "reason": reason}
        return fail(1, body, f" ({e.status} {e.code}):[/red] {reason}")
    except _PageFailed as e:
        return fail(1, {"error": e.code, "reason": e.reason, "session": e.session}, f":[/red] {e.reason}")
    if session is None:
        if as_json:
            return _json(accepted)
        where = f" to {accepted['to']}" if accepted.get("to") else ""
        _out().print(
            f"{action}{where} of session {session_id} queued for node {accepted['node_id']} "
            f"(command {accepted['command_id']}); watch it with `fargpu pool sessions`",
            highlight=False,
        )
        return
    if as_json:
        return _json(session)
    _out().print(
        f"session {session_id} on node {session['node_id']}: {session['state']} "
        f"(resident {format_size(session['resident_bytes'])}, paged {format_size(session['paged_bytes'])}): "
        f"{session.get('page_result') or ''}",
        highlight=False,
    )


WaitOpt = Annotated[
    float,
    typer.Option("--wait", min=0, help="wait up to this many seconds for the node to report the outcome (0: don't)"),
]


@app.command("page-out")
def page_out(
    session_id: Annotated[str, typer.Argument(metavar="SESSION", help="session id (see `fargpu pool sessions`)")],
    to: Annotated[
        PageTarget, typer.Option("--to", help="host: the node's page pool; disk: a spill file; auto: host, then disk; "
                                "deep: auto, then the driver's process checkpoint frees the context too")
    ] = PageTarget.auto,
    wait: WaitOpt = 0.0,
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Page SESSION's device memory out of the GPU; it stays open and pages back in on its next call. Needs the
    admin token."""
    _page_command("page-out", session_id, to.value, wait, pool, admin_token, as_json)


@app.command("page-in")
def page_in(
    session_id: Annotated[str, typer.Argument(metavar="SESSION", help="session id (see `fargpu pool sessions`)")],
    wait: WaitOpt = 0.0,
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Page SESSION's memory back onto the GPU now, ahead of its next call. Needs the admin token."""
    _page_command("page-in", session_id, None, wait, pool, admin_token, as_json)
