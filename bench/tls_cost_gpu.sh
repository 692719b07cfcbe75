#!/usr/bin/env bash
# bench/tls_cost_gpu.sh OUT [--backend cuda|sim] [--quick] — what TLS on the data socket costs (issue 15), one command
# on the GPU host. Builds the native parts and bench/transport.c, makes a throwaway CA and node certificate (the
# `openssl` command, else Python's `cryptography`), starts ONE node server with TLS on (it serves TLS and, from
# loopback, plaintext on the same port), then in the same run: bench/transport.c natively, through fargpu over
# plain TCP and over TLS with 1 and 4 streams (256 MiB pinned/pageable copies both ways, 64 B copies, the sync round
# trip). Every remote client writes a proof file (it never loaded the real driver) and its stderr shows the TLS
# handshake. Writes OUT/tls_cost_gpu.json (bench/tls_cost_report.py: figures per variant, TLS/plain ratios, which
# libssl the stub loaded) and the logs. --backend sim is a dry run without a GPU (its figures are no GPU claim);
# --quick copies 64 MiB. FARGPU_COMMIT=<sha> names the commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/tls_cost_gpu.sh OUT [--backend cuda|sim] [--quick]}" && cd "$1" && pwd)
shift
BACKEND=cuda; QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
done
REPO=$PWD
W=/tmp/fargpu-tls-cost; rm -rf "$W"; mkdir -p "$W"
PY=${PYTHON:-python3}
log() { echo "== $*"; }
T0=$(date +%s)

. bench/gpu_prepare.sh
gpu_prepare || exit 1
gpu_bench_env

log "build bench/transport.c"
gpu_bench_kernels
gpu_build_transport || exit 1
[ $QUICK = 1 ] && export FARGPU_BENCH_MB=64

log "certificates (a throwaway CA; the node's certificate names 127.0.0.1)"
C="$W/certs"; mkdir -p "$C"
if command -v openssl >/dev/null; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=fargpu bench CA" \
    -keyout "$C/ca.key" -out "$C/ca.pem" -addext basicConstraints=critical,CA:TRUE >"$OUT/certs.log" 2>&1 \
  && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench-node" \
    -keyout "$C/node.key" -out "$C/node.csr" >>"$OUT/certs.log" 2>&1 \
  && printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$C/ext" \
  && openssl x509 -req -in "$C/node.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial -days 2 \
    -extfile "$C/ext" -out "$C/node.pem" >>"$OUT/certs.log" 2>&1 || { tail -5 "$OUT/certs.log"; exit 1; }
  CERTS_BY=openssl
else
  "$PY" - "$C" <<'PYEOF' || { echo "no openssl command and no Python cryptography: cannot make certificates"; exit 1; }
import sys
from pathlib import Path
from fargpu.pool_manager.tls_ca import CertificateAuthority
d = Path(sys.argv[1]); ca = CertificateAuthority.load_or_create(d)
k, c = ca.issue("bench-node", ["127.0.0.1"], 2)
(d / "node.key").write_bytes(k); (d / "node.pem").write_bytes(c)
PYEOF
  CERTS_BY=cryptography
fi
echo "$CERTS_BY" >"$OUT/certs_by.txt"
LIBSSL=$( (ldconfig -p 2>/dev/null | grep -m1 'libssl.so.3 ' | sed 's/.*=> //') || true)
echo "${LIBSSL:-not found by ldconfig}" >"$OUT/libssl.txt"
# Whether this kernel has kernel TLS (fargpu relays instead; this tells whether kTLS would be an option here)
"$PY" - >"$OUT/ktls.txt" 2>&1 <<'PYEOF'
import socket
srv = socket.create_server(("127.0.0.1", 0)); c = socket.create_connection(srv.getsockname())
try:
    c.setsockopt(socket.IPPROTO_TCP, 31, b"tls")  # TCP_ULP
    print("available (TCP_ULP tls accepted)")
except OSError as e:
    print(f"unavailable ({e})")
PYEOF

log "start the node server (backend $BACKEND, TLS on)"
TOKEN=tls-cost-run-token
PORT=7319
FARGPU_TOKEN=$TOKEN "$PY" -P -m fargpu.server --backend "$BACKEND" --listen 127.0.0.1:$PORT --tls on \
  --tls-cert "$C/node.pem" --tls-key "$C/node.key" --metrics-port 0 >"$OUT/server.log" 2>&1 &
SRV=$!
for i in $(seq 1 150); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done

run_variant() {  # NAME ENDPOINT STREAMS
  log "transport bench: $1 ($(( $(date +%s) - T0 )) s)"
  timeout 200 env LD_LIBRARY_PATH="$STUB" LD_PRELOAD="$STUB/libcuda.so.1" FARGPU_SERVER="$2" FARGPU_TOKEN=$TOKEN \
    FARGPU_STREAMS="$3" FARGPU_TLS_CA="$C/ca.pem" FARGPU_PROOF_FILE="$OUT/proof-$1.jsonl" FARGPU_STATS=1 \
    FARGPU_LOG=info "$W/transport" "$W/bench_kernels.ptx" $KERNELS >"$OUT/transport_$1.json" 2>"$OUT/transport_$1.err" \
    || echo "$1 failed (rc $?): $(cat "$OUT/transport_$1.err" | tail -2)"
}
log "transport bench: native"
timeout 200 "${NATIVE[@]}" "$W/transport" "$W/bench_kernels.ptx" $KERNELS >"$OUT/transport_native.json" \
  2>"$OUT/transport_native.err" || echo "native failed (rc $?): $(tail -2 "$OUT/transport_native.err")"
# plain and TLS alternate, so that a drift of the machine over the run does not favour either
run_variant plain1 127.0.0.1:$PORT 1
run_variant tls1 tls://127.0.0.1:$PORT 1
run_variant plain4 127.0.0.1:$PORT 4
run_variant tls4 tls://127.0.0.1:$PORT 4
kill $SRV 2>/dev/null; wait $SRV 2>/dev/null
log "report ($(( $(date +%s) - T0 )) s)"
"$PY" bench/tls_cost_report.py "$OUT" --backend "$BACKEND"
