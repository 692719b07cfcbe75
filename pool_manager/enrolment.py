"""Node identity: the enrolment token (a bootstrap secret), per-node credentials, and how a call carries them.

A node proves who it is in two steps. It calls `Enrol` once with the pool's enrolment token and gets a
credential of its own ("fgn_..."); the pool keeps only the credential's SHA-256, under the node id. Every other
node call carries gRPC metadata `x-fargpu-node: <node id>` and `authorization: Bearer <credential>`, checked by
`grpc_service.NodeRegistryService.authenticate` (the one place that decides who a caller is; mTLS can later
supply the identity there from the peer certificate instead).

The enrolment token comes from `--enrol-token` / FARGPU_ENROL_TOKEN, else from the file `enrol-token` in the
state directory (`config.enrol_token_file()`). A pool manager creates that file once, mode 0600, and never
overwrites it: the secret is written to a private temporary file which is then hard-linked into place, an
atomic create-if-absent (like O_EXCL, but the file never appears half-written). So two pool managers on one
machine share one token, and a node server on the machine finds it without being told. Nodes only read it.

Comparisons of secrets are constant-time (`hmac.compare_digest`); nothing here logs a secret."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("fargpu.pool_manager.enrolment")

NODE_ID_METADATA = "x-fargpu-node"  # gRPC metadata keys are lower case
AUTHORIZATION_METADATA = "authorization"
BEARER = "Bearer "
ENROL_TOKEN_ENV = "FARGPU_ENROL_TOKEN"


class EnrolTokenFileError(RuntimeError):
    """The enrolment token file exists but holds no token."""


def new_enrol_token() -> str:
    return "fge_" + secrets.token_urlsafe(32)


def new_node_credential() -> str:
    return "fgn_" + secrets.token_urlsafe(32)


def credential_hash(credential: str) -> str:
    """Hex SHA-256 of a node credential (what the store keeps)."""
    return hashlib.sha256(credential.encode()).hexdigest()


def credential_matches(credential: str, stored_hash: str) -> bool:
    return hmac.compare_digest(credential_hash(credential), stored_hash)


def enrol_token_matches(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())


def node_metadata(node_id: str, credential: str) -> tuple[tuple[str, str], ...]:
    """The metadata a node sends with every call after enrolment."""
    return ((NODE_ID_METADATA, node_id), (AUTHORIZATION_METADATA, BEARER + credential))


def parse_node_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, str]:
    """(node id, credential) from a call's metadata; empty strings where missing or malformed."""
    node_id = credential = ""
    for key, value in metadata or ():
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if key == NODE_ID_METADATA and not node_id:
            node_id = text
        elif key == AUTHORIZATION_METADATA and not credential and text.startswith(BEARER):
            credential = text[len(BEARER) :].strip()
    return node_id, credential


def read_enrol_token(path: Path) -> str | None:
    """The token in `path`, or None when it is missing, unreadable or empty."""
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def load_or_create_enrol_token(path: Path) -> str:
    """The enrolment token in `path`, creating the file (0600) with a new random token if there is none."""
    existing = read_enrol_token(path)
    if existing is not None:
        _warn_if_exposed(path)
        return existing
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = new_enrol_token()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the file exists: whoever linked first wins, nobody overwrites
        except FileExistsError:
            winner = read_enrol_token(path)
            if winner is None:
                raise EnrolTokenFileError(
                    f"the enrolment token file {path} exists but is empty or unreadable: "
                    "put a token in it or remove it (a new one is then made)"
                ) from None
            return winner
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created the enrolment token file %s (node servers on this machine read it)", path)
    return token


def _warn_if_exposed(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the enrolment token file %s is open to other users (mode %o): chmod 600 it", path, mode & 0o777)
