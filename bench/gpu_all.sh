#!/usr/bin/env bash
# bench/gpu_all.sh OUT — every GPU proof in one device call, most important first, each bounded so that one
# that hangs leaves time for the rest: paging (issue 11), parking (issue 12), the acceptance programs (quick, no
# torch), the bulk-data transports (when bench/transport_gpu.sh exists), and the host-memory probe. Each leaves its
# JSON and logs in its own folder under OUT and prints its last lines. FARGPU_COMMIT=<sha> names the commit.
set -u
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/gpu_all.sh OUT}" && cd "$1" && pwd)
part() {  # part NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  echo "== $name (at most ${secs} s)"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $?"
  tail -6 "$OUT/$name.log"
}
part paging "${PAGING_S:-330}" bash bench/paging_gpu.sh "$OUT/paging" --sizes 1,8,32 --disk-bytes 8589934592
part park "${PARK_S:-120}" bash bench/park_gpu.sh "$OUT/park"
part acceptance "${ACCEPTANCE_S:-100}" bash tests/acceptance/run_gpu.sh "$OUT/acceptance" --quick --skip-torch
[ -f bench/transport_gpu.sh ] && part transport "${TRANSPORT_S:-150}" bash bench/transport_gpu.sh "$OUT/transport"
mkdir -p "$OUT/probe"
gcc -std=gnu11 -O2 -I/usr/local/cuda/include bench/probe_hostmem.c -o "$OUT/probe/probe_hostmem" -ldl -lpthread \
  && part probe 80 bash -c "cat /sys/kernel/mm/transparent_hugepage/shmem_enabled; \
     '$OUT/probe/probe_hostmem' outlive 2; '$OUT/probe/probe_hostmem' 4"
exit 0
