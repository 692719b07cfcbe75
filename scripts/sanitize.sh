#!/usr/bin/env bash
# Sanitizer builds of the protocol core and the replay engine: builds tests/c/test_protocol.c and
# tests/c/fuzz_server.c with ASan + UBSan (every finding aborts), builds the simulated device from
# server/sim (also instrumented unless SIM_SANITIZE=0; the ASan-linked test program dlopens it), and runs both.
#
#   scripts/sanitize.sh                 # as CI runs it (tests/python/test_sanitizers.py)
#   FUZZ_ITERS=2000000 FUZZ_SESSIONS=5000 FUZZ_SEED=7 scripts/sanitize.sh   # longer / other runs
#
# Environment: PYTHON (default .venv/bin/python, else python3) to find the CUDA 13.0 headers of the
# nvidia-cuda-runtime wheel; FARGPU_CUDA_INCLUDE to give them directly; FARGPU_SIM_LIB to use a prebuilt
# libfargpu_sim.so instead of building one (e.g. "$(python -c 'from fargpu import paths; print(paths.sim_lib())')");
# SANITIZE_OUT for the build folder (default: a temp dir, removed afterwards);
# FG_FUZZ_SAFE_IMAGES=1 leaves hostile module images out of fuzz_server (see its header).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
CC=${CC:-gcc}
command -v "$CC" >/dev/null || { echo "sanitize.sh: $CC not found" >&2; exit 2; }

if [ -z "${FARGPU_CUDA_INCLUDE:-}" ]; then
  # Run outside the checkout: its fargpu/ folder would shadow the installed package.
  FARGPU_CUDA_INCLUDE=$(cd / && "$PY" -c "import nvidia, os; print(next(os.path.join(p, 'cu13', 'include') for p in nvidia.__path__ if os.path.exists(os.path.join(p, 'cu13', 'include', 'cuda.h'))))") || {
    echo "sanitize.sh: CUDA 13.0 headers not found with $PY: pip install nvidia-cuda-runtime==13.0.* (or set FARGPU_CUDA_INCLUDE)" >&2
    exit 2
  }
fi

OUT=${SANITIZE_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/fargpu-sanitize.XXXXXX")}
mkdir -p "$OUT"
if [ -z "${SANITIZE_OUT:-}" ]; then trap 'rm -rf "$OUT"' EXIT; fi

SAN=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
CFLAGS=(-std=c11 -Wall -Wextra -Werror "${SAN[@]}" -g -O1 -D_GNU_SOURCE)
INC=(-Iprotocol/c -Iprotocol/c/generated -Iserver/replay -Iserver/generated "-I$FARGPU_CUDA_INCLUDE")
PROTO_SRC=(protocol/c/*.c protocol/c/generated/*.c)
REPLAY_SRC=(server/replay/*.c server/generated/*.c)

echo "== build (ASan + UBSan) in $OUT"
"$CC" "${CFLAGS[@]}" "${INC[@]}" tests/c/test_protocol.c "${PROTO_SRC[@]}" -o "$OUT/test_protocol" &
p1=$!
"$CC" "${CFLAGS[@]}" "${INC[@]}" tests/c/fuzz_server.c "${REPLAY_SRC[@]}" "${PROTO_SRC[@]}" -o "$OUT/fuzz_server" \
  -ldl -lpthread &
p2=$!
SIM=${FARGPU_SIM_LIB:-}
if [ -z "$SIM" ]; then
  # The simulated device, from this checkout's sources, built like CMakeLists.txt's fgsim target, and
  # instrumented too (SIM_SANITIZE=0: plain): the driver reads what the engine hands it (module images), so an
  # engine bug that lets a client make the driver read past a buffer only shows inside the sim.
  SIM=$OUT/libfargpu_sim.so
  SIM_SAN=()
  if [ "${SIM_SANITIZE:-1}" != 0 ]; then SIM_SAN=("${SAN[@]}"); fi
  "$CC" -std=c11 -Wall -Wextra -O1 -g -fPIC -shared -fvisibility=hidden -D_GNU_SOURCE "${SIM_SAN[@]}" -Iserver/sim \
    "-I$FARGPU_CUDA_INCLUDE" server/sim/*.c -o "$SIM" -lpthread
fi
wait $p1
wait $p2

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The sim is not instrumented; a missing symbol there is a build problem, not a finding.
if nm -D --undefined-only "$SIM" 2>/dev/null | grep -q ' U sim_'; then
  echo "sanitize.sh: $SIM has unresolved internal symbols (is server/sim complete?)" >&2
  nm -D --undefined-only "$SIM" | grep ' U sim_' >&2
  exit 1
fi

rc=0
echo "== test_protocol (vectors + ${FUZZ_ITERS:-200000} fuzz iterations)"
"$OUT/test_protocol" protocol/vectors "${FUZZ_ITERS:-200000}" || rc=1
echo "== fuzz_server (${FUZZ_SESSIONS:-400} sessions on $SIM)"
"$OUT/fuzz_server" "$SIM" "${FUZZ_SESSIONS:-400}" "${FUZZ_SEED:-0}" || rc=1
if [ $rc -eq 0 ]; then echo "sanitize.sh: all passed"; else echo "sanitize.sh: FAILED" >&2; fi
exit $rc
