# bench/gpu_prepare.sh — sourced by the GPU scripts (bench/paging_gpu.sh, park_gpu.sh, scale_zero_gpu.sh,
# transport_gpu.sh): the set-up they share. With REPO, W (a fresh work folder), PY and OUT set, `gpu_prepare
# [BUILD_DIR]` installs the wheels in .whl/ (packages the GPU host lacks) into $W/site, builds the native parts with
# the host's gcc and CUDA headers into BUILD_DIR (default $FARGPU_SHARED_BUILD, else /tmp/fargpu-shared-build), unless
# a build of the same sources is already there (another script of the same device call made it), links it as
# $W/build, lays out the Python package under $W/py, and exports FARGPU_COMMIT (from git when not given).
# CUDA_INC: the CUDA headers (FARGPU_CUDA_INCLUDE, else /usr/local/cuda/include).
# For the scripts that run bench programs natively and through fargpu (multigpu_gpu.sh, small_calls.sh,
# tls_cost_gpu.sh, transport_gpu.sh), after gpu_prepare: `gpu_bench_env` (BACKEND set) exports the Python and native
# paths, sets STUB (the stub's folder) and NATIVE (the command prefix of a native run: with --backend sim the
# simulated device loaded directly as libcuda.so.1); `gpu_build_transport` builds $W/transport (bench/transport.c);
# `gpu_bench_kernels` builds $W/bench_kernels.ptx (bench/kernels.cu; empty without nvcc) and sets KERNELS to
# --no-kernels unless kernels can run (nvcc and --backend cuda).
CUDA_INC=${CUDA_INC:-${FARGPU_CUDA_INCLUDE:-/usr/local/cuda/include}}

gpu_prepare() {
  local build=${1:-${FARGPU_SHARED_BUILD:-/tmp/fargpu-shared-build}}
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$W/site" .whl/*.whl || return 1
  fi
  if [ -f "$build/stub/libcuda.so.1" ] && [ -f "$build/libfargpu_replay.so" ] \
     && [ -z "$(find client_stub server protocol CMakeLists.txt -newer "$build/stub/libcuda.so.1" \
                \( -name '*.[ch]' -o -name CMakeLists.txt \) 2>/dev/null | head -1)" ]; then
    echo "== reusing the build of these sources in $build"
  else
    echo "== build native (into $build)"
    rm -rf "$build"
    cmake -S . -B "$build" -DFARGPU_CUDA_INCLUDE="$CUDA_INC" -DCMAKE_BUILD_TYPE=Release \
      -DPython_EXECUTABLE="$(command -v "$PY")" >"$OUT/build.log" 2>&1 \
      && cmake --build "$build" -j 8 >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; return 1; }
  fi
  ln -s "$build" "$W/build"
  mkdir -p "$W/py/fargpu"
  local f d
  for f in fargpu/*.py; do ln -s "$REPO/$f" "$W/py/fargpu/"; done
  for d in server protocol pool_manager; do ln -s "$REPO/$d" "$W/py/fargpu/$d"; done
  if [ -z "${FARGPU_COMMIT:-}" ]; then
    FARGPU_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && FARGPU_COMMIT="$FARGPU_COMMIT+dirty"
  fi
  export FARGPU_COMMIT
}

gpu_bench_env() {
  export PYTHONPATH="$W/py:$W/site" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1
  STUB="$W/build/stub"
  NATIVE=(env)
  if [ "$BACKEND" = sim ]; then  # "native" = the simulated device loaded directly as libcuda.so.1
    mkdir -p "$W/simdrv" && ln -s "$W/build/libfargpu_sim.so" "$W/simdrv/libcuda.so.1"
    NATIVE=(env LD_LIBRARY_PATH="$W/simdrv")
  fi
}

gpu_build_transport() {
  local link="-L$STUB -l:libcuda.so.1"  # same soname: the loader picks the driver or the stub at run time
  [ -e /usr/local/cuda/lib64/stubs/libcuda.so ] && link="-L/usr/local/cuda/lib64/stubs -lcuda"
  gcc -O2 -std=c11 -D_GNU_SOURCE -I"$CUDA_INC" -o "$W/transport" bench/transport.c $link
}

gpu_bench_kernels() {
  KERNELS=--no-kernels
  if command -v nvcc >/dev/null && nvcc -ptx -arch=sm_90 -o "$W/bench_kernels.ptx" bench/kernels.cu 2>"$OUT/nvcc.log"; then
    [ "$BACKEND" = cuda ] && KERNELS=""  # the simulated device runs no user kernel
  else
    : >"$W/bench_kernels.ptx"
  fi
}
