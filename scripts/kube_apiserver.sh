#!/usr/bin/env bash
# A real Kubernetes API server on this machine, for tests: Debian's etcd-server plus kube-apiserver v1.20.2 built
# from Debian's `kubernetes` source package (no package ships the binary). There is no kubelet or controller
# manager, so objects are stored and validated, RBAC is enforced, but no pod ever runs.
#
#   scripts/kube_apiserver.sh build          build kube-apiserver once into the cache (about 7 minutes on 2 cores)
#   scripts/kube_apiserver.sh start DIR      start etcd + kube-apiserver with their state in DIR (created); the last
#                                            line printed is the kubeconfig path (DIR/kubeconfig, user `admin`,
#                                            group system:masters); DIR/env has KUBECONFIG, KUBE_API_URL and
#                                            KUBE_API_TOKEN lines for shells and tests
#   scripts/kube_apiserver.sh stop DIR       stop both (by the pids recorded in DIR)
#
# The binary is cached in ${FARGPU_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fargpu}/kube-apiserver-v1.20.2, so only
# the first run on a machine pays for the build. Python tests use tests/python/kube_api.py, which wraps start/stop.
# Admission: ServiceAccount is off (no controller creates the default service account, so pods could not be
# created); everything else is the server's default set.
set -euo pipefail

KUBE_VERSION=1.20.2
CACHE=${FARGPU_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fargpu}
BIN=$CACHE/kube-apiserver-v$KUBE_VERSION

