#!/usr/bin/env bash
# The soak: the fault suite (tests/faults/faultsuite.py) with 32 clients at once for 10 minutes, faults of random
# kinds one after another, the same checks after each. Writes bench/results/soak-DATE-COMMIT.json (or $1).
#   scripts/soak.sh [OUT.json] [SEED] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SEED=${2:-$(date +%s)}
SECONDS_=${3:-600}
OUT=${1:-bench/results/soak-$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD).json}
if [ -x scripts/setup_redis.sh ]; then bash scripts/setup_redis.sh; fi
# cwd: not the repo root, whose bare `fargpu/` folder would shadow the installed package
cd /tmp && exec "$OLDPWD/$VENV/bin/python" "$OLDPWD/tests/faults/faultsuite.py" --seed "$SEED" --clients 32 \
    --duration "$SECONDS_" --window 8 --client-bound 120 --out "$(cd "$OLDPWD" && realpath -m "$OUT")"
