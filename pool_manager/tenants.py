"""Tenants and API keys: what a key looks like, how it is stored, where clients find theirs, and the local key.

A key is "fgk_" + 256 random bits. The store keeps only its SHA-256 (`key_hash`) under a short public id
(`key_id`, shown in listings, used to revoke); the key itself is shown once, when it is created. A key with 256
bits of entropy needs no slow hash: SHA-256 cannot be reversed or guessed. Comparisons are constant-time.

Who a request is (`Principal`): a tenant key acts for its tenant only; an admin key (or the pool manager's
FARGPU_ADMIN_TOKEN, which stays valid as an admin key) acts for every tenant and for the admin endpoints.

Clients find their key (`find_api_key`) in this order: FARGPU_API_KEY; the config file
`$XDG_CONFIG_HOME/fargpu/api-key` (else `~/.config/fargpu/api-key`); the local key `<state dir>/api-key`.

The local key (zero configuration on one machine): a pool manager creates `<state dir>/api-key` once (mode
0600, in a 0700 directory, atomically, never overwritten) and registers its hash as a key of the tenant "local".
"Local" therefore means "can read a file only this Unix user can read": nothing about the network is trusted.
A request from loopback without a key is refused like any other; `fargpu run`, `fargpu pool` and the stub on the
same host succeed because they read the file. A key file that other users can read is not used by clients
(they say so), since anyone on the machine could have copied it. Nothing here logs a key."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fargpu.pool_manager.tenants")

API_KEY_ENV = "FARGPU_API_KEY"
LOCAL_TENANT = "local"
ADMIN_TENANT = "admin"  # leases created with an admin key belong to this tenant
KEY_PREFIX = "fgk_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key-" + secrets.token_hex(6)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(key_hash(key), stored_hash)


def valid_tenant_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)


@dataclass(frozen=True)
class Principal:
    """Who made a request: a tenant, or an admin (who may act for any tenant)."""

    tenant: str
    admin: bool = False
    key_id: str = ""

    def may_see(self, tenant: str) -> bool:
        return self.admin or tenant == self.tenant


def config_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fargpu" / "api-key"


def local_key_file() -> Path:
    from fargpu.pool_manager.state_paths import state_dir

    return state_dir() / "api-key"


def _read_private(path: Path) -> str | None:
    """The key in `path` if it exists, belongs to this user and only this user can read it; else None."""
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("not using the API key file %s: other users can read it (chmod 600 it)", path)
            return None
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def find_api_key(explicit: str | None = None) -> str | None:
    """The API key a client presents: `explicit`, FARGPU_API_KEY, the config file, or the local key file."""
    if explicit:
        return explicit
    env = os.environ.get(API_KEY_ENV)
    if env:
        return env.strip()
    for path in (config_key_file(), local_key_file()):
        key = _read_private(path)
        if key:
            return key
    return None


def where_keys_are_looked_for() -> str:
    return f"{API_KEY_ENV}, {config_key_file()} or {local_key_file()}"


def load_or_create_local_key(path: Path) -> str:
    """The local key in `path`, created (0600, atomically, never overwritten) if there is none."""
    existing = _read_private(path)
    if existing is not None:
        return existing
    if path.exists():
        raise PermissionError(f"the local API key file {path} is readable by other users or not yours: "
                              "remove it (a new one is made) or chmod 600 it")  # fmt: skip
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = new_api_key()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            winner = _read_private(path)
            if winner is None:
                raise PermissionError(f"the local API key file {path} is unusable: remove it") from None
            return winner
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created the local API key file %s (clients on this machine read it)", path)
    return key
