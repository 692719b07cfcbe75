#!/usr/bin/env bash
# bench/gpu_pack.sh OUT — packs what a device call left under OUT into OUT/all.tgz: the device tool brings back at
# most 8 files (no deeper than two folders), so a run that leaves logs, proofs and JSON in many folders loses most
# of them. Built programs (bin/ folders, shared objects) and files over 8 MiB stay out; everything else goes in,
# and the rest of OUT is removed. Unpack here with `tar xzf all.tgz`.
set -u
OUT=$(cd "${1:?usage: bench/gpu_pack.sh OUT}" && pwd)
tmp=$(mktemp /tmp/fargpu-pack.XXXXXX)
(cd "$OUT" && find . -type f -size -8M ! -path '*/bin/*' ! -name '*.so' ! -name '*.so.*' ! -name all.tgz -print0 |
  tar czf "$tmp" --null -T -) || { echo "gpu_pack: could not pack $OUT" >&2; rm -f "$tmp"; exit 1; }
find "$OUT" -mindepth 1 -delete
mv "$tmp" "$OUT/all.tgz"
echo "gpu_pack: $(du -h "$OUT/all.tgz" | cut -f1) in $OUT/all.tgz"
