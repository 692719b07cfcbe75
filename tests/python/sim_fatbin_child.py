"""The child side of test_sim_fatbin.py: run as a script (sim_fatbin_child.py SCENARIO ARGS.json) in a process
of its own, it loads the simulated device as libcuda.so.1 from LD_LIBRARY_PATH, runs one scenario against it
through ctypes and prints the scenario's result as one "RESULT <json>" line for the parent to check."""

from __future__ import annotations

import ctypes
import json
import mmap
import random
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim_fatbin_images import INVALID_VALUE, KIND_PTX, PTX_VADD, SUCCESS, WRAPPER_MAGIC, fatbin, fatbin_entry

C = ctypes


class Wrapper(C.Structure):
    _fields_ = [("magic", C.c_int), ("version", C.c_int), ("data", C.c_void_p), ("filename", C.c_void_p)]


class LaunchAttrValue(C.Union):
    _fields_ = [("pad", C.c_char * 64), ("i", C.c_int), ("dim", C.c_uint * 3), ("p", C.c_void_p)]


class LaunchAttr(C.Structure):
    _fields_ = [("id", C.c_int), ("pad", C.c_char * 4), ("value", LaunchAttrValue)]


class LaunchConfig(C.Structure):
    _fields_ = [("grid", C.c_uint * 3), ("block", C.c_uint * 3), ("shmem", C.c_uint), ("stream", C.c_void_p),
                ("attrs", C.POINTER(LaunchAttr)), ("num_attrs", C.c_uint)]


class Memcpy2D(C.Structure):
    _fields_ = [("srcX", C.c_size_t), ("srcY", C.c_size_t), ("srcType", C.c_int), ("srcHost", C.c_void_p),
                ("srcDevice", C.c_uint64), ("srcArray", C.c_void_p), ("srcPitch", C.c_size_t),
                ("dstX", C.c_size_t), ("dstY", C.c_size_t), ("dstType", C.c_int), ("dstHost", C.c_void_p),
                ("dstDevice", C.c_uint64), ("dstArray", C.c_void_p), ("dstPitch", C.c_size_t),
                ("width", C.c_size_t), ("height", C.c_size_t)]


