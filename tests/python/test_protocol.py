"""fargpu.protocol.wire / .handshake against the shared vectors (protocol/vectors/, the same ones
tests/c/test_protocol.c checks the C core with), plus hypothesis properties: round trips, and that no input
makes a decoder raise anything but ProtocolError."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fargpu.protocol import handshake, wire
from fargpu.protocol.generated.ops import OPS_HASH
from fargpu.protocol.wire import PROTO_VERSION, Header, ProtocolError

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
PROPS = settings(max_examples=300, deadline=None)


def load(name: str) -> list[tuple[str, bytes, str]]:
    rows = []
    for line in (VECTORS / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        vname, hexdata, expect = line.split("\t")
        rows.append((vname, bytes.fromhex(hexdata), expect))
    return rows


FRAMES = load("frames.txt")
MSGPACK = load("msgpack.txt")


def test_vectors_are_fresh() -> None:
    """The committed vectors are what make_vectors.py generates."""
    r = subprocess.run([sys.executable, str(VECTORS / "make_vectors.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- frames.txt


def parse_frame_expect(expect: str) -> dict[str, Any]:
    if expect.startswith("err"):
        rest = expect[3:].strip()
        out: dict[str, Any] = {"ok": False, "max": wire.DEFAULT_MAX_FRAME}
        if rest.startswith("max="):
            word, _, rest = rest.partition(" ")
            out["max"] = int(word[4:])
        out["reason"] = rest
        return out
    assert expect.startswith("ok ")
    out = {"ok": True, "max": wire.DEFAULT_MAX_FRAME}
    body = expect[3:]
    body, _, recerr = body.partition("recerr=")
    out["recerr"] = recerr or None
    for word in body.split():
        key, _, value = word.partition("=")
        if key == "records":
            recs = []
            for item in filter(None, value.split(",")):
                parts = item.split(":")
                args = bytes.fromhex(parts[2]) if len(parts) > 2 else None
                recs.append((int(parts[0]), int(parts[1]), args))
            out["records"] = recs
        else:
            out[key] = int(value)
    return out


@pytest.mark.parametrize("name,data,expect", FRAMES, ids=[r[0] for r in FRAMES])
def test_frame_vector(name: str, data: bytes, expect: str) -> None:
    e = parse_frame_expect(expect)
    if not e["ok"]:
        with pytest.raises(ProtocolError) as info:
            wire.decode_header(data, max_payload=e["max"])
        assert e["reason"] in str(info.value)
        return
    h = wire.decode_header(data, max_payload=e["max"])
    assert (h.type, h.flags, h.length, h.seq) == (e["type"], e["flags"], e["len"], e["seq"])
    if "records" not in e:
        return
    payload = data[wire.HEADER_SIZE :]
    assert len(payload) == h.length, "vector must hold the whole payload"
    got = []
    it = wire.iter_records(payload)
    try:
        for rec in it:
            got.append(rec)
        err = None
    except ProtocolError as exc:
        err = str(exc)
    assert [(r.op, len(r.args)) for r in got] == [(op, n) for op, n, _ in e["records"]]
    for rec, (_, _, args) in zip(got, e["records"], strict=True):
        assert rec.flags == 0
        if args is not None:
            assert rec.args == args
    if e["recerr"]:
        assert err is not None and e["recerr"] in err
    else:
        assert err is None


# ---------------------------------------------------------------- msgpack.txt


def check_value(doc: dict[Any, Any], key: str, want: str) -> None:
    if want == "absent":
        assert key not in doc
        return
    v = doc[key]
    kind, _, arg = want.partition(":")
    if kind == "int":
        assert type(v) is int and v == int(arg)
    elif kind == "str":
        assert v == arg
    elif kind == "strlen":
        assert isinstance(v, str) and len(v.encode()) == int(arg)
    elif kind == "bool":
        assert v is bool(int(arg))
    elif kind == "nil":
        assert v is None
    elif kind == "other":
        assert isinstance(v, list | dict | bytes | float | msgpack.ExtType | msgpack.Timestamp)
    else:
        raise AssertionError(want)


@pytest.mark.parametrize("name,data,expect", MSGPACK, ids=[r[0] for r in MSGPACK])
def test_msgpack_vector(name: str, data: bytes, expect: str) -> None:
    words = expect.split()
    if words[0] == "ok":
        # An independent msgpack implementation agrees with the generator's hand-made encodings...
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        assert isinstance(doc, dict)
        for w in words[1:]:
            key, _, want = w.partition("=")
            check_value(doc, key, want)
        # ...and the HELLO decoder takes well-formed maps without raising anything but ProtocolError.
        try:
            handshake.decode_hello(data)
        except ProtocolError:
            pass
    else:
        with pytest.raises(ProtocolError) as info:
            handshake.decode_hello(data)
        assert "msgpack" in str(info.value) or "map" in str(info.value)


def test_ext_values_in_hello_are_ignored() -> None:
    """SPEC: unknown keys are ignored, whatever their msgpack type (the timestamp ext included)."""
    body = {"proto": PROTO_VERSION, "ops_hash": OPS_HASH, "token": "t", "when": msgpack.Timestamp(1700000000)}
    hello = handshake.decode_hello(msgpack.packb(body))
    assert hello.token == "t"


# ---------------------------------------------------------------- properties: frames and records

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@PROPS
@given(ftype=st.integers(1, 6), flags=st.sampled_from([0, 1]), length=u32, seq=u32)
def test_header_round_trip(ftype: int, flags: int, length: int, seq: int) -> None:
    limit = wire.MAX_HELLO if ftype <= 3 else 0xFFFFFFFF
    length = min(length, limit)
    h = Header(ftype, flags, length, seq)
    data = h.encode()
    assert len(data) == wire.HEADER_SIZE
    assert wire.decode_header(data, max_payload=0xFFFFFFFF) == h


def model_header_ok(data: bytes, max_payload: int) -> bool:
    """SPEC.md's acceptance rule, written independently of wire.py."""
    if len(data) < 16:
        return False
    magic, ftype, flags, length, _ = struct.unpack_from("<IHHII", data)
    return (
        magic == 0x31504746
        and 1 <= ftype <= 8
        and flags & ~1 == 0
        and length <= max_payload
        and not (ftype <= 3 and length > 64 * 1024)
    )


