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
. bench/gpu_prepare.sh
# bench/gpu_all.sh runs the paging bench first, on the same tree: its build is reused when no source is newer
if [ -n "${PARK_REBUILD:-}" ]; then gpu_prepare || exit 1; else gpu_prepare /tmp/fargpu-paging/build || exit 1; fi
echo "== park benchmark"
PYTHONPATH="$W/py:$W/site:$REPO/bench" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1 FARGPU_COMMIT=$FARGPU_COMMIT \
  "$PY" bench/park_gpu.py --out "$OUT" --stub-dir "$W/build/stub" --python "$PY" "$@" 2>"$OUT/park_stderr.log"
RC=$?
tail -40 "$OUT/park_stderr.log" | grep -v "^fargpu-worker" | tail -15
exit $RC
