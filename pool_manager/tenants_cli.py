"""`fargpu pool tenants ...`, `fargpu pool keys ...` and `fargpu pool whoami`: the admin CLI for tenants and API keys.

    fargpu pool tenants list | set NAME [--vram-quota 64G] [--max-leases N] [--disable] | revoke NAME
    fargpu pool keys create TENANT [--label L] | create --admin | list | revoke KEY_ID
    fargpu pool whoami

Everything but `whoami` needs the admin token (--admin-token / FARGPU_ADMIN_TOKEN) or an admin key (FARGPU_API_KEY).
`keys create` prints the new key once (with --json, in the `key` field); the pool keeps only its hash. Give it to
the tenant, who sets FARGPU_API_KEY or writes it to the config file (`fargpu pool keys create ... --save` writes
it to this machine's config file, mode 0600). Exit codes and --json errors as in admin_cli.py."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.table import Table

from fargpu.pool_manager.admin_cli import AdminOpt, JsonOpt, PoolOpt, _call, _json, _out
from fargpu.pool_manager.admin_cli import app as pool_app
from fargpu.pool_manager.tenants import config_key_file
from fargpu.pool_manager.units import format_size

tenants_app = typer.Typer(help="Tenants and their quotas (admin).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of tenants, and admin keys (admin).", no_args_is_help=True)
pool_app.add_typer(tenants_app, name="tenants")
pool_app.add_typer(keys_app, name="keys")


def _limit(v: Any, size: bool = False) -> str:
    if v is None:
        return "no limit"
    return format_size(int(v)) if size else str(v)


def _tenant_line(t: dict[str, Any]) -> str:
    state = "disabled" if t["disabled"] else "enabled"
    return (f"tenant {t['name']} ({state}): VRAM quota {_limit(t['vram_quota_bytes'], True)}, "
            f"max leases {_limit(t['max_leases'])}")  # fmt: skip


@tenants_app.command("list")
def tenants_list(pool: PoolOpt = None, admin_token: AdminOpt = None, as_json: JsonOpt = False) -> None:
    """Tenants with their quota and what they use now."""
    ts = _call(pool, admin_token, lambda c: c.tenants(), as_json)
    if as_json:
        return _json(ts)
    t = Table(title=f"{len(ts)} tenant(s)")
    for col in ("tenant", "state", "VRAM booked / quota", "leases / max"):
        t.add_column(col)
    for x in ts:
        t.add_row(x["name"], "disabled" if x["disabled"] else "enabled",
                  f"{format_size(x['vram_booked_bytes'])} / {_limit(x['vram_quota_bytes'], True)}",
                  f"{x['leases_active']} / {_limit(x['max_leases'])}")  # fmt: skip
    _out().print(t)


@tenants_app.command("set")
def tenants_set(
    name: Annotated[str, typer.Argument(help="tenant name (letters, digits, - _ .)")],
    vram_quota: Annotated[str | None, typer.Option(help="VRAM all its leases may book, e.g. 64G [no limit]")] = None,
    max_leases: Annotated[int | None, typer.Option(min=0, help="active leases it may hold [no limit]")] = None,
    disable: Annotated[bool, typer.Option("--disable", help="refuse its keys (re-enable with set again)")] = False,
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create tenant NAME, or set its quota (a limit left out becomes no limit)."""
    t = _call(pool, admin_token, lambda c: c.put_tenant(name, vram_quota, max_leases, disable), as_json)
    if as_json:
        return _json(t)
    _out().print(_tenant_line(t), highlight=False)


@tenants_app.command("revoke")
def tenants_revoke(
    name: Annotated[str, typer.Argument(help="tenant name")],
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Disable tenant NAME, revoke its keys and evict its active leases."""
    t = _call(pool, admin_token, lambda c: c.revoke_tenant(name), as_json)
    if as_json:
        return _json(t)
    _out().print(_tenant_line(t) + "; its keys are revoked and its leases evicted", highlight=False)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Argument(help="the tenant the key acts for (leave out with --admin)")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="an admin key (acts for every tenant)")] = False,
    label: Annotated[str | None, typer.Option(help="who or what holds it (shown in listings)")] = None,
    save: Annotated[bool, typer.Option("--save", help=f"also write it to {config_key_file()} (0600)")] = False,
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key for TENANT (or an admin key). The key is printed once; the pool keeps only its hash."""
    k = _call(pool, admin_token, lambda c: c.create_key(tenant, admin=admin, label=label), as_json)
    if save:
        path = config_key_file()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(k["key"] + "\n")
        os.chmod(path, 0o600)
    if as_json:
        return _json(k)
    who = "admin key" if k["admin"] else f"key of tenant {k['tenant']}"
    saved = f", saved to {config_key_file()}" if save else ""
    _out().print(f"{who} {k['key_id']} (shown once; the pool keeps only its hash{saved}):", highlight=False)
    print(k["key"])


@keys_app.command("list")
def keys_list(pool: PoolOpt = None, admin_token: AdminOpt = None, as_json: JsonOpt = False) -> None:
    """API keys (ids, tenants, labels; never the keys)."""
    ks = _call(pool, admin_token, lambda c: c.keys(), as_json)
    if as_json:
        return _json(ks)
    t = Table(title=f"{len(ks)} key(s)")
    for col in ("key", "tenant", "admin", "state", "label"):
        t.add_column(col)
    for k in ks:
        t.add_row(k["key_id"], k["tenant"], "yes" if k["admin"] else "",
                  "revoked" if k.get("revoked_at") else "live", k.get("label") or "")  # fmt: skip
    _out().print(t)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="key id (see `fargpu pool keys list`)")],
    pool: PoolOpt = None,
    admin_token: AdminOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke API key KEY_ID: it stops working at once."""
    k = _call(pool, admin_token, lambda c: c.revoke_key(key_id), as_json)
    if as_json:
        return _json(k)
    _out().print(f"key {k['key_id']} of {k['tenant']} revoked", highlight=False)


@pool_app.command("whoami")
def whoami(pool: PoolOpt = None, as_json: JsonOpt = False) -> None:
    """Which tenant this machine's API key acts for."""
    me = _call(pool, None, lambda c: c.whoami(), as_json)
    if as_json:
        return _json(me)
    _out().print(f"tenant {me['tenant']}{' (admin)' if me['admin'] else ''}, key {me['key_id']}", highlight=False)
