#!/usr/bin/env python3
"""Generate the shared protocol test vectors (frames.txt, msgpack.txt) from protocol/SPEC.md.

Run from anywhere:  python protocol/vectors/make_vectors.py   (writes next to this file; --check compares)

Every expectation below is derived from the construction itself (the spec's layout and rules, and the msgpack
format specification), never by running fargpu's decoders: this script packs bytes with `struct` and a tiny
msgpack encoder of its own, so a bug in protocol/wire.py or protocol/c/ cannot leak into the expectations.
Both protocol/c (tests/c/test_protocol.c) and protocol/wire.py + handshake.py (tests/python/test_protocol.py)
are checked against the output.

frames.txt — one vector a line, `name<TAB>hex<TAB>expect`:
  hex     the bytes a receiver gets: a 16-byte frame header, then (optionally) payload
  expect  `ok key=value ...` or `err [reason substring]` (no substring: any rejection is right)
    ok keys: type= flags= len= seq= (the decoded header), optional
      max=N       decode with max_payload N instead of the default 80 MiB (err vectors may carry it too,
                  as the first word after `err`, e.g. `err max=4096 negotiated limit`)
      records=    the BATCH records the iterator yields, comma separated `op:arglen[:argshex]`
                  (present only when the hex holds the whole payload: len(hex)/2 == 16 + len)
      recerr=     the iterator stops with this reason after yielding `records` (rest of the line)
  A header-only `ok` vector (no records=) checks the header decoder alone.
  A vector shorter than 16 bytes is a truncated header: the Python decoder rejects it; the C decoder takes
  exactly 16 bytes, so its caller never calls it with less.

msgpack.txt — `name<TAB>hex<TAB>expect` where hex is a HELLO-style payload (top-level msgpack map):
  ok key=TYPE[:VALUE] ...  TYPE: int:N | str:TEXT | strlen:N (a str of N bytes) | bool:0/1 | nil | other
                           (map, array, bin, float, ext) | absent (key not in the map)
  err [KEY ...]            the payload is not one well-formed msgpack map: every lookup fails, of the KEYs
                           listed (present in the well-formed part) and of an absent key alike
Nesting: the spec's payloads are flat maps; receivers may bound nesting, so the vectors use nesting of 4
(must be accepted) and 2000 (must be rejected) and nothing in between.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---- constants, transcribed from protocol/SPEC.md ----
MAGIC = 0x31504746  # "FGP1" in memory order
HELLO, HELLO_OK, HELLO_ERR, BATCH, REPLY, CLOSE, OUTPUT, SHM = 1, 2, 3, 4, 5, 6, 7, 8
WANT_REPLY = 1
MAX_HELLO = 64 * 1024
DEFAULT_MAX = 80 * 1024 * 1024
OP_SET_CTX, OP_PING, OP_MEMALLOC = 1, 2, 49

R_MAGIC = "bad magic"
R_TYPE = "unknown frame type"
R_FLAGS = "unknown frame flags"
R_LIMIT = "frame larger than the negotiated limit"
R_HANDSHAKE = "handshake frame too large"
R_TRUNC_HDR = "truncated frame header"
R_REC_HDR = "truncated record header"
R_REC_LONG = "record longer than its frame"


def header(ftype: int, flags: int, length: int, seq: int = 0, magic: int = MAGIC) -> bytes:
    return struct.pack("<IHHII", magic, ftype, flags, length, seq)


def record(op: int, args: bytes, flags: int = 0, declared: int | None = None, pad: bool = True) -> bytes:
    n = len(args) if declared is None else declared
    body = args + (b"\0" * (-len(args) % 8) if pad else b"")
    return struct.pack("<HHI", op, flags, n) + body


def frames() -> list[tuple[str, bytes, str]]:
    v: list[tuple[str, bytes, str]] = []

    def ok_hdr(name: str, ftype: int, flags: int, length: int, seq: int = 0, max_: int | None = None) -> None:
        extra = f" max={max_}" if max_ is not None else ""
        exp = f"ok type={ftype} flags={flags} len={length} seq={seq}{extra}"
        v.append((name, header(ftype, flags, length, seq), exp))

    def err(name: str, data: bytes, reason: str = "", max_: int | None = None) -> None:
        words = ["err"] + ([f"max={max_}"] if max_ is not None else []) + ([reason] if reason else [])
        v.append((name, data, " ".join(words)))

    def batch(name: str, recs: list[tuple[int, bytes]], flags: int = 0, seq: int = 1,
              raw: bytes | None = None, yielded: list[tuple[int, bytes]] | None = None, recerr: str = "") -> None:
        payload = raw if raw is not None else b"".join(record(op, a) for op, a in recs)
        got = recs if yielded is None else yielded
        rs = ",".join(f"{op}:{len(a)}" + (f":{a.hex()}" if a else "") for op, a in got)
        exp = f"ok type={BATCH} flags={flags} len={len(payload)} seq={seq} records={rs}"
        if recerr:
            exp += f" recerr={recerr}"
        v.append((name, header(BATCH, flags, len(payload), seq) + payload, exp))

    # -- valid headers: every type, boundary lengths, seq range
    for t in (HELLO, HELLO_OK, HELLO_ERR, BATCH, REPLY, CLOSE, OUTPUT, SHM):
        ok_hdr(f"type_{t}_empty", t, 0, 0, 0)
    ok_hdr("batch_want_reply_hdr", BATCH, WANT_REPLY, 24, 7)
    ok_hdr("seq_max", REPLY, 0, 8, 0xFFFFFFFF)
    for t in (HELLO, HELLO_OK, HELLO_ERR):
        ok_hdr(f"handshake_{t}_at_limit", t, 0, MAX_HELLO, 0)
    for t in (BATCH, REPLY, CLOSE, OUTPUT, SHM):  # only HELLO/HELLO_OK/HELLO_ERR are handshake frames
        ok_hdr(f"nonhandshake_{t}_over_64k", t, 0, MAX_HELLO + 1, 3)
    ok_hdr("batch_at_default_max", BATCH, 0, DEFAULT_MAX, 9)
    ok_hdr("batch_at_custom_max", BATCH, 0, 4096, 9, max_=4096)
    ok_hdr("hello_at_limit_big_max", HELLO, 0, MAX_HELLO, 0, max_=0xFFFFFFFF)

    # -- rejections (one fault each, so the reason is unambiguous)
    err("truncated_header_15", header(BATCH, 0, 0)[:15], R_TRUNC_HDR)
    err("truncated_header_0", b"", R_TRUNC_HDR)
    err("bad_magic_fgp2", header(BATCH, 0, 0, magic=0x32504746), R_MAGIC)
    err("bad_magic_zero", header(BATCH, 0, 0, magic=0), R_MAGIC)
    err("bad_magic_big_endian", header(BATCH, 0, 0, magic=0x46475031), R_MAGIC)
    err("bad_magic_all_ones", header(BATCH, 0, 0, magic=0xFFFFFFFF), R_MAGIC)
    err("http_request", b"GET / HTTP/1.1\r\nHo", R_MAGIC)
    for t in (0, 9, 0x100, 0xFFFF):
        err(f"unknown_type_{t}", header(t, 0, 0), R_TYPE)
    for f in (2, 3, 4, 0x100, 0x8000, 0xFFFF):
        err(f"unknown_flags_{f}", header(BATCH, f, 0, 1), R_FLAGS)
    err("unknown_flags_on_hello", header(HELLO, 2, 0), R_FLAGS)
    err("oversize_default_plus_1", header(BATCH, 0, DEFAULT_MAX + 1), R_LIMIT)
    err("oversize_u32_max", header(BATCH, 0, 0xFFFFFFFF), R_LIMIT)
    err("oversize_custom_max", header(BATCH, 0, 4097), R_LIMIT, max_=4096)
    err("oversize_zero_max", header(REPLY, 0, 1), R_LIMIT, max_=0)
    for t in (HELLO, HELLO_OK, HELLO_ERR):
        err(f"handshake_{t}_too_large", header(t, 0, MAX_HELLO + 1), R_HANDSHAKE)
    err("handshake_too_large_big_max", header(HELLO, 0, 1 << 20), R_HANDSHAKE, max_=0xFFFFFFFF)
    # several faults at once: any rejection is right (the spec does not order the checks)
    err("multi_magic_type", header(9, 0, 0, magic=0), "")
    err("multi_type_flags_len", header(9, 6, 0xFFFFFFFF), "")
    err("multi_hello_flags_size", header(HELLO, 4, MAX_HELLO + 1), "")

    # -- record iteration
    ctx = struct.pack("<Q", 0x0100ABCD00000001)
    size = struct.pack("<Q", 1 << 20)
    batch("batch_empty", [])
    batch("batch_ping_sync", [(OP_PING, b"")], flags=WANT_REPLY, seq=7)
    batch("batch_setctx_alloc", [(OP_SET_CTX, ctx), (OP_MEMALLOC, size)], flags=WANT_REPLY, seq=8)
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17):
        batch(f"padding_{n}", [(16, bytes(range(1, n + 1))), (OP_PING, b"")], flags=WANT_REPLY)
    batch("many_records", [(op, bytes([op]) * (op % 11)) for op in range(1, 40)])
    batch("op_and_flags_are_opaque_to_iterator", [(0xFFFF, b"\xaa"), (0, b"")])
    # malformed record streams
    batch("rec_trunc_header_4", [], raw=b"\x02\x00\x00\x00", yielded=[], recerr=R_REC_HDR)
    batch("rec_trunc_header_7", [], raw=record(OP_PING, b"")[:7], yielded=[], recerr=R_REC_HDR)
    batch("rec_trunc_header_after_one", [], raw=record(OP_SET_CTX, ctx) + b"\x02\x00\x00",
          yielded=[(OP_SET_CTX, ctx)], recerr=R_REC_HDR)
    batch("rec_longer_than_frame", [], raw=record(16, b"\x01" * 8, declared=16), yielded=[], recerr=R_REC_LONG)
    batch("rec_len_u32_max", [], raw=record(16, b"", declared=0xFFFFFFFF), yielded=[], recerr=R_REC_LONG)
    batch("rec_len_u32_max_minus_7", [], raw=record(16, b"\0" * 8, declared=0xFFFFFFF9), yielded=[],
          recerr=R_REC_LONG)
    batch("rec_missing_padding", [], raw=record(16, b"\x01\x02\x03\x04\x05", pad=False), yielded=[],
          recerr=R_REC_LONG)
    batch("rec_missing_padding_after_one", [],
          raw=record(OP_PING, b"") + record(16, b"\x01" * 9, pad=False) + b"\0" * 6,
          yielded=[(OP_PING, b"")], recerr=R_REC_LONG)
    batch("rec_second_too_long", [], raw=record(OP_SET_CTX, ctx) + record(16, b"\x01" * 8, declared=24),
          yielded=[(OP_SET_CTX, ctx)], recerr=R_REC_LONG)
    return v


# ---- a minimal msgpack encoder (format spec: github.com/msgpack/msgpack/blob/master/spec.md) ----
def mp_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 256:
        return b"\xd9" + bytes([n]) + b
    if n < 65536:
        return b"\xda" + struct.pack(">H", n) + b
    return b"\xdb" + struct.pack(">I", n) + b


def mp_int(v: int, form: str = "") -> bytes:
    if form == "":
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        form = "d3"
    fmt = {"cc": ">B", "cd": ">H", "ce": ">I", "cf": ">Q", "d0": ">b", "d1": ">h", "d2": ">i", "d3": ">q"}[form]
    return bytes.fromhex(form) + struct.pack(fmt, v)


def mp_map(items: list[tuple[bytes, bytes]], form: str = "") -> bytes:
    n = len(items)
    if form == "de":
        h = b"\xde" + struct.pack(">H", n)
    elif form == "df":
        h = b"\xdf" + struct.pack(">I", n)
    else:
        assert n < 16
        h = bytes([0x80 | n])
    return h + b"".join(k + v for k, v in items)


def mp_arr(items: list[bytes]) -> bytes:
    assert len(items) < 16
    return bytes([0x90 | len(items)]) + b"".join(items)


NIL, FALSE, TRUE = b"\xc0", b"\xc2", b"\xc3"


def msgpack_vectors() -> list[tuple[str, bytes, str]]:
    v: list[tuple[str, bytes, str]] = []
    hello = [
        (mp_str("proto"), mp_int(1)),
        (mp_str("token"), mp_str("t0k3n")),
        (mp_str("ops_hash"), mp_str("6f6934637f666a20")),
        (mp_str("pid"), mp_int(4242, "cd")),
        (mp_str("host"), mp_str("client-1")),
        (mp_str("exe"), mp_str("/usr/bin/python3")),
        (mp_str("stub"), mp_str("0.1.0")),
    ]
    v.append(("hello_fixmap", mp_map(hello),
              "ok proto=int:1 token=str:t0k3n ops_hash=str:6f6934637f666a20 pid=int:4242 host=str:client-1 "
              "exe=str:/usr/bin/python3 stub=str:0.1.0 missing=absent"))
    v.append(("hello_map16", mp_map(hello, "de"), "ok proto=int:1 stub=str:0.1.0 nope=absent"))
    v.append(("hello_map32", mp_map(hello, "df"), "ok proto=int:1 pid=int:4242"))
    v.append(("empty_map", mp_map([]), "ok proto=absent"))
    v.append(("empty_map16", mp_map([], "de"), "ok proto=absent"))
    ints = [
        ("pfix", mp_int(127), "127"), ("nfix", mp_int(-32), "-32"), ("u8", mp_int(200, "cc"), "200"),
        ("u16", mp_int(65535, "cd"), "65535"), ("u32", mp_int(4000000000, "ce"), "4000000000"),
        ("u64", mp_int(2**63 - 1, "cf"), str(2**63 - 1)), ("i8", mp_int(-128, "d0"), "-128"),
        ("i16", mp_int(-32768, "d1"), "-32768"), ("i32", mp_int(-2**31, "d2"), str(-2**31)),
        ("i64", mp_int(-2**63, "d3"), str(-2**63)), ("i8pos", mp_int(5, "d0"), "5"),
    ]
    v.append(("int_forms", mp_map([(mp_str(k), b) for k, b, _ in ints], "de"),
              "ok " + " ".join(f"{k}=int:{e}" for k, _, e in ints)))
    v.append(("scalars", mp_map([(mp_str("t"), TRUE), (mp_str("f"), FALSE), (mp_str("n"), NIL),
                                 (mp_str("f32"), b"\xca" + struct.pack(">f", 1.5)),
                                 (mp_str("f64"), b"\xcb" + struct.pack(">d", 2.5)),
                                 (mp_str("bin"), b"\xc4\x03abc"), (mp_str("after"), mp_int(7))]),
              "ok t=bool:1 f=bool:0 n=nil f32=other f64=other bin=other after=int:7"))
    long_str = "x" * 300
    v.append(("str_forms", mp_map([(mp_str("s8"), b"\xd9\x05hello"), (mp_str("s16"), mp_str(long_str)),
                                   (mp_str("s32"), b"\xdb\x00\x00\x00\x02hi"), (mp_str("e"), mp_str(""))]),
              "ok s8=str:hello s16=strlen:300 s32=str:hi e=strlen:0"))
    v.append(("str8_key", mp_map([(b"\xd9\x05proto", mp_int(1))]), "ok proto=int:1"))
    v.append(("nested_skipped", mp_map([
        (mp_str("m"), mp_map([(mp_str("proto"), mp_int(9)), (mp_str("a"), mp_arr([mp_int(1), mp_str("z")]))])),
        (mp_str("a"), mp_arr([mp_map([]), mp_arr([]), NIL])),
        (mp_str("a16"), b"\xdc\x00\x02\x01\x02"), (mp_str("m16"), b"\xde\x00\x01\xa1k\x01"),
        (mp_str("proto"), mp_int(1))]),
        "ok m=other a=other a16=other m16=other proto=int:1 k=absent"))
    nest4 = mp_arr([mp_arr([mp_arr([mp_arr([])])])])
    v.append(("nested_depth_4", mp_map([(mp_str("d"), nest4), (mp_str("proto"), mp_int(1))]),
              "ok d=other proto=int:1"))
    v.append(("unknown_key_ignored", mp_map([(mp_str("kx"), mp_int(3)), (mp_str("proto"), mp_int(1))]),
              "ok proto=int:1 kx=int:3"))
    # ext types are valid msgpack (e.g. the timestamp type -1): a value of an unknown kind is skipped, so a
    # newer peer may add fields of any type (SPEC: "Unknown keys are ignored")
    v.append(("ext_values_skipped", mp_map([
        (mp_str("ts"), b"\xd6\xff" + struct.pack(">I", 1700000000)),  # fixext 4, type -1 (timestamp32)
        (mp_str("fx1"), b"\xd4\x01\x00"), (mp_str("fx16"), b"\xd8\x02" + b"\0" * 16),
        (mp_str("e8"), b"\xc7\x03\x05abc"), (mp_str("proto"), mp_int(1))]),
        "ok ts=other fx1=other fx16=other e8=other proto=int:1"))

    # -- malformed: not one well-formed map
    v.append(("empty_payload", b"", "err"))
    v.append(("top_array", mp_arr([mp_str("proto"), mp_int(1)]), "err"))
    v.append(("top_int", mp_int(1), "err"))
    v.append(("top_str", mp_str("proto"), "err"))
    v.append(("top_nil", NIL, "err"))
    v.append(("map_count_too_big", b"\x82" + mp_str("proto") + mp_int(1), "err"))
    v.append(("map32_huge_count", b"\xdf\xff\xff\xff\xff" + mp_str("proto") + mp_int(1), "err"))
    v.append(("map16_header_truncated", b"\xde\x00", "err"))
    v.append(("map32_header_truncated", b"\xdf\x00\x00\x00", "err"))
    v.append(("key_truncated", b"\x81\xa5pro", "err"))
    v.append(("value_missing", b"\x81" + mp_str("proto"), "err"))
    v.append(("value_str_truncated", mp_map([(mp_str("token"), mp_str("abcdef"))])[:-2], "err"))
    v.append(("value_u32_truncated", b"\x81" + mp_str("pid") + b"\xce\x00\x01", "err"))
    v.append(("value_str32_len_huge", b"\x81" + mp_str("token") + b"\xdb\xff\xff\xff\xffab", "err"))
    v.append(("value_array32_huge", b"\x81" + mp_str("a") + b"\xdd\xff\xff\xff\xff\x01", "err"))
    v.append(("value_bin_truncated", b"\x81" + mp_str("b") + b"\xc4\x10abc", "err"))
    v.append(("value_ext_truncated", b"\x81" + mp_str("e") + b"\xd8\x01abc", "err"))
    v.append(("reserved_c1", b"\x81" + mp_str("proto") + b"\xc1", "err"))
    v.append(("reserved_c1_key", b"\x81\xc1\x01", "err"))
    # a well-formed first entry does not make a truncated map acceptable: every lookup fails
    v.append(("truncated_after_first_key", mp_map([(mp_str("proto"), mp_int(1)),
                                                    (mp_str("token"), mp_str("abcdef"))])[:-3], "err proto"))
    v.append(("trailing_bytes", mp_map([(mp_str("proto"), mp_int(1))]) + b"\x00", "err proto"))
    v.append(("two_maps", mp_map([(mp_str("proto"), mp_int(1))]) * 2, "err proto"))
    deep = b"\x91" * 2000 + b"\x90"
    v.append(("nested_depth_2000", mp_map([(mp_str("d"), deep)]), "err"))
    v.append(("nested_depth_2000_map", mp_map([(mp_str("d"), (b"\x81\xa1k") * 2000 + b"\x80")]), "err"))
    return v


def render(rows: list[tuple[str, bytes, str]], title: str) -> str:
    out = [f"# {title} — generated by protocol/vectors/make_vectors.py; do not edit (see its docstring)."]
    names = set()
    for name, data, exp in rows:
        assert name not in names and "\t" not in exp and " " not in name, name
        names.add(name)
        out.append(f"{name}\t{data.hex()}\t{exp}")
    return "\n".join(out) + "\n"


def main() -> int:
    files = {
        "frames.txt": render(frames(), "frame header and BATCH record vectors"),
        "msgpack.txt": render(msgpack_vectors(), "msgpack HELLO-payload lookup vectors"),
    }
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in files.items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale vectors: {', '.join(stale)} (run python protocol/vectors/make_vectors.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
