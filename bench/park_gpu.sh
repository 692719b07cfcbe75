#!/usr/bin/env bash
# bench/park_gpu.sh OUT [park_gpu.py options] — parking on the GPU host in one command: builds the native parts
# with the host's gcc and CUDA headers (as bench/gpu_run.sh does), then runs bench/park_gpu.py (two node servers on
# the real GPU, a PyTorch client through the stub) and leaves OUT/park_gpu.json and the logs in OUT.
# FARGPU_COMMIT=<sha> names the commit in the results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/park_gpu.sh OUT [options]}" && cd "$1" && pwd)
shift
REPO=$PWD
W=/tmp/fargpu-park; rm -rf "$W"; mkdir -p "$W"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$W/site" .whl/*.whl || exit 1
fi
# bench/gpu_all.sh runs the paging bench first, on the same tree: its build is reused when no source is newer
PB=/tmp/fargpu-paging/build
if [ -z "${PARK_REBUILD:-}" ] && [ -f "$PB/stub/libcuda.so.1" ] && [ -f "$PB/libfargpu_replay.so" ] \
   && [ -z "$(find client_stub server protocol CMakeLists.txt -newer "$PB/stub/libcuda.so.1" \( -name '*.[ch]' -o -name CMakeLists.txt \) 2>/dev/null | head -1)" ]; then
  echo "== reusing the paging bench's build of this commit"; mkdir -p "$W"; ln -s /tmp/fargpu-paging/build "$W/build"
else
echo "== build native"
cmake -S . -B "$W/build" -DFARGPU_CUDA_INCLUDE=/usr/local/cuda/include -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$PY")" >"$OUT/build.log" 2>&1 \
  && cmake --build "$W/build" -j 8 >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
mkdir -p "$W/py/fargpu"
for f in fargpu/*.py; do ln -s "$REPO/$f" "$W/py/fargpu/"; done
for d in server protocol pool_manager; do ln -s "$REPO/$d" "$W/py/fargpu/$d"; done
if [ -z "${FARGPU_COMMIT:-}" ]; then
  FARGPU_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && FARGPU_COMMIT="$FARGPU_COMMIT+dirty"
fi
echo "== park benchmark"
PYTHONPATH="$W/py:$W/site:$REPO/bench" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1 FARGPU_COMMIT=$FARGPU_COMMIT \
  "$PY" bench/park_gpu.py --out "$OUT" --stub-dir "$W/build/stub" --python "$PY" "$@" 2>"$OUT/park_stderr.log"
RC=$?
tail -40 "$OUT/park_stderr.log" | grep -v "^fargpu-worker" | tail -15
exit $RC
