# The client base image: fargpu's libcuda.so.1 stub and the `fargpu` CLI in /opt/fargpu (on PATH), as user fargpu
# (uid 10001). An application image is `FROM` this plus its CUDA application (with its own libcudart, cuBLAS, torch,
# ... and no driver), run as `fargpu run --vram 8G -- APP` with FARGPU_POOL_URL set: the lease, the stub on the
# library path and the release at exit come from `fargpu run`. No HEALTHCHECK: it is a base for batch programs, and
# derived images inherit whatever a base declares. Build from the repository root:
#   docker build -f docker/client.Dockerfile -t fargpu/client:0.1.0 .

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
LABEL org.opencontainers.image.title="fargpu client base" org.opencontainers.image.source="fargpu"
ENV PATH=/opt/fargpu/bin:$PATH PYTHONUNBUFFERED=1
USER fargpu
WORKDIR /var/lib/fargpu
CMD ["fargpu", "run", "--vram", "64M", "--wait", "60", "--", "python3", "-m", "fargpu.demo_program"]