header_bytes = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda t, f, n, s, tail: struct.pack("<IHHII", 0x31504746, t, f, n, s) + tail,
        st.one_of(st.integers(0, 8), u16),
        st.one_of(st.sampled_from([0, 1, 2, 3]), u16),
        st.one_of(st.integers(0, 70000), u32),
        u32,
        st.binary(max_size=8),
    ),
)


@PROPS
@given(data=header_bytes, max_payload=st.one_of(st.just(wire.DEFAULT_MAX_FRAME), u32))
def test_decode_header_only_raises_protocol_error(data: bytes, max_payload: int) -> None:
    try:
        wire.decode_header(data, max_payload=max_payload)
        accepted = True
    except ProtocolError:
        accepted = False
    assert accepted == model_header_ok(data, max_payload)


records_st = st.lists(st.tuples(u16, u16, st.binary(max_size=40)), max_size=8)


@PROPS
@given(records=records_st)
def test_records_round_trip(records: list[tuple[int, int, bytes]]) -> None:
    payload = b"".join(wire.encode_record(op, args, flags) for op, flags, args in records)
    assert len(payload) % 8 == 0
    got = [(r.op, r.flags, r.args) for r in wire.iter_records(payload)]
    assert got == records


@PROPS
@given(data=st.one_of(st.binary(max_size=200), records_st.map(
    lambda rs: b"".join(wire.encode_record(op, a, f) for op, f, a in rs))), cut=st.integers(0, 300),
    junk=st.binary(max_size=12))
