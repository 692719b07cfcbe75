# The pool manager image: REST API (leases, sessions, nodes, /docs, /metrics) on 7000 and the node gRPC service on
# 7001, as user fargpu (uid 10001). State: Redis (--store redis, as compose and the Kubernetes manifests run it) or
# the embedded store's file under /var/lib/fargpu. Secrets come from the environment: FARGPU_ENROL_TOKEN (nodes
# enrol with it) and FARGPU_ADMIN_TOKEN (drain, evict, page-out). Build from the repository root:
#   docker build -f docker/pool-manager.Dockerfile -t fargpu/pool-manager:0.1.0 .

# ---- build: one wheel of fargpu (native parts built by CMake) in a venv. This stage is the same text in all
# three Dockerfiles (a test checks it), so a build of one image serves the others from the layer cache.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_PROGRESS_BAR=off \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 python3-venv gcc libc6-dev make cmake ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Extra CAs (docker/ca-certificates/*.crt, usually none) for a proxy that intercepts HTTPS; this stage only.
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
# Dependencies first, from pyproject.toml alone (a source change reuses this layer), with the `kubernetes` extra
# where pyproject has one (the pool manager's Kubernetes node provider).
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c "import tomllib; d = tomllib.load(open('/src/pyproject.toml', 'rb')); \
extras = d['project'].get('optional-dependencies', {}).get('kubernetes', []); \
open('/tmp/run.txt', 'w').write('\n'.join(d['project']['dependencies'] + extras)); \
open('/tmp/build.txt', 'w').write('\n'.join(d['build-system']['requires']))" \
 && python3 -m venv /opt/fargpu && /opt/fargpu/bin/pip install -q -r /tmp/run.txt \
 && python3 -m venv /opt/build && /opt/build/bin/pip install -q -r /tmp/build.txt
COPY CMakeLists.txt README.md /src/
COPY client_stub /src/client_stub
COPY protocol /src/protocol
COPY server /src/server
COPY pool_manager /src/pool_manager
COPY fargpu /src/fargpu
RUN /opt/build/bin/pip wheel -q --no-build-isolation --no-deps -w /wheels /src \
 && /opt/fargpu/bin/pip install -q --no-deps /wheels/fargpu-*.whl \
 && find /opt/fargpu -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/fargpu/bin/python -c "import fargpu.paths as p; assert p.stub_lib().exists()"

# ---- runtime: the base, python3, the venv; nothing from the build tools.
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /usr/share/doc/* /usr/share/man/* \
 && groupadd --system --gid 10001 fargpu \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/fargpu --shell /usr/sbin/nologin fargpu
COPY --from=build /opt/fargpu /opt/fargpu
LABEL org.opencontainers.image.title="fargpu pool manager" org.opencontainers.image.source="fargpu"
COPY docker/healthcheck.py /opt/fargpu/healthcheck.py
RUN install -d -o fargpu -g fargpu /var/lib/fargpu/state
# FARGPU_TLS=off: inside a compose network or a cluster the containers listen on 0.0.0.0, where TLS would be on by
# default with a development CA that clients in other containers do not have. For TLS, mount certificates and set
# FARGPU_TLS=on with FARGPU_TLS_CERT / FARGPU_TLS_KEY / FARGPU_TLS_CA (README, Security).
ENV PATH=/opt/fargpu/bin:$PATH PYTHONUNBUFFERED=1 XDG_STATE_HOME=/var/lib/fargpu/state \
    FARGPU_POOL_HOST=0.0.0.0 FARGPU_POOL_PORT=7000 FARGPU_POOL_GRPC_HOST=0.0.0.0 FARGPU_POOL_GRPC_PORT=7001 \
    FARGPU_POOL_STATE_FILE=/var/lib/fargpu/pool-state.json \
    FARGPU_TLS=off
USER fargpu
WORKDIR /var/lib/fargpu
EXPOSE 7000 7001
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/fargpu/bin/python", "/opt/fargpu/healthcheck.py", "pool-manager"]
ENTRYPOINT ["fargpu", "pool-manager"]
