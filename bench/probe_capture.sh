#!/usr/bin/env bash
# bench/probe_capture.sh OUT — bench/probe_capture.c on the GPU host: which driver calls invalidate a global-mode
# stream capture, on the capturing thread and on another, with the thread's mode global or relaxed. Writes
# OUT/probe_capture.json (with the date, GPU, driver and commit) and prints the calls that invalidated it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/probe_capture.sh OUT}" && cd "$1" && pwd)
CUDA_INC=${CUDA_INC:-${FARGPU_CUDA_INCLUDE:-/usr/local/cuda/include}}
gcc -std=gnu11 -O2 -Wall -Wextra -Werror -I"$CUDA_INC" bench/probe_capture.c -o "$OUT/probe_capture" -ldl -lpthread || exit 1
GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
"$OUT/probe_capture" > "$OUT/cases.json" || exit 1
python3 - "$OUT" "$GPU" "${FARGPU_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}" <<'PY'
import datetime, json, sys
out, gpu, commit = sys.argv[1:4]
cases = json.load(open(f"{out}/cases.json"))
doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "gpu": gpu,
       "commit": commit, "cases": cases}
json.dump(doc, open(f"{out}/probe_capture.json", "w"), indent=1)
bad = [k for k, v in cases.items() if isinstance(v, dict) and not v["survived"]]
print("invalidated the capture:", *bad, sep="\n  ")
PY
