#!/usr/bin/env bash
# bench/scale_zero_gpu.sh OUT [scale_zero_gpu.py options] — scale to zero on the GPU host in one command: builds the
# native parts with the host's gcc and CUDA headers (as bench/park_gpu.sh does), then runs bench/scale_zero_gpu.py
# (a pool manager with the local provider and no node; each lease starts a node server on the GPU; a client's first
# kernel through the stub) and leaves OUT/scale_zero_gpu.json and the logs in OUT. The pool manager needs packages
# the GPU host lacks: `bash bench/gpu_wheels.sh` puts them into .whl/ first, grpcio at the version pyproject.toml
# pins included (the shared bundler drops it because the host has an older one, which the generated pool_pb2_grpc.py
# refuses at import). --backend sim is a dry run. FARGPU_COMMIT names the commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/scale_zero_gpu.sh OUT [options]}" && cd "$1" && pwd)
shift
REPO=$PWD
W=${FARGPU_BENCH_WORK:-/tmp/fargpu-scale-zero}; rm -rf "$W"; mkdir -p "$W"  # FARGPU_BENCH_WORK: another work folder
PY=${PYTHON:-python3}
. bench/gpu_prepare.sh
gpu_prepare || exit 1
# Bytecode now, as an installed node has it: otherwise the first node server and worker of the run compile it.
"$PY" -m compileall -q "$W/py" "$W/py/fargpu/server/" "$W/py/fargpu/protocol/" "$W/py/fargpu/pool_manager/" "$W/site" \
  >/dev/null 2>&1 || true  # (compileall skips linked folders inside the ones it is given)
echo "== scale to zero and back"
PYTHONPATH="$W/py:$W/site" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1 FARGPU_COMMIT=$FARGPU_COMMIT \
  XDG_STATE_HOME="$W/state" "$PY" bench/scale_zero_gpu.py --out "$OUT" --stub-dir "$W/build/stub" --python "$PY" "$@" \
  2>"$OUT/scale_zero_stderr.log"
RC=$?
tail -20 "$OUT/scale_zero_stderr.log" | tail -8
exit $RC
