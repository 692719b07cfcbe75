#!/usr/bin/env bash
# Docker for the image tests (tests/python/test_docker_images.py), on a machine with no image registry:
#   1. installs Debian's docker.io and docker-compose (v1) and debootstrap when missing;
#   2. starts dockerd in the background when no daemon answers (no service manager runs it here);
#      its log is /var/log/fargpu-dockerd.log;
#   3. makes the base image the Dockerfiles name by default (debian:bookworm-slim) when it is not there: a
#      minimal Debian from debootstrap, imported under that tag, so docker/*.Dockerfile build unchanged.
#   4. copies this machine's extra CA certificates (/usr/local/share/ca-certificates/*.crt) to
#      docker/ca-certificates/, which the images' build stage trusts (pip behind an intercepting proxy).
# Idempotent: a second run finds everything in place in about a second. Needs root (or sudo).
set -euo pipefail

BASE_TAG=${FARGPU_BASE_IMAGE:-debian:bookworm-slim}
SUITE=${FARGPU_BASE_SUITE:-bookworm}
MIRROR=${FARGPU_DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "setup_docker: $*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
[ -x /usr/bin/dockerd ] || command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || { echo "setup_docker: error: ${need[*]} missing and no apt-get: install Docker by other means" >&2; exit 1; }
  say "installing ${need[*]} (about a minute)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  # policy-rc.d-less containers may try to start the packaged service: that is harmless, we start our own below.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Debian's docker CLI talks to Debian's daemon; another docker earlier on PATH may be a different version.
DOCKER=$(command -v docker)
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker

if ! as_root "$DOCKER" info >/dev/null 2>&1; then
  say "starting dockerd (log: /var/log/fargpu-dockerd.log)"
  # Inherited descriptors other than the standard three are closed: CI runs under `flock /tmp/fargpu-ci.lock`, and a
  # daemon that kept the lock's descriptor would hold the lock after CI ends, blocking every later run.
  as_root sh -c 'nohup dockerd >/var/log/fargpu-dockerd.log 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &'
  for _ in $(seq 120); do
    as_root "$DOCKER" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  as_root "$DOCKER" info >/dev/null 2>&1 || {
    echo "setup_docker: error: dockerd did not answer within 60 s; last lines of its log:" >&2
    tail -20 /var/log/fargpu-dockerd.log >&2
    exit 1
  }
fi
say "docker $(as_root "$DOCKER" version --format '{{.Server.Version}}') is up"

if ! as_root "$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1; then
  say "no $BASE_TAG image and no registry: building it from debootstrap ($SUITE, minbase; about a minute)"
  root=$(mktemp -d /var/tmp/fargpu-rootfs.XXXXXX)
  trap 'as_root rm -rf "$root"' EXIT
  as_root debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/var/tmp/fargpu-debootstrap.log 2>&1 || {
    tail -20 /var/tmp/fargpu-debootstrap.log >&2
    echo "setup_docker: error: debootstrap failed (log: /var/tmp/fargpu-debootstrap.log)" >&2
    exit 1
  }
  # As the official slim images do: no package caches or lists kept in the image.
  as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  as_root tar -C "$root" -c . | as_root "$DOCKER" import -c 'CMD ["bash"]' - "$BASE_TAG" >/dev/null
  say "imported $BASE_TAG"
fi

ca_dir="$(cd "$(dirname "$0")/.." && pwd)/docker/ca-certificates"
for crt in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$crt" ] || continue
  cmp -s "$crt" "$ca_dir/$(basename "$crt")" || { cp "$crt" "$ca_dir/"; say "build stage will trust $(basename "$crt")"; }
done
