#!/usr/bin/env bash
# bench/gpu_run.sh OUT — the one command for the GPU host. Builds the native parts with the host's gcc and
# CUDA headers, starts a node server on the real GPU, runs the driver-API test program natively and through
# fargpu (outputs must match; the remote client must prove it never loaded the real driver), runs the
# microbenchmarks native and remote plus the loopback ping-pong floor, and writes JSON + logs to OUT.
# Python packages the host lacks come as wheels in .whl/ (see shared/device/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-${OUT:-/tmp/fargpu-out}}" && cd "${1:-${OUT:-/tmp/fargpu-out}}" && pwd)
REPO=$PWD
W=/tmp/fargpu-gpu; rm -rf "$W"; mkdir -p "$W"
log() { echo "== $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$W/site" .whl/*.whl || exit 1
fi
log "build native (cmake, CUDA headers from /usr/local/cuda/include)"
cmake -S . -B "$W/build" -DFARGPU_CUDA_INCLUDE=/usr/local/cuda/include -DCMAKE_BUILD_TYPE=Release >"$OUT/build.log" 2>&1 \
  && cmake --build "$W/build" -j 8 >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
# The package as installed: fargpu.* links to the source folders.
mkdir -p "$W/py/fargpu"
for f in fargpu/*.py; do ln -s "$REPO/$f" "$W/py/fargpu/"; done
for d in server protocol pool_manager; do ln -s "$REPO/$d" "$W/py/fargpu/$d"; done
export PYTHONPATH="$W/py:$W/site" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1
STUB="$W/build/stub"

log "build test programs"
bash tests/c/build_test_program.sh "$W/t" >"$OUT/build_tests.log" 2>&1 || { tail -20 "$OUT/build_tests.log"; exit 1; }
nvcc -ptx -arch=sm_90 -o "$W/bench_kernels.ptx" bench/kernels.cu || exit 1
INC=/usr/local/cuda/include
gcc -O2 -std=c11 -D_GNU_SOURCE -I"$INC" -o "$W/micro" bench/micro.c -L/usr/local/cuda/lib64/stubs -lcuda || exit 1
gcc -O2 -std=c11 -D_GNU_SOURCE -o "$W/pingpong" bench/pingpong.c -lpthread || exit 1

log "start node server (backend cuda)"
TOKEN=gpu-run-token
PORT=7311
FARGPU_TOKEN=$TOKEN python3 -P -m fargpu.server --backend cuda --listen 127.0.0.1:$PORT >"$OUT/server.log" 2>&1 &
SRV=$!
for i in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
remote() { env LD_LIBRARY_PATH="$STUB" LD_PRELOAD="$STUB/libcuda.so.1" FARGPU_SERVER=127.0.0.1:$PORT \
  FARGPU_TOKEN=$TOKEN FARGPU_PROOF_FILE="$OUT/proof.jsonl" "$@"; }

log "driver API test: native vs fargpu"
T="$W/t/driver_api_test $W/t/test_kernels.ptx $W/t/test_kernels.cubin"
$T >"$OUT/driver_api_native.txt" 2>"$OUT/driver_api_native.err"; NRC=$?
remote $T >"$OUT/driver_api_remote.txt" 2>"$OUT/driver_api_remote.err"; RRC=$?
if [ $NRC -ge 128 ]; then  # the real driver crashed on the made-up handle checks: skip those, both sides
  export FARGPU_TEST_SKIP_GARBAGE_HANDLES=1
  $T >"$OUT/driver_api_native.txt" 2>"$OUT/driver_api_native.err"; NRC=$?
  remote $T >"$OUT/driver_api_remote.txt" 2>"$OUT/driver_api_remote.err"; RRC=$?
fi
diff "$OUT/driver_api_native.txt" "$OUT/driver_api_remote.txt" >"$OUT/driver_api.diff"; DRC=$?
echo "native rc=$NRC remote rc=$RRC diff rc=$DRC"; tail -3 "$OUT/driver_api_remote.txt"; head -20 "$OUT/driver_api.diff"

log "microbenchmarks"
"$W/pingpong" >"$OUT/pingpong.json"
"$W/micro" "$W/bench_kernels.ptx" >"$OUT/micro_native.json" 2>"$OUT/micro_native.err"
remote "$W/micro" "$W/bench_kernels.ptx" >"$OUT/micro_remote.json" 2>"$OUT/micro_remote.err"
cat "$OUT/micro_native.err" "$OUT/micro_remote.err" | tail -5
kill $SRV; wait $SRV 2>/dev/null
python3 bench/report.py "$OUT" --native-rc $NRC --remote-rc $RRC --diff-rc $DRC
(cd "$OUT" && tar czf /tmp/fargpu-logs.tgz . ; mv /tmp/fargpu-logs.tgz logs.tgz; find . -type f ! -name gpu_run.json ! -name logs.tgz ! -name driver_api.diff -delete)
python3 bench/plot_gpu_run.py "$OUT/gpu_run.json" 2>/dev/null || echo "(no plot: matplotlib is not installed here)"
