"""`python -m codegen` regenerates every generated file; `--check` only compares and exits 1 when stale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import emit, headers, model

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m codegen", description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if a generated file differs from what it would be")
    args = ap.parse_args()
    m = model.build(headers.parse())
    stale = []
    for path, text in emit.outputs(m, ROOT).items():
        old = path.read_text() if path.exists() else None
        if old == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("stale generated files (run `python -m codegen`):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    print(f"codegen: {len(m.exports)} exports, {len(m.ops)} wire ops, {len(m.procaddr)} proc-address rows, "
          f"{'checked' if args.check else 'wrote'} {len(stale)} changed file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
