"""The demo CUDA program `fargpu demo` runs through `fargpu run`: a vector add written against the CUDA
driver API (ctypes), loading whatever libcuda.so.1 the loader finds — under `fargpu run`, the fargpu stub.
It prints the device, copies 1M floats each way, launches `fg_vadd` from PTX and checks every element.
Usage: python -m fargpu.demo_program [PTX]"""

from __future__ import annotations

import array
import ctypes
import sys
import time
from pathlib import Path

PTX = Path(__file__).resolve().parent / "generated" / "test_kernels.ptx"


def main() -> int:
    cu = ctypes.CDLL("libcuda.so.1")

    def ok(r: int, what: str) -> None:
        if r != 0:
            name = ctypes.c_char_p()
            cu.cuGetErrorName(r, ctypes.byref(name))
            raise SystemExit(f"demo: {what} failed: {name.value.decode() if name.value else r}")

    ok(cu.cuInit(0), "cuInit")
    dev_name = ctypes.create_string_buffer(128)
    ok(cu.cuDeviceGetName(dev_name, 128, 0), "cuDeviceGetName")
    ctx = ctypes.c_void_p()
    ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "cuDevicePrimaryCtxRetain")
    ok(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    print(f"device 0: {dev_name.value.decode()}")
    n = 1 << 20
    a = array.array("f", (float(i) for i in range(n)))
    b = array.array("f", (2.0 * i for i in range(n)))
    nbytes = n * 4
    ptrs = []
    for _ in range(3):
        p = ctypes.c_uint64()
        ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(nbytes)), "cuMemAlloc")
        ptrs.append(p)
    t0 = time.perf_counter()
    ok(cu.cuMemcpyHtoD_v2(ptrs[0], ctypes.c_void_p(a.buffer_info()[0]), ctypes.c_size_t(nbytes)), "cuMemcpyHtoD a")
    ok(cu.cuMemcpyHtoD_v2(ptrs[1], ctypes.c_void_p(b.buffer_info()[0]), ctypes.c_size_t(nbytes)), "cuMemcpyHtoD b")
    mod = ctypes.c_void_p()
    image = (Path(sys.argv[1]) if len(sys.argv) > 1 else PTX).read_bytes() + b"\0"
    ok(cu.cuModuleLoadData(ctypes.byref(mod), image), "cuModuleLoadData")
    fn = ctypes.c_void_p()
    ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"fg_vadd"), "cuModuleGetFunction")
    count = ctypes.c_int(n)
    params = (ctypes.c_void_p * 4)(*(ctypes.addressof(x) for x in (*ptrs, count)))
    ok(cu.cuLaunchKernel(fn, (n + 255) // 256, 1, 1, 256, 1, 1, 0, None, params, None), "cuLaunchKernel")
    c = array.array("f", bytes(nbytes))
    ok(cu.cuMemcpyDtoH_v2(ctypes.c_void_p(c.buffer_info()[0]), ptrs[2], ctypes.c_size_t(nbytes)), "cuMemcpyDtoH")
    elapsed = time.perf_counter() - t0
    bad = sum(1 for i in range(n) if c[i] != 3.0 * i)
    for p in ptrs:
        ok(cu.cuMemFree_v2(p), "cuMemFree")
    print(f"vector add of {n} floats: {'all correct' if bad == 0 else f'{bad} WRONG'} "
          f"(c[12345] = {c[12345]:.1f}); copies + launch took {elapsed * 1e3:.1f} ms")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
