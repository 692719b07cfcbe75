#!/usr/bin/env bash
# build_test_program.sh - builds the driver API test program and its kernels.
#
#   tests/c/build_test_program.sh OUTDIR [LIBCUDA_DIR]
#
# Writes OUTDIR/test_kernels.ptx and OUTDIR/test_kernels.cubin (nvcc, -arch=sm_90) and OUTDIR/driver_api_test
# (gcc -std=c11 -Wall -Wextra -Werror, linked with -lcuda). The binary needs libcuda.so.1 at run time and finds
# it through LD_LIBRARY_PATH: the real driver, the fargpu stub, or the simulated device.
#
# Link-time libcuda: LIBCUDA_DIR if given (a folder with libcuda.so whose SONAME is libcuda.so.1), else the
# toolkit's lib64/stubs, else a link-only stub generated here from the symbols the program uses (SONAME
# libcuda.so.1, every function a no-op; it is never loaded at run time).
#
# Finding CUDA: nvcc from $CUDA_HOME/bin, PATH or /usr/local/cuda/bin; cuda.h from $FARGPU_CUDA_INCLUDE,
# $CUDA_HOME/include, /usr/local/cuda/include, or the nvidia-cuda-runtime wheel (as CMakeLists.txt does).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUTDIR [LIBCUDA_DIR]" >&2
    exit 2
fi
OUTDIR=$(mkdir -p "$1" && cd "$1" && pwd)
LIBCUDA_DIR=${2:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CC=${CC:-gcc}

NVCC=""
for cand in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
    if [[ -n "$cand" && -x "$cand" ]]; then NVCC=$cand; break; fi
done
if [[ -z "$NVCC" ]]; then
    echo "build_test_program.sh: nvcc not found (set CUDA_HOME or put nvcc on PATH)" >&2
    exit 3
fi
CUDA_ROOT=$(cd "$(dirname "$NVCC")/.." && pwd)

CUDA_INC=""
for cand in "${FARGPU_CUDA_INCLUDE:-}" "${CUDA_HOME:+$CUDA_HOME/include}" "$CUDA_ROOT/include" /usr/local/cuda/include; do
    if [[ -n "$cand" && -f "$cand/cuda.h" ]]; then CUDA_INC=$cand; break; fi
done
if [[ -z "$CUDA_INC" ]]; then
    CUDA_INC=$(python3 -c "import nvidia, os; print(next(os.path.join(p, 'cu13', 'include') for p in nvidia.__path__ if os.path.exists(os.path.join(p, 'cu13', 'include', 'cuda.h'))))" 2>/dev/null || true)
fi
if [[ -z "$CUDA_INC" || ! -f "$CUDA_INC/cuda.h" ]]; then
    echo "build_test_program.sh: cuda.h not found (set FARGPU_CUDA_INCLUDE or CUDA_HOME)" >&2
    exit 3
fi

# Kernels: PTX and an sm_90 cubin.
"$NVCC" -arch=sm_90 -ptx -o "$OUTDIR/test_kernels.ptx" "$HERE/kernels/test_kernels.cu"
"$NVCC" -arch=sm_90 -cubin -o "$OUTDIR/test_kernels.cubin" "$HERE/kernels/test_kernels.cu"

# The program.
"$CC" -std=c11 -O2 -Wall -Wextra -Werror -I"$HERE" -I"$CUDA_INC" -c "$HERE/driver_api_test.c" -o "$OUTDIR/driver_api_test.o"

if [[ -z "$LIBCUDA_DIR" && -f "$CUDA_ROOT/lib64/stubs/libcuda.so" ]]; then
    LIBCUDA_DIR="$CUDA_ROOT/lib64/stubs"
fi
if [[ -z "$LIBCUDA_DIR" ]]; then
    LIBCUDA_DIR="$OUTDIR/link-stub"
    mkdir -p "$LIBCUDA_DIR"
    nm -u "$OUTDIR/driver_api_test.o" | awk '$1 == "U" && $2 ~ /^cu/ { print "void " $2 "(void) {}" }' > "$LIBCUDA_DIR/libcuda_link_stub.c"
    "$CC" -shared -fPIC -o "$LIBCUDA_DIR/libcuda.so" -Wl,-soname,libcuda.so.1 "$LIBCUDA_DIR/libcuda_link_stub.c"
fi
"$CC" "$OUTDIR/driver_api_test.o" -L"$LIBCUDA_DIR" -lcuda -o "$OUTDIR/driver_api_test"
echo "built $OUTDIR/driver_api_test, $OUTDIR/test_kernels.ptx, $OUTDIR/test_kernels.cubin"
