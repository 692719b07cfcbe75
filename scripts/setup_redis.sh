#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing. The pool manager's Redis store and its tests need the
# binary only: the tests start their own instance on a free port in a temporary folder, and production
# deployments point `fargpu pool-manager --store redis --redis-url ...` at a Redis they run themselves.
# We disable the distribution's service so that installing the package does not leave a daemon on port 6379.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  echo "redis-server already installed: $(redis-server --version)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing and apt-get is not available; install Redis >= 6 by other means" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# policy-rc.d exit code 101 keeps dpkg from starting the packaged service inside containers.
$SUDO apt-get install -y -q --no-install-recommends redis-server
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  $SUDO systemctl stop redis-server || true
  $SUDO systemctl disable redis-server || true
fi
echo "installed: $(redis-server --version)"
