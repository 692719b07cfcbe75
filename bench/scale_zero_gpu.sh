#!/usr/bin/env bash
# bench/scale_zero_gpu.sh OUT [scale_zero_gpu.py options] — scale to zero on the GPU host in one command: builds the
# native parts with the host's gcc and CUDA headers (as bench/park_gpu.sh does), then runs bench/scale_zero_gpu.py
# (a pool manager with the local provider and no node; each lease starts a node server on the GPU; a client's first
# kernel through the stub) and leaves OUT/scale_zero_gpu.json and the logs in OUT. The pool manager needs packages
# the GPU host lacks: bundle them into .whl/ first (shared/device/bundle-wheels.sh fastapi uvicorn fastapi-offline
# typer rich httpx redis hiredis prometheus-client boto3). --backend sim is a dry run. FARGPU_COMMIT names the commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/scale_zero_gpu.sh OUT [options]}" && cd "$1" && pwd)
shift
REPO=$PWD
W=/tmp/fargpu-scale-zero; rm -rf "$W"; mkdir -p "$W"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$W/site" .whl/*.whl || exit 1
fi
CUDA_INC=${FARGPU_CUDA_INCLUDE:-/usr/local/cuda/include}
echo "== build native"
cmake -S . -B "$W/build" -DFARGPU_CUDA_INCLUDE="$CUDA_INC" -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$PY")" >"$OUT/build.log" 2>&1 \
  && cmake --build "$W/build" -j 8 >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
mkdir -p "$W/py/fargpu"
for f in fargpu/*.py; do ln -s "$REPO/$f" "$W/py/fargpu/"; done
for d in server protocol pool_manager; do ln -s "$REPO/$d" "$W/py/fargpu/$d"; done
if [ -z "${FARGPU_COMMIT:-}" ]; then
  FARGPU_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && FARGPU_COMMIT="$FARGPU_COMMIT+dirty"
fi
echo "== scale to zero and back"
PYTHONPATH="$W/py:$W/site" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1 FARGPU_COMMIT=$FARGPU_COMMIT \
  XDG_STATE_HOME="$W/state" "$PY" bench/scale_zero_gpu.py --out "$OUT" --stub-dir "$W/build/stub" --python "$PY" "$@" \
  2>"$OUT/scale_zero_stderr.log"
RC=$?
tail -20 "$OUT/scale_zero_stderr.log" | tail -8
exit $RC
