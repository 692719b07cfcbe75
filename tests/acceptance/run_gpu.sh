#!/usr/bin/env bash
# tests/acceptance/run_gpu.sh OUT [acceptance.py options...] — the acceptance suite in one command on the GPU
# host: builds the native parts (as bench/gpu_run.sh does), starts a node server on the real GPU, runs
# bench/acceptance.py (every CUDA program in both cudart modes and every PyTorch script, native vs through
# fargpu, outputs compared, proof files checked), stops the server, and leaves OUT/acceptance.json, the
# server log and every run's logs in OUT. Extra options go to bench/acceptance.py (--only PATTERN,
# --skip-torch, --quick, --timeout S, --skip-module-cache). Exit status: acceptance.py's (0 when every case passed).
# FARGPU_COMMIT=<sha> names the commit in the results (pass it when the tree was copied without its git state).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=$(mkdir -p "${1:?usage: tests/acceptance/run_gpu.sh OUT [options]}" && cd "$1" && pwd)
shift
REPO=$PWD
W=/tmp/fargpu-acceptance; rm -rf "$W"; mkdir -p "$W"
PY=${PYTHON:-python3}   # on the GPU host: /opt/torch/.venv's python 3.12 (torch, torchvision, transformers)
log() { echo "== $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$W/site" .whl/*.whl || exit 1
fi
log "build native (cmake, CUDA headers from /usr/local/cuda/include)"
cmake -S . -B "$W/build" -DFARGPU_CUDA_INCLUDE=/usr/local/cuda/include -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$PY")" >"$OUT/build.log" 2>&1 \
  && cmake --build "$W/build" -j 8 >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
mkdir -p "$W/py/fargpu"
for f in fargpu/*.py; do ln -s "$REPO/$f" "$W/py/fargpu/"; done
for d in server protocol pool_manager; do ln -s "$REPO/$d" "$W/py/fargpu/$d"; done

log "start node server (backend cuda)"
TOKEN=acceptance-token
PORT=${FARGPU_ACCEPTANCE_PORT:-7312}
# A fresh module cache, so the suite's cache measurement starts cold.
PYTHONPATH="$W/py:$W/site" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1 FARGPU_TOKEN=$TOKEN \
  FARGPU_MODULE_CACHE="$W/module-cache" \
  "$PY" -P -m fargpu.server --backend cuda --listen 127.0.0.1:$PORT --metrics-port 0 >"$OUT/server.log" 2>&1 &
SRV=$!
trap 'kill $SRV 2>/dev/null; wait $SRV 2>/dev/null' EXIT
for _ in $(seq 1 150); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
(echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null || { echo "node server did not start"; tail -20 "$OUT/server.log"; exit 1; }

log "acceptance suite"
# The commit the results name: FARGPU_COMMIT when given (a copied tree may carry stale git metadata), else HEAD,
# marked "+dirty" when the tree differs from it.
if [ -z "${FARGPU_COMMIT:-}" ]; then
  FARGPU_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && FARGPU_COMMIT="$FARGPU_COMMIT+dirty"
fi
FARGPU_COMMIT=$FARGPU_COMMIT \
  "$PY" bench/acceptance.py --out "$OUT" --stub-dir "$W/build/stub" --server 127.0.0.1:$PORT --token $TOKEN \
  --server-log "$OUT/server.log" \
  --python "$PY" "$@"
RC=$?
log "acceptance.py exited $RC; results in $OUT/acceptance.json"
"$PY" bench/plot_acceptance.py "$OUT/acceptance.json" 2>/dev/null || echo "(no plot: matplotlib is not installed here)"
exit $RC
