"""Join the parsed headers, the driver's export list and annotations.toml into one model of the API:
which exports exist, which op each implemented call gets, and how each parameter crosses the wire."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .headers import HANDLE_TYPES, Function, Headers, Param

HERE = Path(__file__).resolve().parent
FIRST_GENERATED_OP = 16
SPECIAL_OPS = {"FG_SET_CTX": (1, "async"), "FG_PING": (2, "sync"), "FG_IMAGE_CHUNK": (3, "async"),
               "FG_SHM_HTOD": (4, "async"), "FG_SHM_DTOH": (5, "async"), "FG_SHM_DEVPTR": (6, "sync"),
               "FG_BULK_HTOD": (7, "async"), "FG_BULK_DTOH": (8, "sync")}
OUTBUF_CAP = 4096


@dataclass
class WireParam:
    p: Param
    role: str  # "in" | "handle_in" | "out" | "handle_out" | "outbuf" | "cstr" | "inref" | "inout"
    size_param: str = ""


@dataclass
class Op:
    name: str  # ABI name
    id: int
    cls: str  # sync | async
    impl: str  # generic | custom
    fn: Function
    wire: list[WireParam] = field(default_factory=list)
    destroy: str = ""
    memo: bool = False  # the answer never changes: the stub caches it (memo.c)
    memo_clear: bool = False  # the call may change a cached answer or free an id that may be reused
    memo_unless: str = ""  # a C condition on the parameters under which a memo call's answer may change: not cached
    capture: str = ""  # "begin": starts a stream capture (the stub counts active captures; capture.c ends one)
    global_var: bool = False  # returns a module/library global's address (dptr) and size (bytes)


@dataclass
class Export:
    name: str
    fn: Function | None  # None: not declared in cuda.h
    kind: str  # "op" | "client" | "variant" | "alias" | "unsupported"
    target: str = ""  # for variant/alias: the implementation it forwards to
    stream_param: str = ""  # for variant: the CUstream param to map NULL -> per-thread
    sync_memop: str = ""  # a synchronous memory operation: its destination param ("*": any), for SYNC_MEMOPS


@dataclass
class Model:
    headers: Headers
    exports: list[Export]
    ops: list[Op]
    client_impls: list[Function]
    server_api: list[Function]
    server_required: list[str]
    server_optional: list[str]
    procaddr: list[tuple[str, int, str, str]]  # (name, version, default symbol, per-thread symbol)
    ops_hash: str


def _load_annotations() -> dict[str, dict[str, object]]:  # also read by coverage.py (through emit.py)
    with open(HERE / "annotations.toml", "rb") as f:
        return tomllib.load(f)


def _wire(fn: Function, ann: dict[str, object]) -> list[WireParam]:
    outs = set(ann.get("out", []))  # type: ignore[arg-type]
    outbuf: dict[str, str] = dict(ann.get("outbuf", {}))  # type: ignore[call-overload]
    cstrs = set(ann.get("cstr", []))  # type: ignore[arg-type]
    inrefs = set(ann.get("inref", []))  # type: ignore[arg-type]
    inouts = set(ann.get("inout", []))  # type: ignore[arg-type]
    wire = []
    for p in fn.params:
        if p.name in inrefs or p.name in inouts:
            if p.kind != "pointer" or p.pointee_kind not in ("scalar", "struct"):
                raise SystemExit(f"{fn.name}: inref/inout param {p.name} must point to a scalar or a plain struct")
            wire.append(WireParam(p, "inref" if p.name in inrefs else "inout"))
        elif p.name in outs:
            if p.kind != "pointer" or p.pointee_kind not in ("scalar", "handle", "struct"):
                raise SystemExit(f"{fn.name}: out param {p.name} must point to a scalar, handle or struct")
            wire.append(WireParam(p, "handle_out" if p.pointee_kind == "handle" else "out"))
        elif p.name in outbuf:
            wire.append(WireParam(p, "outbuf", outbuf[p.name]))
        elif p.name in cstrs:
            wire.append(WireParam(p, "cstr"))
        elif p.kind == "handle":
            wire.append(WireParam(p, "handle_in"))
        elif p.kind == "scalar":
            wire.append(WireParam(p, "in"))
        else:
            raise SystemExit(f"{fn.name}: param {p.name} ({p.spelling}) needs an annotation or a custom impl")
    return wire


def _canon(fn: Function) -> list[str]:
    return [p.canonical for p in fn.params]


def _procaddr(h: Headers, exports: set[str]) -> list[tuple[str, int, str, str]]:
    """Map each (name, version) that cudaTypedefs.h names to the exported symbol implementing that ABI."""
    bases: dict[str, set[int]] = {}
    for base, ver, _variant in h.pfn:
        bases.setdefault(base, set()).add(ver)
    rows = []
    for base, vers in sorted(bases.items()):
        versions = sorted(vers)
        cands = [s for s in [base] + [f"{base}_v{i}" for i in range(2, 10)] if s in exports]
        if not cands:
            continue
        for i, ver in enumerate(versions):
            want = h.pfn.get((base, ver, ""))
            if want is None:  # only a per-thread typedef exists for this version
                want = h.pfn.get((base, ver, "ptsz")) or h.pfn.get((base, ver, "ptds"))
            matching = [c for c in cands if c in h.internal and _canon(h.internal[c]) == want]
            if len(versions) == len(cands) and (not matching or cands[i] in matching):
                sym = cands[i]
            elif len(matching) == 1:
                sym = matching[0]
            elif matching:
                sym = matching[min(i, len(matching) - 1)]
            else:
                sym = cands[min(i, len(cands) - 1)]
            pt = sym
            for suffix in ("_ptds", "_ptsz"):
                if sym + suffix in exports:
                    pt = sym + suffix
            rows.append((base, ver, sym, pt))
    # Exported names that cudaTypedefs.h does not list resolve to themselves at any version.
    listed = {r[0] for r in rows}
    for name in sorted(exports):
        if re.search(r"_(v\d+|ptds|ptsz)$", name) or name in listed:
            continue
        rows.append((name, 0, name, name))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def build(h: Headers) -> Model:
    ann = _load_annotations()
    fns: dict[str, dict[str, object]] = ann["fn"]  # type: ignore[assignment]
    export_names = [ln.strip() for ln in open(HERE / "data" / "libcuda-exports.txt") if ln.strip()]
    export_set = set(export_names)
    for name in fns:
        if name not in export_set:
            raise SystemExit(f"annotations.toml names {name}, which the driver does not export")
        if name not in h.internal:
            raise SystemExit(f"annotations.toml names {name}, which cuda.h does not declare")

    ops: list[Op] = []
    client: list[Function] = []
    next_id = FIRST_GENERATED_OP
    for name in sorted(fns):
        a = fns[name]
        cls = str(a.get("class", "sync"))
        impl = str(a.get("impl", "generic"))
        fn = h.internal[name]
        if cls == "local":
            if impl != "client":
                raise SystemExit(f"{name}: class local needs impl = client")
            client.append(fn)
            continue
        if impl == "client":
            raise SystemExit(f"{name}: impl client needs class local")
        op = Op(name, next_id, cls, impl, fn, destroy=str(a.get("destroy", "")), memo=bool(a.get("memo", False)),
                memo_clear=bool(a.get("memo_clear", False)) or bool(a.get("destroy")),
                capture=str(a.get("capture", "")), global_var=bool(a.get("global", False)),
                memo_unless=str(a.get("memo_unless", "")))
        if op.memo and (cls != "sync" or impl != "generic"):
            raise SystemExit(f"{name}: memo needs a generic sync op")
        if op.memo_unless and (not op.memo or op.memo_clear or op.global_var):
            raise SystemExit(f"{name}: memo_unless is for cached queries (memo, not a setter or a global)")
        next_id += 1
        if impl == "generic":
            op.wire = _wire(fn, a)
            setter_roles = ("out", "handle_out", "outbuf", "inout")
            if op.memo and op.memo_clear and (op.destroy or any(w.role in setter_roles for w in op.wire)):
                raise SystemExit(f"{name}: memo with memo_clear is for setters (no outputs, nothing destroyed)")
            if cls == "async" and any(w.role in ("out", "handle_out", "outbuf") for w in op.wire):
                raise SystemExit(f"{name}: an async call cannot have outputs")
        elif impl == "custom":
            client.append(fn)
        ops.append(op)

    implemented = {o.name for o in ops} | {f.name for f in client}
    aliases = {str(a["alias"]): n for n, a in fns.items() if "alias" in a}
    exports: list[Export] = []
    for name in export_names:
        fn = h.internal.get(name)
        if name in implemented:
            kind = "op" if any(o.name == name and o.impl == "generic" for o in ops) else "client"
            dst = str(fns[name].get("sync_memop", ""))
            if dst and dst != "*" and (fn is None or dst not in [p.name for p in fn.params]):
                raise SystemExit(f"{name}: sync_memop names {dst}, which is not a parameter")
            exports.append(Export(name, fn, kind, sync_memop=dst))
            continue
        if name in aliases and fn is not None:
            target = aliases[name]
            if _canon(fn) != _canon(h.internal[target]):
                raise SystemExit(f"alias {name} -> {target}: the signatures differ")
            exports.append(Export(name, fn, "alias", target))
            continue
        m = re.match(r"^(.*)_(ptds|ptsz)$", name)
        if m and m.group(1) in implemented and fn is not None:
            base = h.internal[m.group(1)]
            if _canon(fn) == _canon(base):
                sp = next((p.name for p in fn.params if p.spelling.replace("const ", "").strip() == "CUstream"), "")
                exports.append(Export(name, fn, "variant", m.group(1), sp))
                continue
        exports.append(Export(name, fn, "unsupported"))

    optional = set(ann["server"].get("optional", []))  # type: ignore[attr-defined]
    api_names = sorted({o.name for o in ops if o.impl == "generic"} | set(ann["server"]["api"]) | optional)  # type: ignore[index]
    server_api = [h.internal[n] for n in api_names]
    digest = hashlib.sha256()
    for o in ops:
        digest.update(f"{o.name}:{o.id}:{o.cls}:{o.impl};".encode())
    for s, (i, c) in SPECIAL_OPS.items():
        digest.update(f"{s}:{i}:{c};".encode())
    required = sorted(ann["server"]["api"])  # type: ignore[index]
    # Optional entry points (hand-written replay code checks for NULL and answers fgs_missing) are declared
    # generic here so fgs_api_load does not insist on them.
    required_set = set(required)
    for name in optional:
        if name in required_set:
            raise SystemExit(f"{name} is both required and optional in [server]")
    return Model(h, exports, ops, client, server_api, required, sorted(optional), _procaddr(h, export_set),
                 digest.hexdigest()[:16])


def handle_kind(p: Param, pointee: bool = False) -> tuple[str, int]:
    name = (p.pointee if pointee else p.spelling).replace("const ", "").strip()
    return name, HANDLE_TYPES[name]