say() { echo "kube_apiserver: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {  # installs the Debian packages named, when a command they provide is missing
  command -v apt-get >/dev/null || die "apt-get is not available: install $* by other means"
  if [ ! -f "$CACHE/.apt-updated" ] || [ -n "$(find "$CACHE/.apt-updated" -mmin +720 2>/dev/null)" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    mkdir -p "$CACHE" && touch "$CACHE/.apt-updated"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

build() {
  if [ -x "$BIN" ]; then say "cached: $BIN"; return 0; fi
  local need=()
  command -v go >/dev/null || need+=(golang-go)
  command -v rsync >/dev/null || need+=(rsync)
  command -v dpkg-source >/dev/null || need+=(dpkg-dev)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
  mkdir -p "$CACHE"
  local work; work=$(mktemp -d "$CACHE/kube-build.XXXXXX")
  # A private apt configuration with a deb-src line, so the machine's own sources stay as they are.
  mkdir -p "$work/apt/lists/partial"
  printf 'deb-src http://deb.debian.org/debian %s main\n' bookworm bookworm-updates > "$work/apt/sources.list"
  echo "deb-src http://deb.debian.org/debian-security bookworm-security main" >> "$work/apt/sources.list"
  local aptopts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=-"
                 -o "Dir::State::Lists=$work/apt/lists" -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
  say "downloading Debian's kubernetes source package (v$KUBE_VERSION)"
  apt-get "${aptopts[@]}" update -q >&2
  (cd "$work" && apt-get "${aptopts[@]}" source -q kubernetes >&2)
  local src; src=$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
  [ -n "$src" ] || die "apt-get source did not unpack the kubernetes sources into $work"
  grep -q "^VERSION *=.*v\?$KUBE_VERSION\|gitVersion.*v$KUBE_VERSION\|really$KUBE_VERSION" "$src/debian/changelog" \
    || die "Debian's kubernetes source is not v$KUBE_VERSION any more (see $src/debian/changelog): update KUBE_VERSION"
  # The vendored reflect2 faults under Go >= 1.18 (on the first custom resource); Debian's packaged copy works.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  say "building kube-apiserver v$KUBE_VERSION with $(go version | cut -d' ' -f3) (several minutes; log: $work/build.log)"
  local t0=$SECONDS
  # The way Debian's own rules build it: the tree's make, in GOPATH mode through a link under .go/.
  mkdir -p "$src/.go/src/k8s.io" && ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
  if ! (cd "$src" && env GOPATH="$src/.go" CGO_ENABLED=0 HOME="$work" KUBE_GIT_VERSION="v$KUBE_VERSION" \
        KUBE_GIT_TREE_STATE=clean make WHAT=cmd/kube-apiserver) >"$work/build.log" 2>&1; then
    tail -30 "$work/build.log" >&2
    die "the kube-apiserver build failed (log above; sources kept in $work)"
  fi
  cp "$src/_output/bin/kube-apiserver" "$work/kube-apiserver"
  mv "$work/kube-apiserver" "$BIN"
  rm -rf "$work"
  say "built $BIN in $((SECONDS - t0)) s"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() {  # wait_for SECONDS PIDFILE WHAT CMD...: polls CMD until it succeeds, fails early if the process died
  local deadline=$((SECONDS + $1)) pidfile=$2 what=$3; shift 3
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$pidfile")" 2>/dev/null || die "$what exited early; its log: $(dirname "$pidfile")/${what}.log"
    [ $SECONDS -lt $deadline ] || die "$what did not become ready within $1 s; its log: $(dirname "$pidfile")/${what}.log"
    sleep 0.3
  done
}

start() {
  local dir=${1:?usage: kube_apiserver.sh start DIR}
  build
  command -v etcd >/dev/null || apt_install etcd-server
  command -v openssl >/dev/null || apt_install openssl
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
  [ ! -f "$dir/apiserver.pid" ] || ! kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null \
    || die "an API server already runs from $dir (pid $(cat "$dir/apiserver.pid")): stop it first"
  local etcd_port peer_port api_port token
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  token=$(openssl rand -hex 16)
  etcd --data-dir "$dir/etcd" --name fargpu-test \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "fargpu-test=http://127.0.0.1:$peer_port" >"$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
  wait_for 30 "$dir/etcd.pid" etcd python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$etcd_port/health', timeout=1)"
  # The service-account signing key (required since 1.20) and the token file (an admin in system:masters).
  [ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  echo "$token,admin,admin,system:masters" > "$dir/tokens.csv"
  chmod 600 "$dir/tokens.csv" "$dir/sa.key"
  "$BIN" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 --disable-admission-plugins ServiceAccount \
    --allow-privileged=true --logtostderr=true --v=1 >"$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"
  local url="https://127.0.0.1:$api_port"
  # Ready means the bootstrap RBAC roles are in place too, not just the port open. (The probe is a -c string, not
  # a here-document: wait_for runs it many times, and a here-document would feed only the first run.)
  local probe='import ssl, sys, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
req = urllib.request.Request(sys.argv[1] + "/readyz", headers={"Authorization": "Bearer " + sys.argv[2]})
sys.exit(0 if urllib.request.urlopen(req, context=ctx, timeout=2).read() == b"ok" else 1)'
  wait_for 90 "$dir/apiserver.pid" apiserver python3 -c "$probe" "$url" "$token"
  cat > "$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $url
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
EOF
  chmod 600 "$dir/kubeconfig"
  printf 'KUBECONFIG=%s\nKUBE_API_URL=%s\nKUBE_API_TOKEN=%s\n' "$dir/kubeconfig" "$url" "$token" > "$dir/env"
  chmod 600 "$dir/env"
  say "kube-apiserver v$KUBE_VERSION ready at $url (etcd on 127.0.0.1:$etcd_port, logs in $dir)"
  echo "$dir/kubeconfig"
}

stop_pid() {  # stop_pid PIDFILE: SIGTERM, then SIGKILL after 10 s
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop() {
  local dir=${1:?usage: kube_apiserver.sh stop DIR}
  stop_pid "$dir/apiserver.pid"
  stop_pid "$dir/etcd.pid"
}

case "${1:-}" in
  build) build ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 build | start DIR | stop DIR" >&2; exit 2 ;;
esac
