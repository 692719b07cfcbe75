# Test-only stand-in for the official Redis image that docker/compose.yaml names (redis:7.0-bookworm), which no
# registry can provide here: Debian bookworm's own redis-server 7.0 on the local base image, with redis-server and
# redis-cli on PATH and /data writable, which is all the compose file relies on.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o redis -g redis /data
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
