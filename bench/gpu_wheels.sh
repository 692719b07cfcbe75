#!/usr/bin/env bash
# bench/gpu_wheels.sh [BUNDLER] — fills .whl/ with the Python packages the GPU host lacks for the GPU scripts
# (bench/gpu_all.sh and the scripts it runs: the node server's worker needs cffi; the pool manager of
# bench/scale_zero_gpu.sh needs the web stack, redis and boto3), using the shared bundler (default
# ../shared/device/bundle-wheels.sh, which downloads CPython 3.12 manylinux wheels and drops those the GPU host has).
# The bundler also drops grpcio, because the host has an older one than the generated pool_pb2_grpc.py accepts, so the
# grpcio wheel at the version pyproject.toml pins is downloaded last, after every run of the bundler. Needs the
# machine's package index; the GPU host itself has none.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLER=${1:-../shared/device/bundle-wheels.sh}
[ -x "$BUNDLER" ] || [ -f "$BUNDLER" ] || { echo "gpu_wheels: no bundler at $BUNDLER (pass its path)"; exit 2; }
bash "$BUNDLER" cffi pycparser fastapi uvicorn fastapi-offline typer rich httpx redis hiredis prometheus-client boto3
GRPC=$(grep -oE '"grpcio>=[0-9.]+' pyproject.toml | head -1 | cut -d= -f2)
[ -n "$GRPC" ] || { echo "gpu_wheels: no grpcio pin in pyproject.toml"; exit 2; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "grpcio==$GRPC"
echo "gpu_wheels: $(ls .whl/*.whl | wc -l) wheels in .whl/ (grpcio $GRPC among them); pass carry: [\".whl\"] to the device"
