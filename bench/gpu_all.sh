#!/usr/bin/env bash
# bench/gpu_all.sh OUT — the GPU proofs in one device call, most important first, each bounded (seconds from the
# environment) so that one that hangs leaves time for the rest, and all of them within one call's 600 s: parking
# with the address probe (issue 12), paging (issue 11), the bulk-data transports and small calls (issue 13,
# --quick unless TRANSPORT_ARGS says otherwise), after a probe of which calls invalidate a stream capture (bench/probe_capture.sh, CAPTURE_PROBE_S).
# Off by default: scale to zero and back (issue 12, SCALE_S), what TLS costs (issue 15, TLS_S) and the
# acceptance programs (quick, no torch; ACCEPTANCE_S; ACCEPTANCE_ARGS picks its cases). Each leaves its JSON and
# logs in its own folder under OUT and prints its last lines; at the end everything is packed into OUT/all.tgz
# (bench/gpu_pack.sh). A part whose budget is 0 is skipped. FARGPU_COMMIT=<sha> names the commit (the device
# copy's git HEAD may be stale). The packages the GPU host lacks travel in .whl/: fill it with `bash bench/gpu_wheels.sh`
# and pass carry: [".whl"] to the device.
set -u
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/gpu_all.sh OUT}" && cd "$1" && pwd)
part() {  # part NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  [ "$secs" -gt 0 ] || { echo "== $name skipped"; return; }
  echo "== $name (at most ${secs} s)"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $?"
  tail -"${TAIL_LINES:-6}" "$OUT/$name.log"
}
part capture_probe "${CAPTURE_PROBE_S:-30}" bash bench/probe_capture.sh "$OUT/capture_probe"
# shellcheck disable=SC2086
part park "${PARK_S:-120}" bash bench/park_gpu.sh "$OUT/park"
part paging "${PAGING_S:-300}" bash bench/paging_gpu.sh "$OUT/paging" ${PAGING_ARGS:---sizes 1,8,32 --disk-bytes 4294967296}
part scale_zero "${SCALE_S:-0}" bash bench/scale_zero_gpu.sh "$OUT/scale_zero"
# shellcheck disable=SC2086
part transport "${TRANSPORT_S:-150}" bash bench/transport_gpu.sh "$OUT/transport" ${TRANSPORT_ARGS---quick}
part tls "${TLS_S:-0}" bash bench/tls_cost_gpu.sh "$OUT/tls" --quick
# shellcheck disable=SC2086
part acceptance "${ACCEPTANCE_S:-0}" bash tests/acceptance/run_gpu.sh "$OUT/acceptance" ${ACCEPTANCE_ARGS:---quick --skip-torch}
# The device tool brings back 8 files at most: everything goes into OUT/all.tgz (GPU_PACK=0 leaves OUT as it is).
[ "${GPU_PACK:-1}" = 0 ] || bash bench/gpu_pack.sh "$OUT"
exit 0
