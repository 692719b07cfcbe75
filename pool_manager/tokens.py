"""Lease tokens and lease ids.

A token is 256 random bits, shown to the client once. The pool stores only its SHA-256; nodes validate a token
by sending its hash, never the token. Comparisons of secrets use `hmac.compare_digest`. Nothing here logs."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    return "fgt_" + secrets.token_urlsafe(32)


def new_lease_id() -> str:
    return "lease-" + secrets.token_hex(8)


def token_hash(token: str) -> str:
    """Hex SHA-256 of the token (what the store keeps and indexes by)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    return hmac.compare_digest(token_hash(token), stored_hash)


def secret_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (e.g. the admin token)."""
    return hmac.compare_digest(presented.encode(), expected.encode())
