"""The session handshake: the client's HELLO (msgpack: protocol version, token, ops hash, client identity)
and the server's HELLO_OK / HELLO_ERR. Validation here is structural; the token is checked by the node
agent's Authenticator and never logged."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import msgpack

from .generated.ops import OPS_HASH
from .wire import PROTO_VERSION, FrameType, ProtocolError, encode_frame

HELLO_TIMEOUT = 10.0  # a connection must complete its HELLO (and SHM) step within this; FARGPU_HELLO_TIMEOUT_S


def hello_timeout() -> float:
    try:
        return float(os.environ.get("FARGPU_HELLO_TIMEOUT_S", "") or HELLO_TIMEOUT)
    except ValueError:
        return HELLO_TIMEOUT


@dataclass(frozen=True)
class Hello:
    token: str
    ops_hash: str
    pid: int
    host: str
    exe: str
    stub: str
    attach_session: str = ""  # set on a session's callback connection (see SPEC.md, "Callbacks")
    attach_key: str = ""
    resume_session: str = ""  # set when a client resumes a parked session (see SPEC.md, "Resuming")
    resume_key: str = ""
    resume_have: int = 0  # resuming: the seq of the last reply the client read (SPEC.md, "Resuming")
    shm: int = 0  # bytes of shared memory the client offers (unix socket only; SPEC.md, "Shared memory")
    data: bool = False  # with attach_session: an extra data connection for striped bulk copies

    @property
    def client(self) -> str:
        return f"{self.host}:{self.pid}"


def decode_hello(payload: bytes) -> Hello:
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=False, max_str_len=4096, max_map_len=64)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"HELLO is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("HELLO must be a map")
    doc = {k: v for k, v in doc.items() if isinstance(k, str)}  # unknown (and non-string) keys are ignored
    proto = doc.get("proto")
    if type(proto) is not int or proto != PROTO_VERSION:
        raise ProtocolError(f"protocol version {doc.get('proto')!r} is not supported (server speaks {PROTO_VERSION})")
    ops_hash = doc.get("ops_hash")
    if ops_hash != OPS_HASH:
        raise ProtocolError(
            f"the stub's API table ({ops_hash!r}) differs from the server's ({OPS_HASH!r}): use a stub and server "
            "from the same fargpu version"
        )

    def s(key: str) -> str:
        v = doc.get(key, "")
        if not isinstance(v, str):
            raise ProtocolError(f"HELLO field {key!r} must be a string")
        return v

    pid = doc.get("pid", 0)
    if type(pid) is not int:
        raise ProtocolError("HELLO field 'pid' must be an integer")
    shm = doc.get("shm", 0)
    if type(shm) is not int or not 0 <= shm <= 1 << 40:
        raise ProtocolError("HELLO field 'shm' must be a byte count up to 1 TiB")
    have = doc.get("resume_have", 0)
    if type(have) is not int or not 0 <= have < 1 << 32:
        raise ProtocolError("HELLO field 'resume_have' must be a batch seq (u32)")
    data = doc.get("data", False)
    if type(data) not in (bool, int):
        raise ProtocolError("HELLO field 'data' must be a boolean")
    return Hello(token=s("token"), ops_hash=ops_hash, pid=pid, host=s("host"), exe=s("exe"), stub=s("stub"),
                 attach_session=s("attach_session"), attach_key=s("attach_key"),
                 resume_session=s("resume_session"), resume_key=s("resume_key"), resume_have=have, shm=shm,
                 data=bool(data))


def hello_ok(session: str, backend: str, max_frame: int, attach_key: str = "", driver_version: str = "",
             extra: dict[str, Any] | None = None, shm: bool = False) -> bytes:
    body: dict[str, Any] = {"proto": PROTO_VERSION, "session": session, "backend": backend, "max_frame": max_frame}
    body.update(extra or {})
    if shm:
        body["shm"] = True
    if attach_key:
        body["attach_key"] = attach_key
    if driver_version:
        body["driver_version"] = driver_version
    return encode_frame(FrameType.HELLO_OK, msgpack.packb(body))


def hello_err(reason: str, retry: bool = False) -> bytes:
    """A refusal; `retry` (resuming only): this node could not restore the session, its parked state is intact."""
    return encode_frame(FrameType.HELLO_ERR, msgpack.packb({"reason": reason, **({"retry": True} if retry else {})}))


def close_frame(reason: str) -> bytes:
    return encode_frame(FrameType.CLOSE, msgpack.packb({"reason": reason}))
