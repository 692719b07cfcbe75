#!/usr/bin/env bash
# The whole test suite, as CI runs it (after `make venv`): lint, types, generated-code freshness, C
# sanitizer builds, and the Python tests (unit, protocol properties, pool manager on embedded + Redis,
# stub + server + simulated device end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
export PATH="$PWD/$VENV/bin:$PATH"

if [ -x scripts/setup_redis.sh ]; then bash scripts/setup_redis.sh; fi
# Docker (dockerd started in the background, a local base image) for the image tests, and kube-apiserver for the
# manifest tests: built once per machine into a cache (several minutes the first time, nothing after).
bash scripts/setup_docker.sh
bash scripts/kube_apiserver.sh build

echo "== ruff"
"$VENV/bin/ruff" check fargpu server protocol pool_manager codegen tests bench
echo "== mypy"
# Type-check the package as it is installed (fargpu.*), through a tree of links to the source folders.
TC=build/typecheck
rm -rf "$TC" && mkdir -p "$TC/fargpu"
for f in fargpu/*.py; do ln -s "$PWD/$f" "$TC/fargpu/"; done
for d in server:server protocol:protocol pool_manager:pool_manager; do ln -s "$PWD/${d%%:*}" "$TC/fargpu/${d##*:}"; done
(cd "$TC" && "$OLDPWD/$VENV/bin/mypy" --config-file "$OLDPWD/pyproject.toml" -p fargpu)
echo "== codegen freshness"
$PY -m codegen --check
echo "== pytest"
"$VENV/bin/pytest" -q -p no:cacheprovider "$@"