def test_iter_records_only_raises_protocol_error(data: bytes, cut: int, junk: bytes) -> None:
    payload = data[:cut] + junk
    total = 0
    try:
        for rec in wire.iter_records(payload):
            total += 8 + wire.pad8(len(rec.args))
            assert total <= len(payload)
    except ProtocolError:
        return
    assert total == len(payload)


# ---------------------------------------------------------------- properties: HELLO

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), children, max_size=4),
    max_leaves=12,
)
str_keyed_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
hello_keys = st.sampled_from(["proto", "token", "ops_hash", "pid", "host", "exe", "stub", "extra"])


@PROPS
@given(doc=st.one_of(msgpack_values, st.dictionaries(hello_keys, msgpack_values, max_size=8)))
def test_decode_hello_arbitrary_msgpack(doc: Any) -> None:
    try:
        handshake.decode_hello(msgpack.packb(doc))
    except ProtocolError:
        pass


@PROPS
@given(data=st.binary(max_size=300))
def test_decode_hello_arbitrary_bytes(data: bytes) -> None:
    try:
        handshake.decode_hello(data)
    except ProtocolError:
        pass


@PROPS
@given(token=st.text(max_size=100), pid=st.integers(0, 2**31), host=st.text(max_size=30),
       exe=st.text(max_size=60), stub=st.text(max_size=10), extra=st.dictionaries(st.text(max_size=6).filter(
           lambda k: k not in ("proto", "token", "ops_hash", "pid", "host", "exe", "stub")), str_keyed_values,
           max_size=3))
def test_hello_round_trip(token: str, pid: int, host: str, exe: str, stub: str, extra: dict[str, Any]) -> None:
    body = {"proto": PROTO_VERSION, "token": token, "ops_hash": OPS_HASH, "pid": pid, "host": host, "exe": exe,
            "stub": stub}
    hello = handshake.decode_hello(msgpack.packb({**extra, **body}))
    assert (hello.token, hello.ops_hash, hello.pid, hello.host, hello.exe, hello.stub) == (
        token, OPS_HASH, pid, host, exe, stub)


def test_hello_unknown_field_with_int_keys_is_ignored() -> None:
    """SPEC: unknown keys are ignored, so their values may be any msgpack, maps with integer keys included
    (the C reader, fg_mp_lookup, skips them)."""
    body = {"proto": PROTO_VERSION, "token": "t", "ops_hash": OPS_HASH, "pid": 1, "future": {1: "x"}}
    assert handshake.decode_hello(msgpack.packb(body)).token == "t"


@pytest.mark.parametrize("proto", [True, 1.0, "1"])
def test_hello_proto_must_be_the_int_1(proto: Any) -> None:
    """SPEC: `proto` (int, 1). msgpack true and 1.0 are not the int 1 (Python: True == 1.0 == 1)."""
    body = {"proto": proto, "token": "t", "ops_hash": OPS_HASH, "pid": 1}
    with pytest.raises(ProtocolError):
        handshake.decode_hello(msgpack.packb(body))


def test_hello_pid_must_be_an_int() -> None:
    body = {"proto": PROTO_VERSION, "token": "t", "ops_hash": OPS_HASH, "pid": True}
    with pytest.raises(ProtocolError):
        handshake.decode_hello(msgpack.packb(body))


def test_server_frames_decode() -> None:
    for frame, ftype, keys in (
        (handshake.hello_ok("s1", "sim", 1 << 20), wire.FrameType.HELLO_OK,
         {"proto", "session", "backend", "max_frame"}),
        (handshake.hello_err("nope"), wire.FrameType.HELLO_ERR, {"reason"}),
        (handshake.close_frame("bye"), wire.FrameType.CLOSE, {"reason"}),
    ):
        h = wire.decode_header(frame)
        assert h.type == ftype and h.length == len(frame) - wire.HEADER_SIZE
        assert set(msgpack.unpackb(frame[wire.HEADER_SIZE :])) == keys
