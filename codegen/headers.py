"""Parse the CUDA driver headers with libclang.

Three modes, as the driver's ABI needs: plain (what an application sees; old names are #defined to versioned
ABI names), `__CUDA_API_VERSION_INTERNAL` (every ABI the driver exports, old ones included) and
`CUDA_API_PER_THREAD_DEFAULT_STREAM` (the `_ptds`/`_ptsz` names). `cudaTypedefs.h` gives the
`PFN_<name>_v<version>[_ptds|_ptsz]` typedefs behind cuGetProcAddress's (name, version) → symbol map."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import clang.cindex as ci

HANDLE_TYPES = {
    # typedef name -> handle kind id used by the server's per-session tables (0 is reserved)
    "CUcontext": 1,
    "CUstream": 2,
    "CUevent": 3,
    "CUmodule": 4,
    "CUfunction": 5,
    "CUlibrary": 6,
    "CUkernel": 7,
    "CUgraph": 8,
    "CUgraphExec": 9,
    "CUgraphNode": 10,
    "CUmemoryPool": 11,
    "CUlinkState": 12,
    "CUarray": 13,
    "CUmipmappedArray": 14,
    "CUuserObject": 15,
    "CUgreenCtx": 16,
    "CUdevResourceDesc": 17,
}


@dataclass
class Param:
    name: str
    spelling: str  # type spelling as declared, e.g. "const CUuuid *"
    kind: str  # "scalar" | "handle" | "pointer" | "other"
    pointee: str = ""  # for pointers: pointee spelling without const, e.g. "int", "CUstream"
    pointee_kind: str = ""  # for pointers: kind of the pointee ("scalar"/"handle"/"struct"/"void"/"pointer"/"char")
    canonical: str = ""


@dataclass
class Function:
    name: str
    params: list[Param]
    result: str = "CUresult"

    def signature(self, name: str | None = None) -> str:
        ps = ", ".join(_decl(p) for p in self.params) or "void"
        return f"{self.result} CUDAAPI {name or self.name}({ps})"


@dataclass
class Headers:
    include_dir: Path
    plain: dict[str, Function] = field(default_factory=dict)
    internal: dict[str, Function] = field(default_factory=dict)
    plain_macros: dict[str, str] = field(default_factory=dict)  # cuMemAlloc -> cuMemAlloc_v2
    ptds_macros: dict[str, str] = field(default_factory=dict)  # cuMemcpyAsync -> cuMemcpyAsync_ptsz
    pfn: dict[tuple[str, int, str], list[str]] = field(default_factory=dict)  # (base, ver, variant)->canon params
    results: list[tuple[str, int, str]] = field(default_factory=list)  # CUresult (name, value, doc)


def _decl(p: Param) -> str:
    s = p.spelling
    # Arrays and function pointers never appear as driver-API params except as pointers; keep simple.
    if s.endswith("*"):
        return f"{s}{p.name}"
    return f"{s} {p.name}"


def find_include_dir() -> Path:
    env = os.environ.get("FARGPU_CUDA_INCLUDE")
    if env:
        return Path(env)
    import nvidia  # the nvidia-cuda-runtime wheel's namespace package

    for base in nvidia.__path__:
        cand = Path(base) / "cu13" / "include"
        if (cand / "cuda.h").exists():
            return cand
    raise SystemExit("CUDA 13.0 headers not found: pip install 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-crt==13.0.*'")


def _gcc_include() -> list[str]:
    try:
        out = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True, check=True).stdout
        return ["-I" + out.strip()]
    except (OSError, subprocess.CalledProcessError):
        return []


def _classify(t: ci.Type) -> tuple[str, str, str]:
    """(kind, pointee spelling, pointee kind) for a parameter type."""
    name = t.spelling.replace("const ", "").strip()
    if name in HANDLE_TYPES:
        return "handle", "", ""
    canon = t.get_canonical()
    if canon.kind == ci.TypeKind.POINTER:
        pt = t.get_pointee() if t.kind == ci.TypeKind.POINTER else canon.get_pointee()
        pname = pt.spelling.replace("const ", "").strip()
        pc = pt.get_canonical()
        if pname in HANDLE_TYPES:
            pk = "handle"
        elif pc.kind == ci.TypeKind.VOID:
            pk = "void"
        elif pc.kind in (ci.TypeKind.CHAR_S, ci.TypeKind.SCHAR):
            pk = "char"
        elif pc.kind == ci.TypeKind.POINTER:
            pk = "pointer"
        elif pc.kind == ci.TypeKind.RECORD:
            pk = "struct"
        elif pc.kind == ci.TypeKind.FUNCTIONPROTO:
            pk = "function"
        else:
            pk = "scalar"
        return "pointer", pname, pk
    if canon.kind in (ci.TypeKind.RECORD, ci.TypeKind.CONSTANTARRAY):
        return "other", "", ""
    return "scalar", "", ""


def _function(c: ci.Cursor) -> Function:
    params = []
    for i, a in enumerate(c.get_arguments()):
        kind, pointee, pk = _classify(a.type)
        params.append(
            Param(
                name=a.spelling or f"arg{i}",
                spelling=a.type.spelling,
                kind=kind,
                pointee=pointee,
                pointee_kind=pk,
                canonical=a.type.get_canonical().spelling,
            )
        )
    return Function(name=c.spelling, params=params, result=c.result_type.spelling)


def _parse(idx: ci.Index, path: Path, inc: Path, defines: list[str]) -> ci.TranslationUnit:
    args = ["-x", "c", "-std=c11", f"-I{inc}", *_gcc_include(), *defines]
    opts = ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD | ci.TranslationUnit.PARSE_SKIP_FUNCTION_BODIES
    tu = idx.parse(str(path), args=args, options=opts)
    errors = [str(d) for d in tu.diagnostics if d.severity >= ci.Diagnostic.Error]
    if errors:
        raise SystemExit(f"libclang could not parse {path.name}: {errors[:3]}")
    return tu


def _collect(tu: ci.TranslationUnit, header: str) -> tuple[dict[str, Function], dict[str, str]]:
    fns: dict[str, Function] = {}
    macros: dict[str, str] = {}
    for c in tu.cursor.get_children():
        if c.location.file is None or not c.location.file.name.endswith(header):
            continue
        if c.kind == ci.CursorKind.FUNCTION_DECL and c.spelling.startswith("cu"):
            fns[c.spelling] = _function(c)
        elif c.kind == ci.CursorKind.MACRO_DEFINITION and c.spelling.startswith("cu"):
            toks = [t.spelling for t in c.get_tokens()][1:]
            if len(toks) == 1 and toks[0].startswith("cu"):
                macros[c.spelling] = toks[0]
            elif len(toks) == 4 and toks[0] in ("__CUDA_API_PTDS", "__CUDA_API_PTSZ") and toks[1] == "(":
                macros[c.spelling] = toks[2] + ("_ptds" if toks[0].endswith("PTDS") else "_ptsz")
    return fns, macros


_PFN = re.compile(r"^PFN_(cu\w+?)_v(\d+)(?:_(ptds|ptsz))?$")


def parse(include_dir: Path | None = None) -> Headers:
    inc = include_dir or find_include_dir()
    idx = ci.Index.create()
    h = Headers(include_dir=inc)
    cuda_h = inc / "cuda.h"
    h.plain, plain_macros = _collect(_parse(idx, cuda_h, inc, []), "cuda.h")
    h.internal, _ = _collect(_parse(idx, cuda_h, inc, ["-D__CUDA_API_VERSION_INTERNAL"]), "cuda.h")
    # Profiler control: exported by the driver, declared outside cuda.h (codegen/data/profiler_decls.h).
    decls = Path(__file__).resolve().parent / "data" / "profiler_decls.h"
    prof, _ = _collect(_parse(idx, decls, inc, ["-D__CUDA_API_VERSION_INTERNAL"]), "profiler_decls.h")
    h.internal.update(prof)
    h.plain.update(prof)
    _, ptds_macros = _collect(_parse(idx, cuda_h, inc, ["-DCUDA_API_PER_THREAD_DEFAULT_STREAM"]), "cuda.h")
    # Plain-mode macros that resolve to PTDS/PTSZ helpers expand to the base name without the define.
    h.plain_macros = {k: re.sub(r"_(ptds|ptsz)$", "", v) for k, v in plain_macros.items()}
    h.ptds_macros = {k: v for k, v in ptds_macros.items() if v.endswith(("_ptds", "_ptsz"))}
    tu = _parse(idx, inc / "cudaTypedefs.h", inc, ["-D__CUDA_API_VERSION_INTERNAL"])
    for c in tu.cursor.walk_preorder():
        if c.kind != ci.CursorKind.TYPEDEF_DECL:
            continue
        m = _PFN.match(c.spelling)
        if not m:
            continue
        proto = c.underlying_typedef_type.get_canonical().get_pointee()
        canon = [a.get_canonical().spelling for a in proto.argument_types()]
        h.pfn[(m.group(1), int(m.group(2)), m.group(3) or "")] = canon
    for c in _parse(idx, cuda_h, inc, []).cursor.walk_preorder():
        if c.kind == ci.CursorKind.ENUM_DECL and c.spelling == "cudaError_enum":
            for e in c.get_children():
                doc = (e.brief_comment or "").strip()
                h.results.append((e.spelling, e.enum_value, doc))
            break
    return h
