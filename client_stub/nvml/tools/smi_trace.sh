#!/usr/bin/env bash
# client_stub/nvml/tools/smi_trace.sh [OUT] — for the GPU host: runs the real nvidia-smi (plain and -q) on the
# real NVML with smi_trace.c in front of it, writing every call nvidia-smi makes into its private NVML table
# (arguments, memory they point at before and after, results) to OUT/trace-*.txt, plus the slot counts. Needs
# gcc and the real libnvidia-ml.so.1 (found through the loader cache, or REAL_NVML=path).
#   smi_trace.sh --build DIR   only builds the tracer in DIR, in front of REAL_NVML (any program can then run
#                              with LD_LIBRARY_PATH=DIR and SMI_TRACE_FILE=path).
set -u
BUILD_ONLY=
if [ "${1:-}" = "--build" ]; then BUILD_ONLY=1; D=$(mkdir -p "${2:?--build DIR}" && cd "$2" && pwd) || exit 1; fi
HERE=$(cd "$(dirname "$0")" && pwd)
REAL=${REAL_NVML:-$(ldconfig -p | awk '$1 == "libnvidia-ml.so.1" { print $NF; exit }')}
[ -f "$REAL" ] || { echo "the real libnvidia-ml.so.1 was not found (set REAL_NVML)"; exit 1; }
REAL=$(readlink -f "$REAL")
[ -n "$BUILD_ONLY" ] || D=$(mktemp -d)
# The tracer names libnvml_real.so as a dependency: built first as an empty library, then replaced by a copy of
# the real NVML (whose own soname, libnvidia-ml.so.1, would otherwise name the tracer itself).
echo 'int smi_trace_placeholder;' | gcc -shared -fPIC -x c - -o "$D/libnvml_real.so" -Wl,-soname,libnvml_real.so \
  || exit 1
gcc -std=c11 -O1 -Wall -Wextra -Werror -shared -fPIC -o "$D/libnvidia-ml.so.1" "$HERE/smi_trace.c" \
  -Wl,-soname,libnvidia-ml.so.1 -Wl,--no-as-needed -L"$D" -lnvml_real -Wl,-rpath,'$ORIGIN' -ldl -lpthread || exit 1
cp "$REAL" "$D/libnvml_real.so"
echo "real NVML: $REAL; tracer in $D"
[ -n "$BUILD_ONLY" ] && exit 0
OUT=$(mkdir -p "${1:-/tmp/smi-trace}" && cd "${1:-/tmp/smi-trace}" && pwd) || exit 1
for args in "" "-q"; do
  name=plain; [ -n "$args" ] && name=q
  rm -f "$OUT/trace-$name.txt"
  LD_LIBRARY_PATH="$D" SMI_TRACE_FILE="$OUT/trace-$name.txt" LD_DEBUG=libs LD_DEBUG_OUTPUT="$OUT/ld-$name" \
    timeout 120 nvidia-smi $args >"$OUT/smi-$name.out" 2>"$OUT/smi-$name.err"
  echo "== nvidia-smi $args: rc=$?; $(grep -c '^#' "$OUT/trace-$name.txt" 2>/dev/null) slot calls traced"
  cat "$OUT"/ld-$name.* 2>/dev/null | grep -o "calling init: .*" | grep -E "nvml|nvidia-ml" | sort -u
  head -5 "$OUT/smi-$name.out"
  grep -o '^#[0-9]* slot [0-9]*(.*' "$OUT/trace-$name.txt" 2>/dev/null \
    | sed -E 's/^#[0-9]+ slot ([0-9]+)\(.*\) -> [^(]*\(int (-?[0-9]+)\).*/\1 -> \2/' | sort | uniq -c | sort -k2n \
    >"$OUT/slots-$name.txt"
  rm -f "$OUT"/ld-$name.*
done
echo "== slots called (count, slot -> result), plain:"; cat "$OUT/slots-plain.txt"
