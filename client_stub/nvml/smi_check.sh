#!/usr/bin/env bash
# client_stub/nvml/smi_check.sh [OUT] — for the GPU host: runs the real nvidia-smi (-L, plain, plain with the
# node's driver version, -q, and a traced plain run) with libnvidia-ml.so.1 resolved to the fargpu NVML shim
# through LD_LIBRARY_PATH, against a node server that is already running, and shows for each run which
# libnvidia-ml / libcuda the process loaded (LD_DEBUG=libs) and mapped at exit (the stub's FARGPU_PROOF_FILE).
#
#   PORT=7311 T=gpu-run-token [W=/tmp/fargpu-gpu] [SMI=nvidia-smi] bash client_stub/nvml/smi_check.sh /tmp/smi-out
#
# PORT, T: the node server's port on 127.0.0.1 and its token. W: the folder whose build/stub holds the stub and
# the shim (bench/gpu_run.sh builds into /tmp/fargpu-gpu). Everything lands in OUT; the summary goes to stdout.
set -u
OUT=$(mkdir -p "${1:-/tmp/smi-check}" && cd "${1:-/tmp/smi-check}" && pwd) || exit 1
: "${PORT:?set PORT to the node server port}" "${T:?set T to the node server token}"
W=${W:-/tmp/fargpu-gpu}
SHIM=$(cd "$W/build/stub" 2>/dev/null && pwd -P) || { echo "no $W/build/stub: build first (cmake)"; exit 1; }
SMI=$(command -v "${SMI:-nvidia-smi}") || { echo "nvidia-smi not found"; exit 1; }
nm -D --defined-only "$SHIM/libnvidia-ml.so.1" | grep -q ' nvmlInternalGetExportTable$' \
  || { echo "$SHIM/libnvidia-ml.so.1 does not define nvmlInternalGetExportTable: rebuild it"; exit 1; }

echo "== native (the real NVML): $SMI"
"$SMI" -L 2>&1 | tee "$OUT/native-L.txt"
DRV=$("$SMI" --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
[[ "$DRV" =~ ^[0-9][0-9.]*$ ]] || DRV=
echo "native driver version: ${DRV:-unknown (the plain run with FARGPU_NVML_DRIVER_VERSION is skipped)}"

# shim NAME [VAR=VALUE ...] -- [nvidia-smi arguments]: one nvidia-smi run through the shim.
shim() {
  local name=$1 vars=() rc; shift
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do vars+=("$1"); shift; done
  shift
  rm -f "$OUT/$name".*
  env -u FARGPU_POOL_URL -u LD_PRELOAD LD_LIBRARY_PATH="$SHIM" FARGPU_SERVER="127.0.0.1:$PORT" FARGPU_TOKEN="$T" \
    FARGPU_LOG=info FARGPU_PROOF_FILE="$OUT/$name.proof" LD_DEBUG=libs LD_DEBUG_OUTPUT="$OUT/$name.ld" \
    ${vars[@]+"${vars[@]}"} timeout 120 "$SMI" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
  rc=$?
  echo
  echo "===== nvidia-smi $* [$name${vars[*]+ ${vars[*]}}] rc=$rc"
  cat "$OUT/$name.out"
  echo "----- stderr, fargpu-nvml lines ($(grep -c . "$OUT/$name.err") lines in all, $OUT/$name.err):"
  grep "fargpu-nvml" "$OUT/$name.err" | grep -v "nvidia-smi private slot [0-9]*(" | head -60
  echo "----- libraries initialised (LD_DEBUG=libs):"
  cat "$OUT/$name".ld.* 2>/dev/null | grep -o "calling init: .*" | grep -E "libnvidia-ml|libcuda" | sort -u
  echo "----- proof (mapped at exit):"
  python3 - "$OUT/$name.proof" "$SHIM" <<'EOF'
import json, sys
path, shim = sys.argv[1], sys.argv[2]
try:
    lines = [l for l in open(path).read().splitlines() if l.strip()]
except OSError:
    lines = []
if not lines:
    print("NO PROOF FILE: the stub's exit hook did not run (killed, _exit, or the stub was never loaded)")
for line in lines:
    d = json.loads(line)
    nvml = [m for m in d["mapped"] if "libnvidia-ml" in m]
    cuda = [m for m in d["mapped"] if "libcuda" in m]
    foreign = [m for m in nvml + cuda if not m.startswith(shim + "/")]
    other = [m for m in d["mapped"] if m not in nvml + cuda]
    ok = bool(nvml) and not foreign and not d["nvidia_fds"]
    print(f"pid {d['pid']}: {'SHIM ONLY' if ok else 'NOT PROVEN'}; libnvidia-ml: {nvml}; libcuda: {cuda}; "
          f"outside {shim}: {foreign}; open /dev/nvidia*: {d['nvidia_fds']}; other nvidia-named mappings: {other}")
EOF
  return 0
}

shim L -- -L
shim plain --
# The node server runs on this host, so its driver version is this host's: an honest value to hand the shim.
[ -n "$DRV" ] && shim plain_drv "FARGPU_NVML_DRIVER_VERSION=$DRV" --
shim q -- -q
shim trace FARGPU_LOG=debug --

echo
echo "== -L, native vs shim (same GPU when the node server runs on this host):"
diff "$OUT/native-L.txt" "$OUT/L.out" && echo "identical"
echo "== private slots nvidia-smi called in the plain run (count, slot, result):"
grep -o "nvidia-smi private slot [0-9]*(.*" "$OUT/trace.err" | sed -E 's/^nvidia-smi private slot ([0-9]+)\(.*\) -> (.*)$/\1 -> \2/' \
  | sort | uniq -c | sort -k2n | tee "$OUT/slots.txt"
echo "== NVML calls the shim refused (first use each):"
grep -h "is not supported by the fargpu NVML shim" "$OUT"/*.err | sed -E 's/.*fargpu-nvml: //; s/ is not supported.*//' \
  | sort -u | tee "$OUT/unsupported.txt"
