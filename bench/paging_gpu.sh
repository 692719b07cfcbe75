#!/usr/bin/env bash
# bench/paging_gpu.sh OUT [paging_gpu.py options] — paging on the GPU host in one command: builds the native parts
# with the host's gcc and CUDA headers (as bench/gpu_run.sh does), then runs bench/paging_gpu.py (a node agent on
# the real GPU in its process, clients through the stub) and leaves OUT/paging_gpu.json and the logs in OUT; then
# bench/paging_disk.py (page-in from disk against the raw read of the same spill file, two read depths) leaves
# OUT/disk-depth*/paging_disk.json.
# FARGPU_COMMIT=<sha> names the commit in the results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/paging_gpu.sh OUT [options]}" && cd "$1" && pwd)
shift
REPO=$PWD
W=/tmp/fargpu-paging; rm -rf "$W"; mkdir -p "$W"
PY=${PYTHON:-python3}
. bench/gpu_prepare.sh
gpu_prepare || exit 1
echo "== paging benchmark"
PYTHONPATH="$W/py:$W/site:$REPO/bench" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1 FARGPU_COMMIT=$FARGPU_COMMIT \
  "$PY" bench/paging_gpu.py --out "$OUT" --stub-dir "$W/build/stub" --python "$PY" "$@" 2>"$OUT/paging_stderr.log"
RC=$?
if [ "${PAGING_DISK_SWEEP:-1}" != 0 ]; then
  # Page-in from disk against the raw read of the same spill file, with the worker reading the way the yardstick
  # does (one 64 MiB read at a time) and its default way (two 32 MiB reads in flight): which one this disk likes.
  echo "== disk paging vs the same file's raw read (bench/paging_disk.py; PAGING_DISK_SWEEP=0 skips it)"
  for cfg in 1:64 2:32; do
    D=${cfg%%:*} C=${cfg##*:}
    FARGPU_SPILL_READ_DEPTH=$D FARGPU_SPILL_CHUNK_MB=$C PYTHONPATH="$W/py:$W/site:$REPO/bench" FARGPU_NATIVE_DIR="$W/build" \
      PYTHONUNBUFFERED=1 FARGPU_COMMIT=$FARGPU_COMMIT "$PY" bench/paging_disk.py "$OUT/disk-depth$D-chunk${C}MiB" \
      --backend cuda --gib 2 --cycles 2 --stub-dir "$W/build/stub" --spill-dir /tmp/fargpu-spill --python "$PY" \
      2>"$OUT/paging_disk_depth$D.log" | tail -12 || RC=1
  done
fi
"$PY" bench/plot_paging.py "$OUT/paging_gpu.json" 2>/dev/null || echo "(no plot: matplotlib is not installed here)"
tail -40 "$OUT/paging_stderr.log" | grep -v "^fargpu-worker" | tail -15
exit $RC
