"""The pool's errors. Each maps to one HTTP status and a stable machine-readable code; the message is the
human-readable reason that the REST layer returns as `{"error": code, "reason": message}`."""

from __future__ import annotations


class PoolError(Exception):
    status = 500
    code = "internal"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(PoolError):
    status = 400
    code = "bad_request"


class Unauthorized(PoolError):
    status = 401
    code = "unauthorized"


class Forbidden(PoolError):
    status = 403
    code = "forbidden"


class QuotaExceeded(PoolError):
    """The tenant's own quota (VRAM or active leases) has no room for the request."""

    status = 403
    code = "quota_exceeded"


class StoreUnavailable(PoolError):
    """The pool's state store cannot be reached; nothing was changed."""

    status = 503
    code = "store_unavailable"


class NotFound(PoolError):
    status = 404
    code = "not_found"


class Conflict(PoolError):
    status = 409
    code = "conflict"


class NoCapacity(PoolError):
    """No node can hold the request now; `retry_after_s` is the pool's estimate of when to try again."""

    status = 503
    code = "no_capacity"

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
