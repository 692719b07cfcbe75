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
gpu_prepare || exit 1  # one build per device call, shared with the other GPU scripts (bench/gpu_prepare.sh)
echo "== where the driver puts addresses (bench/probe_va.c): plain twice, without randomisation twice, and biased"
if [ "${PARK_PROBE:-1}" != 0 ] && gcc -std=gnu11 -O2 -I"$CUDA_INC" bench/probe_va.c -o "$W/probe_va" -ldl; then
  {
    printf '{"date": "%s", "commit": "%s", "runs": {' "$(date -u +%F)" "$FARGPU_COMMIT"
    printf '"aslr_1": %s, ' "$("$W/probe_va" || echo null)"
    printf '"aslr_2": %s, ' "$("$W/probe_va" || echo null)"
    printf '"no_aslr_1": %s, ' "$(setarch -R "$W/probe_va" || echo null)"
    printf '"no_aslr_2": %s, ' "$(setarch -R "$W/probe_va" || echo null)"
    printf '"no_aslr_bias_256": %s}}\n' "$(PROBE_BIAS_MB=256 setarch -R "$W/probe_va" || echo null)"
  } > "$OUT/probe_va.json"
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1]))['runs']; print({k: (v or {}).get('first_fit') for k, v in d.items()})" "$OUT/probe_va.json" || true
  # the large mappings the driver makes on the way (bench/probe_mmap_log.c): how it reserves its address range
  if gcc -shared -fPIC -O2 bench/probe_mmap_log.c -o "$W/mmaplog.so" -ldl; then
    LD_PRELOAD="$W/mmaplog.so" setarch -R "$W/probe_va" 2>&1 >/dev/null | head -200 > "$OUT/probe_va_mmaps.txt"
    head -5 "$OUT/probe_va_mmaps.txt"
  fi
fi
echo "== park benchmark"
PYTHONPATH="$W/py:$W/site:$REPO/bench" FARGPU_NATIVE_DIR="$W/build" PYTHONUNBUFFERED=1 FARGPU_COMMIT=$FARGPU_COMMIT \
  "$PY" bench/park_gpu.py --out "$OUT" --stub-dir "$W/build/stub" --python "$PY" "$@" 2>"$OUT/park_stderr.log"
RC=$?
tail -40 "$OUT/park_stderr.log" | grep -v "^fargpu-worker" | tail -15
exit $RC
