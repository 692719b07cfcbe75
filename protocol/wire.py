"""Frame header and record codec (the Python twin of protocol/c/fg_wire.c).

The node agent uses it for the handshake frames; tests use it to build and check batches. Decoding never
trusts a length: every read is bounds-checked and errors raise ProtocolError with the reason."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

MAGIC = 0x31504746
PROTO_VERSION = 3
HEADER = struct.Struct("<IHHII")
HEADER_SIZE = HEADER.size
RECORD = struct.Struct("<HHI")
MAX_HELLO = 64 * 1024
DEFAULT_MAX_FRAME = 80 * 1024 * 1024
CHUNK = 32 * 1024 * 1024
FLAG_WANT_REPLY = 1
REPLY_FIXED = struct.Struct("<IIIIQ")


class FrameType(IntEnum):
    HELLO = 1
    HELLO_OK = 2
    HELLO_ERR = 3
    BATCH = 4
    REPLY = 5
    CLOSE = 6
    OUTPUT = 7
    SHM = 8


class ProtocolError(Exception):
    """Malformed or unacceptable input; the message is the reason sent to / logged for the peer."""


@dataclass(frozen=True)
class Header:
    type: int
    flags: int
    length: int
    seq: int = 0

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, self.type, self.flags, self.length, self.seq)


def decode_header(data: bytes | memoryview, max_payload: int = DEFAULT_MAX_FRAME) -> Header:
    if len(data) < HEADER_SIZE:
        raise ProtocolError("truncated frame header")
    magic, ftype, flags, length, seq = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("bad magic (not a fargpu peer, or the stream lost sync)")
    if not FrameType.HELLO <= ftype <= FrameType.SHM:
        raise ProtocolError("unknown frame type")
    if length > max_payload:
        raise ProtocolError("frame larger than the negotiated limit")
    if ftype in (FrameType.HELLO, FrameType.HELLO_OK, FrameType.HELLO_ERR) and length > MAX_HELLO:
        raise ProtocolError("handshake frame too large")
    if flags & ~FLAG_WANT_REPLY:
        raise ProtocolError("unknown frame flags")
    return Header(ftype, flags, length, seq)


@dataclass(frozen=True)
class Record:
    op: int
    flags: int
    args: bytes


def pad8(n: int) -> int:
    return (n + 7) & ~7


def encode_record(op: int, args: bytes, flags: int = 0) -> bytes:
    return RECORD.pack(op, flags, len(args)) + args + b"\0" * (pad8(len(args)) - len(args))


def iter_records(payload: bytes | memoryview) -> Iterator[Record]:
    view = memoryview(payload)
    pos = 0
    while pos < len(view):
        if len(view) - pos < RECORD.size:
            raise ProtocolError("truncated record header")
        op, flags, length = RECORD.unpack_from(view, pos)
        pos += RECORD.size
        if pad8(length) > len(view) - pos:
            raise ProtocolError("record longer than its frame")
        yield Record(op, flags, bytes(view[pos : pos + length]))
        pos += pad8(length)


def encode_frame(ftype: int, payload: bytes, flags: int = 0, seq: int = 0) -> bytes:
    return Header(ftype, flags, len(payload), seq).encode() + payload
