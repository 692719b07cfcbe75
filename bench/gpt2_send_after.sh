#!/usr/bin/env bash
# bench/gpt2_send_after.sh OUT [DELAYS...] — on the GPU host: GPT-2's forward (tests/acceptance/torch/gpt2_forward.py,
# full counts) native and through fargpu, once for each prompt-send delay FARGPU_SEND_AFTER_US (default 20 2 100; the
# first goes through tests/acceptance/run_gpu.sh, which builds; the others reuse that build with a node server of
# their own). Writes OUT/gpt2_send_after.json: each delay's case from its acceptance.json (tokens/s and the host's
# dispatch rate, native and remote). Ratios from one run each: compare them only within one call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/gpt2_send_after.sh OUT [DELAYS...]}" && cd "$1" && pwd)
shift
DELAYS=("${@:-20 2 100}")
read -r -a DELAYS <<<"${DELAYS[*]}"
PY=${PYTHON:-python3}
W=/tmp/fargpu-acceptance
first=${DELAYS[0]}
bash tests/acceptance/run_gpu.sh "$OUT/v$first" --only torch/gpt2_forward --timeout 120 \
  --client-env "FARGPU_SEND_AFTER_US=$first" >"$OUT/v$first.log" 2>&1 || { tail -20 "$OUT/v$first.log"; exit 1; }
PORT=${FARGPU_ACCEPTANCE_PORT2:-7399}
PYTHONPATH="$W/py:$W/site" FARGPU_NATIVE_DIR="$W/build" FARGPU_TOKEN=send-after-token \
  "$PY" -P -m fargpu.server --backend cuda --listen 127.0.0.1:$PORT --metrics-port 0 >"$OUT/server.log" 2>&1 &
SRV=$!
trap 'kill $SRV 2>/dev/null; wait $SRV 2>/dev/null' EXIT
for _ in $(seq 1 150); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
for v in "${DELAYS[@]:1}"; do
  "$PY" bench/acceptance.py --out "$OUT/v$v" --stub-dir "$W/build/stub" --server 127.0.0.1:$PORT \
    --token send-after-token --server-log "$OUT/server.log" --python "$PY" --only torch/gpt2_forward --timeout 120 \
    --client-env "FARGPU_SEND_AFTER_US=$v" >"$OUT/v$v.log" 2>&1 || echo "delay $v: acceptance.py exited $?"
done
"$PY" - "$OUT" "${DELAYS[@]}" <<'PY'
import json, sys
from pathlib import Path
out, delays = Path(sys.argv[1]), sys.argv[2:]
report: dict = {"what": "GPT-2 fp16 forward native and through fargpu for each FARGPU_SEND_AFTER_US "
                        "(bench/gpt2_send_after.sh)", "variants": {}}
for v in delays:
    a = json.loads((out / f"v{v}" / "acceptance.json").read_text())
    for k in ("date", "gpu", "driver", "commit"):
        report.setdefault(k, a.get(k))
    c = a["cases"][0]
    report["variants"][v] = {k: c.get(k) for k in ("name", "pass", "native_s", "remote_s", "remote_sync_calls",
                                                   "throughput", "outputs", "remote_worker")}
    print(v, json.dumps(c.get("throughput", {}).get("ratio")))
(out / "gpt2_send_after.json").write_text(json.dumps(report, indent=2) + "\n")
PY
