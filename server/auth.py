"""Connection authentication for the node server.

A client's HELLO carries a token. An Authenticator turns it into a Grant (what the session may use) or refuses
it with a reason. The static authenticator serves a configured token (single-user setups and tests); the pool
manager's lease-token authenticator lives in `pool_link.py`. Tokens are never logged."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol


class AuthError(Exception):
    """The token was refused; the message is safe to show the client (it never contains the token)."""


@dataclass(frozen=True)
class Grant:
    lease_id: str
    vram_quota_bytes: int | None = None  # None: no quota beyond the device's memory
    expires_at: float | None = None  # unix time; None: no expiry
    max_sessions: int | None = None  # sessions the lease may hold open at once; None: no limit
    qos: str | None = None  # guaranteed (never paged) | standard | best_effort (gives way first); None: standard
    idle_timeout_s: float | None = None  # idle seconds before the node pages a session out (0: never); None: node's
    gpus: tuple[int, ...] = ()  # the node's GPU indices the lease was placed on, in lease order; (): all of them
    vram_per_gpu_bytes: int | None = None  # with gpus: the quota on each (the per-GPU ledger, ledger.c)


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Grant: ...


class StaticTokenAuth:
    """Accepts exactly one configured token (compared in constant time)."""

    def __init__(self, token: str, vram_quota_bytes: int | None = None) -> None:
        if not token:
            raise ValueError("a static token must not be empty")
        self._token = token.encode()
        self._quota = vram_quota_bytes

    async def authenticate(self, token: str) -> Grant:
        if not hmac.compare_digest(token.encode(), self._token):
            raise AuthError("invalid token")
        return Grant(lease_id="static", vram_quota_bytes=self._quota)