class Child:
    def __init__(self) -> None:
        self.cu = C.CDLL("libcuda.so.1")
        self.libc = C.CDLL(None)
        self.libc.mmap.restype = C.c_void_p
        self.libc.mmap.argtypes = [C.c_void_p, C.c_size_t, C.c_int, C.c_int, C.c_int, C.c_long]
        self.keep: list[Any] = []
        self.ok(self.cu.cuInit(0))
        self.ctx = C.c_void_p()
        self.ok(self.cu.cuDevicePrimaryCtxRetain(C.byref(self.ctx), 0))
        self.ok(self.cu.cuCtxSetCurrent(self.ctx))

    @staticmethod
    def ok(rc: int) -> None:
        assert rc == SUCCESS, f"CUDA error {rc}"

    def buffer(self, data: bytes) -> C.Array[C.c_char]:
        buf = C.create_string_buffer(data, len(data) + 8)
        self.keep.append(buf)
        return buf

    def guarded_call(self, data: bytes, fn: Callable[[int], int]) -> int:
        """Calls fn(address) with data ending right before a PROT_NONE page."""
        page = mmap.PAGESIZE
        span = (len(data) + page - 1) // page * page or page
        base = self.libc.mmap(None, span + page, mmap.PROT_READ | mmap.PROT_WRITE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        assert base not in (None, C.c_void_p(-1).value)
        start = base + span - len(data)
        C.memmove(start, data, len(data))
        assert self.libc.mprotect(C.c_void_p(base + span), C.c_size_t(page), 0) == 0
        try:
            return fn(start)
        finally:
            self.libc.munmap(C.c_void_p(base), C.c_size_t(span + page))

    def alloc(self, n: int) -> int:
        p = C.c_uint64()
        self.ok(self.cu.cuMemAlloc_v2(C.byref(p), C.c_size_t(n)))
        return p.value

    def htod(self, dst: int, data: bytes) -> None:
        self.ok(self.cu.cuMemcpyHtoD_v2(C.c_uint64(dst), data, C.c_size_t(len(data))))

    def dtoh(self, src: int, n: int) -> bytes:
        buf = C.create_string_buffer(n)
        self.ok(self.cu.cuMemcpyDtoH_v2(buf, C.c_uint64(src), C.c_size_t(n)))
        return buf.raw

    def function(self, mod: C.c_void_p, name: str) -> C.c_void_p:
        f = C.c_void_p()
        self.ok(self.cu.cuModuleGetFunction(C.byref(f), mod, name.encode()))
        return f

    def params(self, fn: Callable[[C.c_void_p, int], int], handle: C.c_void_p) -> list[list[int]]:
        out = []
        for i in range(64):
            off, size = C.c_size_t(), C.c_size_t()
            if fn(handle, C.c_size_t(i), C.byref(off), C.byref(size)) != SUCCESS:
                break
            out.append([off.value, size.value])
        return out

    def vadd_args(self, n: int = 1000) -> tuple[Any, int, bytes]:
        """Device buffers a, b, c for fg_vadd and the kernelParams array; returns (params, c, expected)."""
        rng, fmt = random.Random(n), f"<{n}f"
        a, b = (struct.pack(fmt, *[rng.uniform(-100, 100) for _ in range(n)]) for _ in range(2))
        pa, pb, pc = self.alloc(4 * n), self.alloc(4 * n), self.alloc(4 * n)
        for ptr, data in ((pa, a), (pb, b), (pc, bytes(4 * n))):
            self.htod(ptr, data)
        args = [C.c_uint64(pa), C.c_uint64(pb), C.c_uint64(pc), C.c_int(n)]
        self.keep.append(args)
        params = (C.c_void_p * 4)(*[C.cast(C.byref(x), C.c_void_p) for x in args])
        sums = [x + y for x, y in zip(struct.unpack(fmt, a), struct.unpack(fmt, b), strict=True)]
        return params, pc, struct.pack(fmt, *sums)  # a float32 sum, correctly rounded, like the kernel's

    def launch_vadd(self, f: C.c_void_p | int, n: int = 1000) -> bool:
        params, pc, want = self.vadd_args(n)
        rc = self.cu.cuLaunchKernel(C.c_void_p(f) if isinstance(f, int) else f, (n + 255) // 256, 1, 1, 256, 1, 1,
                                    0, None, params, None)
        return rc == SUCCESS and self.dtoh(pc, 4 * n) == want


def _image(args: dict[str, Any], key: str) -> bytes:
    return bytes.fromhex(args[f"{key}_hex"]) if f"{key}_hex" in args else Path(args[key]).read_bytes()


def scenario_load_compare(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    img, ref = _image(args, "image"), _image(args, "reference")
    if ref[:4] != b"\x7fELF" and not ref.endswith(b"\0"):
        ref += b"\0"
    out: dict[str, Any] = {}
    img_buf = c.buffer(img)
    if args["wrap"]:
        w = Wrapper(WRAPPER_MAGIC, 1, C.cast(img_buf, C.c_void_p), None)
        bad = [Wrapper(WRAPPER_MAGIC, 3, C.cast(img_buf, C.c_void_p), None), Wrapper(WRAPPER_MAGIC, 1, None, None),
               Wrapper(WRAPPER_MAGIC, 1, C.cast(c.buffer(b"\x7fELF" + bytes(60)), C.c_void_p), None)]
        out["bad_wrappers"] = [c.cu.cuModuleLoadData(C.byref(C.c_void_p()), C.byref(x)) for x in bad]
        c.keep.append(w)
        load_arg: Any = C.byref(w)
    else:
        load_arg = img_buf
    mod, rmod = C.c_void_p(), C.c_void_p()
    out["rc"] = c.cu.cuModuleLoadData(C.byref(mod), load_arg)
    c.ok(out["rc"])
    c.ok(c.cu.cuModuleLoadData(C.byref(rmod), c.buffer(ref)))
    names = ["fg_vadd", "fg_scale", "fg_fill_u32", "fg_axpb", "fg_not_simulated"]
    out.update(params={}, ref_params={}, regs={}, ref_regs={})
    for name in names:
        for m, pkey, rkey in ((mod, "params", "regs"), (rmod, "ref_params", "ref_regs")):
            f = C.c_void_p()
            if c.cu.cuModuleGetFunction(C.byref(f), m, name.encode()) != SUCCESS:
                continue
            out[pkey][name] = c.params(c.cu.cuFuncGetParamInfo, f)
            v = C.c_int()
            c.ok(c.cu.cuFuncGetAttribute(C.byref(v), 4, f))  # NUM_REGS
            out[rkey][name] = v.value
    v = C.c_int()
    c.ok(c.cu.cuFuncGetAttribute(C.byref(v), 6, c.function(mod, "fg_vadd")))  # BINARY_VERSION
    out["binary_version"] = v.value
    dptr, size = C.c_uint64(), C.c_size_t()
    c.ok(c.cu.cuModuleGetGlobal_v2(C.byref(dptr), C.byref(size), mod, b"fg_magic"))
    out["magic"] = struct.unpack("<I", c.dtoh(dptr.value, 4))[0]
    out["vadd_ok"] = c.launch_vadd(c.function(mod, "fg_vadd"))
    return out


def scenario_load_codes(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    """The result of cuModuleLoadData and cuLibraryLoadData for each image (unloading what loads)."""
    def load_module(addr: int) -> int:
        m = C.c_void_p()
        rc = c.cu.cuModuleLoadData(C.byref(m), C.c_void_p(addr))
        if rc == SUCCESS:
            c.ok(c.cu.cuModuleUnload(m))
        return rc

    def load_library(addr: int) -> int:
        lib = C.c_void_p()
        rc = c.cu.cuLibraryLoadData(C.byref(lib), C.c_void_p(addr), None, None, 0, None, None, 0)
        if rc == SUCCESS:
            c.ok(c.cu.cuLibraryUnload(lib))
        return rc

    mods, libs = [], []
    for hexed in args["images"]:
        img = bytes.fromhex(hexed)
        if args.get("guarded"):
            # the bytes the sim may read: the 16-byte header, and the rest it describes if that is acceptable
            _, version, hsize, size = struct.unpack_from("<IHHQ", img, 0)
            extent = hsize + size if version == 1 and hsize >= 16 and size <= (1 << 30) - hsize else 16
            if extent > (64 << 20):
                continue  # too large to place; the parent's fixed cases stay well below
            img = img[:extent].ljust(extent, b"\0")
            mods.append(c.guarded_call(img, load_module))
            libs.append(c.guarded_call(img, load_library))
        else:
            buf = c.buffer(img)
            mods.append(load_module(C.cast(buf, C.c_void_p).value or 0))
            libs.append(load_library(C.cast(buf, C.c_void_p).value or 0))
    return {"module": mods, "library": libs}


def scenario_library(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    cu, out = c.cu, {}
    lib = C.c_void_p()
    jit_opts = (C.c_int * 1)(4)  # CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: ignored (logged once)
    jit_vals = (C.c_void_p * 1)(C.c_void_p(0))
    c.ok(cu.cuLibraryLoadData(C.byref(lib), c.buffer(Path(args["image"]).read_bytes()), jit_opts, jit_vals, 1,
                              None, None, 0))
    n = C.c_uint()
    c.ok(cu.cuLibraryGetKernelCount(C.byref(n), lib))
    out["count"] = n.value
    ks = (C.c_void_p * n.value)()
    c.ok(cu.cuLibraryEnumerateKernels(ks, n.value, lib))
    kernels: dict[str, int] = {}
    name, got = C.c_char_p(), C.c_void_p()
    for k in ks:
        c.ok(cu.cuKernelGetName(C.byref(name), C.c_void_p(k)))
        kernels[(name.value or b"").decode()] = k
    out["enumerated"] = sorted(kernels)
    out["get_kernel_matches"] = all(
        cu.cuLibraryGetKernel(C.byref(got), lib, n.encode()) == SUCCESS and got.value == k for n, k in kernels.items())
    out["unknown_kernel"] = cu.cuLibraryGetKernel(C.byref(C.c_void_p()), lib, b"nope")
    out["unknown_global"] = cu.cuLibraryGetGlobal(C.byref(C.c_uint64()), C.byref(C.c_size_t()), lib, b"nope")
    out["param_info"] = {name: c.params(cu.cuKernelGetParamInfo, C.c_void_p(k)) for name, k in kernels.items()}
    got_lib = C.c_void_p()
    c.ok(cu.cuKernelGetLibrary(C.byref(got_lib), C.c_void_p(kernels["fg_vadd"])))
    out["kernel_library_ok"] = got_lib.value == lib.value
    fn, mod, mfn = C.c_void_p(), C.c_void_p(), C.c_void_p()
    c.ok(cu.cuKernelGetFunction(C.byref(fn), C.c_void_p(kernels["fg_vadd"])))
    fname = C.c_char_p()
    c.ok(cu.cuFuncGetName(C.byref(fname), fn))
    out["function_name"] = (fname.value or b"").decode()
    c.ok(cu.cuLibraryGetModule(C.byref(mod), lib))
    c.ok(cu.cuModuleGetFunction(C.byref(mfn), mod, b"fg_vadd"))
    out["module_function_same"] = mfn.value == fn.value and fn.value != kernels["fg_vadd"]
    dptr, size = C.c_uint64(), C.c_size_t()
    c.ok(cu.cuLibraryGetGlobal(C.byref(dptr), C.byref(size), lib, b"fg_magic"))
    out["magic"] = struct.unpack("<I", c.dtoh(dptr.value, 4))[0]

    # launches: the CUkernel passed as a CUfunction, then through cuLaunchKernelEx, then the CUfunction
    vadd = kernels["fg_vadd"]
    out["vadd_via_kernel"] = c.launch_vadd(vadd)
    params, pc, want = c.vadd_args(512)
    attrs = (LaunchAttr * 3)()
    attrs[0].id, attrs[0].value.i = 8, -2  # PRIORITY: a hint
    attrs[1].id, attrs[1].value.i = 2, 0  # COOPERATIVE = 0
    attrs[2].id = 4  # CLUSTER_DIMENSION 1x1x1
    attrs[2].value.dim[0] = attrs[2].value.dim[1] = attrs[2].value.dim[2] = 1
    cfg = LaunchConfig((C.c_uint * 3)(2, 1, 1), (C.c_uint * 3)(256, 1, 1), 0, None, attrs, 3)
    rc = cu.cuLaunchKernelEx(C.byref(cfg), C.c_void_p(vadd), params, None)
    out["vadd_via_ex"] = rc == SUCCESS and c.dtoh(pc, 4 * 512) == want
    attrs[1].value.i = 1
    out["ex_cooperative"] = cu.cuLaunchKernelEx(C.byref(cfg), C.c_void_p(vadd), params, None)
    attrs[1].value.i = 0
    attrs[2].value.dim[0] = 2
    out["ex_cluster"] = cu.cuLaunchKernelEx(C.byref(cfg), C.c_void_p(vadd), params, None)
    out["vadd_via_function"] = c.launch_vadd(fn)
    ns_args = [C.c_double(2.5), C.c_byte(7), C.c_short(-3), C.c_uint64(0x1000)]
    ns_params = (C.c_void_p * 4)(*[C.cast(C.byref(x), C.c_void_p) for x in ns_args])
    out["unsimulated"] = cu.cuLaunchKernel(C.c_void_p(kernels["fg_not_simulated"]), 2, 1, 1, 32, 1, 1, 0, None,
                                           ns_params, None)

    # dynamic shared memory beyond 48 KiB needs the attribute, set on the kernel for device 0
    params, pc, want = c.vadd_args(256)
    dyn: dict[str, int] = {}
    dyn["before"] = cu.cuLaunchKernel(C.c_void_p(vadd), 1, 1, 1, 256, 1, 1, 60000, None, params, None)
    c.ok(cu.cuKernelSetAttribute(8, 100000, C.c_void_p(vadd), 0))  # MAX_DYNAMIC_SHARED_SIZE_BYTES
    v = C.c_int()
    c.ok(cu.cuKernelGetAttribute(C.byref(v), 8, C.c_void_p(vadd), 0))
    dyn["attr"] = v.value
    dyn["after"] = cu.cuLaunchKernel(C.c_void_p(vadd), 1, 1, 1, 256, 1, 1, 60000, None, params, None)
    c.ok(cu.cuFuncGetAttribute(C.byref(v), 8, fn))
    dyn["func_attr"] = v.value
    out["dyn_shared"] = dyn

    # another context gets its own instance, gone with that context
    other, fn2 = C.c_void_p(), C.c_void_p()
    c.ok(cu.cuCtxCreate_v4(C.byref(other), None, 0, 0))
    c.ok(cu.cuKernelGetFunction(C.byref(fn2), C.c_void_p(vadd)))
    oc: dict[str, Any] = {"distinct": fn2.value != fn.value, "works": c.launch_vadd(vadd, 300)}
    c.ok(cu.cuCtxDestroy_v2(other))
    c.ok(cu.cuCtxSetCurrent(c.ctx))
    oc["gone_after_destroy"] = cu.cuFuncGetName(C.byref(fname), fn2)
    again = C.c_void_p()
    c.ok(cu.cuKernelGetFunction(C.byref(again), C.c_void_p(vadd)))
    oc["primary_same"] = again.value == fn.value
    out["other_ctx"] = oc

    c.ok(cu.cuLibraryUnload(lib))
    out["after_unload"] = {"kernel": cu.cuKernelGetName(C.byref(fname), C.c_void_p(vadd)),
                           "function": cu.cuFuncGetName(C.byref(fname), fn),
                           "library": cu.cuLibraryUnload(lib)}
    return out


def scenario_hostfn(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    cu = c.cu
    seen: list[list[int | str]] = []
    host = C.c_void_p()
    c.ok(cu.cuMemAllocHost_v2(C.byref(host), C.c_size_t(64)))
    word = C.c_uint32.from_address(host.value or 0)
    stream = C.c_void_p()
    c.ok(cu.cuStreamCreate(C.byref(stream), 0))
    host_fn = C.CFUNCTYPE(None, C.c_void_p)(lambda _: seen.append(["hostfn", word.value]))
    callback = C.CFUNCTYPE(None, C.c_void_p, C.c_int, C.c_void_p)(
        lambda _s, status, _u: seen.append(["callback", word.value, status]))
    dev = C.c_uint64(host.value or 0)  # pinned host memory is device-accessible at the same address
    c.ok(cu.cuMemsetD32Async(dev, 1, C.c_size_t(16), stream))
    c.ok(cu.cuLaunchHostFunc(stream, host_fn, None))
    c.ok(cu.cuMemsetD32Async(dev, 2, C.c_size_t(16), stream))
    c.ok(cu.cuStreamAddCallback(stream, callback, None, 0))
    c.ok(cu.cuMemsetD32Async(dev, 3, C.c_size_t(16), stream))
    c.ok(cu.cuLaunchHostFunc(stream, host_fn, None))
    c.ok(cu.cuStreamSynchronize(stream))
    bad = {"null_fn": cu.cuLaunchHostFunc(stream, None, None),
           "flags": cu.cuStreamAddCallback(stream, callback, None, 1),
           "stream": cu.cuLaunchHostFunc(C.c_void_p(0xDEAD000), host_fn, None)}
    c.ok(cu.cuStreamDestroy_v2(stream))
    c.ok(cu.cuMemFreeHost(host))
    return {"seen": seen, "bad": bad}


def scenario_runtime_calls(c: Child, args: dict[str, Any]) -> dict[str, Any]:
    cu, out = c.cu, {}
    mode = C.c_int()
    c.ok(cu.cuModuleGetLoadingMode(C.byref(mode)))
    out["loading_mode"] = mode.value
    def ctx_id(ctx: C.c_void_p | None) -> int:
        v = C.c_ulonglong()
        c.ok(cu.cuCtxGetId(ctx, C.byref(v)))
        return v.value

    ids = [ctx_id(c.ctx), ctx_id(None)]
    other, oid = C.c_void_p(), C.c_ulonglong()
    c.ok(cu.cuCtxCreate_v4(C.byref(other), None, 0, 0))
    c.ok(cu.cuCtxGetId(other, C.byref(oid)))
    c.ok(cu.cuCtxDestroy_v2(other))
    c.ok(cu.cuCtxSetCurrent(c.ctx))
    out["ctx_ids_distinct"] = oid.value != ids[0] and ids[0] > 0
    out["ctx_id_current_matches"] = ids[0] == ids[1]
    c.ok(cu.cuDevicePrimaryCtxReset_v2(0))
    c.ok(cu.cuDevicePrimaryCtxRetain(C.byref(c.ctx), 0))
    c.ok(cu.cuCtxSetCurrent(c.ctx))
    out["primary_new_id_after_reset"] = ctx_id(None) not in (ids[0], oid.value)
    flags, dev, dev2 = C.c_uint(), C.c_int(), C.c_int(-1)
    c.ok(cu.cuCtxGetFlags(C.byref(flags)))
    c.ok(cu.cuCtxGetDevice(C.byref(dev)))
    c.ok(cu.cuCtxGetDevice_v2(C.byref(dev2), c.ctx))
    out["ctx_flags"], out["ctx_device"] = flags.value, [dev.value, dev2.value]
    out["ctx_sync_v2"] = [cu.cuCtxSynchronize_v2(None), cu.cuCtxSynchronize_v2(C.c_void_p(0xDEAD000))]

    # a library loaded with no context current is instantiated where it is first used
    c.ok(cu.cuCtxSetCurrent(None))
    lib, k, fn = C.c_void_p(), C.c_void_p(), C.c_void_p()
    c.ok(cu.cuLibraryLoadData(C.byref(lib), c.buffer(fatbin(fatbin_entry(KIND_PTX, PTX_VADD))), None, None, 0, None,
                              None, 0))
    c.ok(cu.cuLibraryGetKernel(C.byref(k), lib, b"fg_vadd"))
    no_ctx = cu.cuKernelGetFunction(C.byref(fn), k)
    c.ok(cu.cuCtxSetCurrent(c.ctx))
    out["lazy_library"] = [no_ctx, cu.cuKernelGetFunction(C.byref(fn), k), c.launch_vadd(k.value or 0, 64)]
    c.ok(cu.cuLibraryUnload(lib))
    lo, hi = C.c_int(), C.c_int()
    c.ok(cu.cuCtxGetStreamPriorityRange(C.byref(lo), C.byref(hi)))
    out["priority_range"] = [lo.value, hi.value]

    s1, s2 = C.c_void_p(), C.c_void_p()
    c.ok(cu.cuStreamCreateWithPriority(C.byref(s1), 1, -5))
    c.ok(cu.cuStreamCreate(C.byref(s2), 0))
    prio = C.c_int()
    c.ok(cu.cuStreamGetPriority(s1, C.byref(prio)))
    out["stream_priority"] = prio.value
    sid = [C.c_ulonglong() for _ in range(3)]
    c.ok(max(cu.cuStreamGetId(s, C.byref(v)) for s, v in zip((s1, s2, None), sid, strict=True)))
    ids3 = [v.value for v in sid]
    out["stream_ids"] = {"created_distinct": ids3[0] != ids3[1] and 0 not in ids3[:2], "legacy": ids3[2]}
    sctx, nctx, green = C.c_void_p(), C.c_void_p(), C.c_void_p(1)
    c.ok(cu.cuStreamGetCtx(s1, C.byref(sctx)))
    c.ok(cu.cuStreamGetCtx(None, C.byref(nctx)))
    c.ok(cu.cuStreamGetCtx_v2(s2, C.byref(sctx), C.byref(green)))
    out["stream_ctx"] = {"created": sctx.value == c.ctx.value, "null": nctx.value == c.ctx.value,
                         "green": green.value is None}
    status, info_status, cap_id = C.c_int(7), C.c_int(7), C.c_uint64(99)
    c.ok(cu.cuStreamIsCapturing(s1, C.byref(status)))
    c.ok(cu.cuStreamGetCaptureInfo_v3(s1, C.byref(info_status), C.byref(cap_id), None, None, None, None))
    mvs = [C.c_int(m) for m in (1, 2, 0)]
    c.ok(max(cu.cuThreadExchangeStreamCaptureMode(C.byref(mv)) for mv in mvs))
    modes = [mv.value for mv in mvs]
    out["capture"] = {"is": status.value, "info": info_status.value + cap_id.value, "modes": modes}

    # 2D memset and copy: a 5 x 3 region at pitch 16 inside a 64-byte allocation
    p = c.alloc(64)
    c.htod(p, bytes(64))
    c.ok(cu.cuMemsetD2D8Async(C.c_uint64(p + 1), C.c_size_t(16), 0xAB, C.c_size_t(5), C.c_size_t(3), s2))
    got = c.dtoh(p, 64)
    want = b"".join(b"\0" + b"\xab" * 5 + bytes(10) for _ in range(3))
    c.ok(cu.cuMemsetD2D32_v2(C.c_uint64(p + 48), C.c_size_t(8), 0x01020304, C.c_size_t(2), C.c_size_t(2)))
    out["memset2d"] = got == want + bytes(16) and c.dtoh(p, 64) == want + struct.pack("<I", 0x01020304) * 4
    src = bytes(range(40))
    dst = C.create_string_buffer(40)
    up = Memcpy2D(srcX=2, srcY=1, srcType=1, srcHost=C.cast(C.c_char_p(src), C.c_void_p), srcPitch=10,
                  dstX=0, dstY=0, dstType=2, dstDevice=p, dstPitch=8, width=6, height=3)
    c.ok(cu.cuMemcpy2D_v2(C.byref(up)))
    down = Memcpy2D(srcType=2, srcDevice=p, srcPitch=8, dstType=1, dstHost=C.cast(dst, C.c_void_p), dstPitch=6,
                    width=6, height=3)
    c.ok(cu.cuMemcpy2DAsync_v2(C.byref(down), s2))
    out["memcpy2d"] = dst.raw[:18] == src[12:18] + src[22:28] + src[32:38]
    too_far = Memcpy2D(srcType=2, srcDevice=p, srcPitch=32, dstType=1, dstHost=C.cast(dst, C.c_void_p), dstPitch=6,
                       width=6, height=3)  # rows at 0, 32, 64: past the 64-byte allocation
    narrow = Memcpy2D(srcType=2, srcDevice=p, srcPitch=4, dstType=1, dstHost=C.cast(dst, C.c_void_p), dstPitch=6,
                      width=6, height=3)  # pitch below the width
    out["memcpy2d_bad"] = [cu.cuMemcpy2DUnaligned_v2(C.byref(too_far)), cu.cuMemcpy2D_v2(C.byref(narrow))]

    # pointer attributes
    def attr(kind: int, ptr: int, ctype: type) -> tuple[int, Any]:
        v = ctype()
        return cu.cuPointerGetAttribute(C.byref(v), kind, C.c_uint64(ptr)), v.value

    q = c.alloc(4096)
    pctx = attr(1, q + 100, C.c_void_p)[1]
    start, size = attr(11, q + 100, C.c_uint64)[1], attr(12, q + 100, C.c_size_t)[1]
    device = {"type": attr(2, q + 100, C.c_uint)[1], "ordinal": attr(9, q, C.c_int)[1], "ctx": pctx == c.ctx.value,
              "range": (start, size) == (q, 4096), "host": attr(4, q, C.c_void_p)[0],
              "mapped": attr(13, q, C.c_uint)[1], "managed": attr(8, q, C.c_uint)[1]}
    h = C.c_void_p()
    c.ok(cu.cuMemAllocHost_v2(C.byref(h), C.c_size_t(256)))
    hp = h.value or 0
    host = {"type": attr(2, hp, C.c_uint)[1], "devptr_same": attr(3, hp + 8, C.c_uint64)[1] == hp + 8,
            "hostptr_same": attr(4, hp + 8, C.c_void_p)[1] == hp + 8}
    kinds = (C.c_int * 2)(2, 9)
    mt, ordinal = C.c_uint(5), C.c_int(5)
    data = (C.c_void_p * 2)(C.cast(C.byref(mt), C.c_void_p), C.cast(C.byref(ordinal), C.c_void_p))
    junk = C.create_string_buffer(16)
    unknown = {"single": attr(2, C.addressof(junk), C.c_uint)[0],
               "many": cu.cuPointerGetAttributes(2, kinds, data, C.c_uint64(C.addressof(junk))),
               "type": mt.value, "ordinal": ordinal.value}
    ids2 = [attr(7, x, C.c_ulonglong)[1] for x in (p, q, hp)]
    out["pointer"] = {"device": device, "host": host, "unknown": unknown,
                      "buffer_ids_distinct": len(set(ids2)) == 3 and 0 not in ids2}
    a = C.c_uint64()
    out["async_alloc"] = [cu.cuMemAllocAsync(C.byref(a), C.c_size_t(1024), s1),
                          cu.cuMemFreeAsync(a, s1), cu.cuMemFreeAsync(a, s1)]

    # occupancy and function attributes on a PTX function
    m = C.c_void_p()
    c.ok(cu.cuModuleLoadData(C.byref(m), c.buffer(PTX_VADD + b"\0")))
    f = c.function(m, "fg_vadd")
    calls: list[int] = []

    def b2d(block: int) -> int:
        calls.append(block)
        return 0

    b2d_fn = C.CFUNCTYPE(C.c_size_t, C.c_int)(b2d)
    grid, block = C.c_int(), C.c_int()
    c.ok(cu.cuOccupancyMaxPotentialBlockSize(C.byref(grid), C.byref(block), f, b2d_fn, C.c_size_t(0), 0))
    out["occupancy"] = {"block": block.value, "min_grid": grid.value, "callback_calls": len(calls)}
    v = C.c_int()
    out["func_attrs_all_ok"] = all(cu.cuFuncGetAttribute(C.byref(v), i, f) == SUCCESS for i in range(16)) and (
        cu.cuFuncSetAttribute(f, 9, 50) == SUCCESS and cu.cuFuncGetAttribute(C.byref(v), 9, f) == SUCCESS
        and v.value == 50 and cu.cuFuncSetAttribute(f, 4, 10) == INVALID_VALUE
        and cu.cuFuncSetCacheConfig(f, 1) == SUCCESS and cu.cuFuncSetCacheConfig(f, 9) == INVALID_VALUE)
    return out


SCENARIOS: dict[str, Callable[[Child, dict[str, Any]], dict[str, Any]]] = {
    "load_compare": scenario_load_compare,
    "load_codes": scenario_load_codes,
    "library": scenario_library,
    "hostfn": scenario_hostfn,
    "runtime_calls": scenario_runtime_calls,
}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]](Child(), json.loads(Path(sys.argv[2]).read_text()))
    print("RESULT " + json.dumps(result), flush=True)
