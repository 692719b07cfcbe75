"""`fargpu doctor`: checks a client, a node or a pool manager set-up and says, in plain words, what is wrong and
what to do. Each check is a function that returns a `Check` (ok, warn, fail or skip, with one line of detail and
one of advice); `run_checks` picks the checks for a role and `main` prints them (a rich table, or --json) and
exits 1 when any failed.

client: the stub is installed and first on LD_LIBRARY_PATH; libcuda.so.1 resolves to the stub, not the real
        driver; the pool manager answers (same fargpu version, some GPU up, the admin token accepted); the node
        server answers and accepts the token (HELLO), from the same API table, on a driver new enough for CUDA 13.
node:   a GPU is there (or the simulated device, if asked for); the listen and metrics ports are free; the pool
        manager answers, and the enrolment token is at hand.
pool-manager: its REST and gRPC ports are free; Redis answers (--store redis)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import msgpack

from fargpu import __version__, paths
from fargpu.pool_manager.tenants import find_api_key
from fargpu.pool_manager.tls import TlsConfigError, explain, verify_for

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
CUDA13_MIN_DRIVER = 580  # CUDA 13.0 needs driver branch 580 or newer


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str  # what was found
    fix: str = ""  # what to do about it ("" when nothing)


@dataclass
class Options:
    role: str = "client"  # client | node | pool-manager
    pool: str | None = None  # pool manager URL
    server: str | None = None  # node endpoint host:port or unix socket path
    token: str | None = None  # a static or lease token for the node server
    admin_token: str | None = None
    backend: str = "auto"
    expect_gpu: bool = False
    listen: str = "127.0.0.1:7100"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9400
    rest_host: str = "127.0.0.1"
    rest_port: int = 7000
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 7001
    store: str = "embedded"
    redis_url: str = "redis://127.0.0.1:6379/0"
    timeout_s: float = 5.0


# ---- the stub and the library path ---------------------------------------------------------------------------
def _stub() -> Path | None:
    try:
        return paths.stub_lib().resolve()
    except FileNotFoundError:
        return None


def _direct_use(env: dict[str, str]) -> bool:
    """Whether this environment is meant to run CUDA programs through the stub without `fargpu run`."""
    return bool(env.get("FARGPU_SERVER")) or "fargpu" in env.get("LD_LIBRARY_PATH", "")


def check_stub_on_path(env: dict[str, str]) -> Check:
    stub = _stub()
    if stub is None:
        return Check("stub", FAIL, f"the fargpu stub (libcuda.so.1) is not installed under {paths.native_dir()}",
                     "reinstall fargpu (`pip install .` in the checkout, or `make venv`)")  # fmt: skip
    dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    first = next((Path(d) for d in dirs if (Path(d) / "libcuda.so.1").exists()), None)
    export = f"export LD_LIBRARY_PATH={stub.parent}:$LD_LIBRARY_PATH"
    if first is not None and (first / "libcuda.so.1").resolve() == stub:
        return Check("stub", OK, f"the stub {stub} is the first libcuda.so.1 on LD_LIBRARY_PATH")
    level = FAIL if _direct_use(env) else WARN
    why = "programs started directly (not with `fargpu run`, which sets it) "
    if first is not None:
        return Check("stub", level, f"LD_LIBRARY_PATH finds {first / 'libcuda.so.1'} before the fargpu stub: {why}"
                     "load that library", f"put the stub first: {export}")  # fmt: skip
    return Check("stub", level, f"the stub {stub} is not on LD_LIBRARY_PATH: {why}will not load it",
                 f"use `fargpu run -- CMD`, or {export}")  # fmt: skip


_WHICH_LIBCUDA = r"""
import ctypes, json, sys
try:
    ctypes.CDLL("libcuda.so.1")
except OSError as e:
    print(json.dumps({"error": str(e)})); sys.exit(0)
maps = open("/proc/self/maps").read().split("\n")
print(json.dumps({"path": next((l.split()[-1] for l in maps if "libcuda.so" in l and "/" in l), "")}))
"""


def check_loaded_driver(env: dict[str, str]) -> Check:
    """Loads libcuda.so.1 in a child with this environment (as a CUDA program would) and sees which file came."""
    stub = _stub()
    child = {k: v for k, v in env.items() if k not in ("FARGPU_SERVER", "FARGPU_POOL_URL")}  # load, connect nothing
    try:
        out = subprocess.run([sys.executable, "-c", _WHICH_LIBCUDA], env=child, capture_output=True, text=True,
                             timeout=30)  # fmt: skip
        doc = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError) as e:
        return Check("driver", WARN, f"could not load libcuda.so.1 in a child process: {e}", "")
    level = FAIL if _direct_use(env) else WARN
    fix = f"put the stub first: export LD_LIBRARY_PATH={stub.parent if stub else '<stub dir>'}:$LD_LIBRARY_PATH"
    if "error" in doc:
        return Check("driver", level, f"no libcuda.so.1 loads here ({doc['error']})", fix)
    path = Path(doc["path"])
    if stub is not None and path.resolve() == stub:
        return Check("driver", OK, f"libcuda.so.1 resolves to the fargpu stub {path}")
    return Check("driver", level, f"libcuda.so.1 resolves to {path}, the real driver (or another library), not the "
                 "fargpu stub: CUDA programs here would not go to the pool", fix)  # fmt: skip


# ---- the pool manager ----------------------------------------------------------------------------------------
def check_pool(url: str, admin_token: str | None, want_gpus: bool, timeout_s: float) -> list[Check]:
    checks: list[Check] = []
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, verify=verify_for(url)) as http:
            info = http.get("/v1/info").json()
            checks.append(Check("pool", OK, f"the pool manager at {url} answers ({info.get('store')} store)"))
            theirs = str(info.get("version", "?"))
            if theirs != __version__:
                checks.append(Check("version", WARN, f"the pool manager runs fargpu {theirs}, this is {__version__}",
                                    "run the same fargpu version everywhere"))  # fmt: skip
            if want_gpus:
                key = find_api_key() or admin_token
                r = http.get("/v1/status", headers={"Authorization": f"Bearer {key}"} if key else None)
                if r.status_code == 401:
                    checks.append(Check("key", FAIL, f"the pool at {url} refuses this machine's API key, or none "
                                        "was found: " + str(r.json().get("reason", "")),
                                        "set FARGPU_API_KEY (fargpu pool keys create TENANT gives one)"))  # fmt: skip
                status = r.json() if r.status_code == 200 else {}
                if r.status_code == 401:
                    pass
                elif not status.get("nodes_up") or not status.get("gpus"):
                    checks.append(Check("gpu", FAIL, f"the pool at {url} has no node up, so no GPU to lease",
                                        "start a node server on a GPU machine: fargpu server --pool " + url))
                else:
                    checks.append(Check("gpu", OK, f"{status['gpus']} GPU(s) on {status['nodes_up']} node(s) up"))
            if admin_token:
                r = http.post("/v1/admin/nodes/fargpu-doctor-no-such-node/undrain",
                              headers={"Authorization": f"Bearer {admin_token}"})  # fmt: skip
                if r.status_code in (401, 403):
                    reason = r.json().get("reason", r.text)
                    checks.append(Check("admin token", FAIL, f"the pool manager refused the admin token: {reason}",
                                        "use the pool manager's FARGPU_ADMIN_TOKEN (set it there if it has none)"))
                else:
                    checks.append(Check("admin token", OK, "the pool manager accepts the admin token"))
    except (httpx.HTTPError, ValueError, TlsConfigError) as e:
        tls = explain(url, e) if isinstance(e, httpx.HTTPError) else str(e)
        why = tls or f"cannot reach the pool manager at {url} ({str(e) or type(e).__name__})"
        fix = ("fix the URL's scheme or FARGPU_TLS_CA" if tls else
               "start it (`fargpu pool-manager`), or point --pool / FARGPU_POOL_URL at it")  # fmt: skip
        checks.append(Check("pool", FAIL, why, fix))
    return checks


# ---- the node server -----------------------------------------------------------------------------------------
def _stub_ops_hash(stub: Path | None) -> str | None:
    """The API-table hash compiled into the stub (it sends it in HELLO), None when it cannot be read."""
    if stub is None:
        return None
    with contextlib.suppress(OSError):
        found = re.findall(rb"\x00([0-9a-f]{16})\x00", stub.read_bytes())
        from fargpu.protocol.generated.ops import OPS_HASH

        return OPS_HASH if OPS_HASH.encode() in found else (found[0].decode() if len(found) == 1 else "unknown")
    return None


def _connect(endpoint: str, timeout_s: float) -> socket.socket:
    if endpoint.startswith("unix://") or endpoint.startswith("/"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout_s)
        s.connect(endpoint.removeprefix("unix://"))
        return s
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the node server closed the connection")
        buf += chunk
    return buf


def _hello(endpoint: str, token: str, timeout_s: float) -> tuple[int, dict[str, object]]:
    """Sends HELLO with this fargpu's API table; returns the answer's frame type and body (then closes)."""
    from fargpu.protocol.generated.ops import OPS_HASH
    from fargpu.protocol.wire import HEADER_SIZE, PROTO_VERSION, FrameType, decode_header, encode_frame

    body = {"proto": PROTO_VERSION, "token": token, "ops_hash": OPS_HASH, "pid": os.getpid(),
            "host": socket.gethostname(), "exe": "fargpu doctor", "stub": "doctor"}  # fmt: skip
    with _connect(endpoint, timeout_s) as s:
        s.sendall(encode_frame(FrameType.HELLO, msgpack.packb(body)))
        head = decode_header(_recv_exact(s, HEADER_SIZE))
        doc = msgpack.unpackb(_recv_exact(s, head.length), raw=False)
        if head.type == FrameType.HELLO_OK:
            with contextlib.suppress(OSError):
                s.sendall(encode_frame(FrameType.CLOSE, msgpack.packb({"reason": "fargpu doctor"})))
        return head.type, doc if isinstance(doc, dict) else {}


def check_node(endpoint: str, token: str | None, expect_gpu: bool, timeout_s: float) -> list[Check]:
    from fargpu.protocol.generated.ops import OPS_HASH
    from fargpu.protocol.wire import FrameType

    checks: list[Check] = []
    stub_hash = _stub_ops_hash(_stub())
    if stub_hash is not None and stub_hash != OPS_HASH:
        checks.append(Check("version", FAIL, f"the stub was built from API table {stub_hash}, this fargpu's server "
                            f"side from {OPS_HASH}", "reinstall fargpu so that stub and server match"))  # fmt: skip
    try:
        _connect(endpoint, timeout_s).close()
    except (OSError, ValueError) as e:
        checks.append(Check("node", FAIL, f"cannot reach the node server at {endpoint} ({e})",
                            "start it (`fargpu server`), or point --server / FARGPU_SERVER at it (host:port or a "
                            "unix socket path); check firewalls between here and there"))  # fmt: skip
        return checks
    checks.append(Check("node", OK, f"the node server at {endpoint} accepts connections"))
    if not token:
        checks.append(Check("token", SKIP, "no token given, so the handshake was not tried",
                            "pass --token or set FARGPU_TOKEN to check it"))  # fmt: skip
        return checks
    try:
        ftype, doc = _hello(endpoint, token, timeout_s)
    except (OSError, ValueError, ConnectionError) as e:
        checks.append(Check("node", FAIL, f"the node server at {endpoint} broke off the handshake ({e})",
                            "is that address a fargpu node server? See its log"))  # fmt: skip
        return checks
    reason = str(doc.get("reason", ""))
    if ftype != FrameType.HELLO_OK:
        if "API table" in reason or "protocol version" in reason:
            checks.append(Check("version", FAIL, f"the node server refused this fargpu version: {reason}",
                                "run the same fargpu version on clients and nodes"))  # fmt: skip
        else:
            checks.append(Check("token", FAIL, f"the node server refused the token: {reason}",
                                "use a current token: FARGPU_TOKEN of the node server, or a fresh lease "
                                "(`fargpu run` gets one)"))  # fmt: skip
        return checks
    checks.append(Check("token", OK, f"the node server accepted the token (backend {doc.get('backend')})"))
    driver = str(doc.get("driver_version", ""))
    if driver == "simulated" or doc.get("backend") == "sim":
        level = FAIL if expect_gpu else WARN
        checks.append(Check("gpu", level, "the node server runs the simulated device (a test double, not a GPU)",
                            "start the node server on a machine with a GPU and its driver (--backend cuda)"))
    elif driver and (m := re.match(r"(\d+)\.", driver)) and int(m.group(1)) < CUDA13_MIN_DRIVER:
        checks.append(Check("version", FAIL, f"the node's driver {driver} is older than CUDA 13 needs "
                            f"({CUDA13_MIN_DRIVER} or newer)", "update the NVIDIA driver on the node"))  # fmt: skip
    else:
        checks.append(Check("gpu", OK, f"the node serves a GPU (driver {driver or 'version unknown'})"))
    return checks


# ---- this machine: ports, GPU, Redis ---------------------------------------------------------------------------
def _holder(port: int) -> str:
    """' (pid N, NAME)' of the process that listens on TCP `port`, when /proc tells; else ''."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f" (pid {pid}, {name})"
    return ""


def check_port(host: str, port: int, what: str, flag: str) -> Check:
    if port <= 0:
        return Check(f"port {what}", SKIP, f"{what}: any free port or off ({flag} {port})")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return Check(f"port {port}", FAIL, f"{what} port {port} on {host} is in use by another "
                             f"program{_holder(port)}", f"stop it, or choose another port with {flag}")  # fmt: skip
            return Check(f"port {port}", FAIL, f"cannot listen on {host}:{port} for {what} ({e.strerror})",
                         f"choose another address or port with {flag}")  # fmt: skip
    return Check(f"port {port}", OK, f"{what} port {port} on {host} is free")


def check_gpu_here(backend: str, expect_gpu: bool) -> Check:
    from fargpu.server.backend import select

    try:
        be = select(backend)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        return Check("gpu", FAIL, f"no GPU here: {e}",
                     "install the NVIDIA driver (libcuda.so.1) and check `nvidia-smi`, or use --backend sim")
    if be.simulated:
        level = FAIL if expect_gpu or backend == "cuda" else WARN
        found = "no usable GPU driver was found" if backend == "auto" else "--backend sim was asked for"
        return Check("gpu", level, f"the node server would run the simulated device: {found}",
                     "install the NVIDIA driver and check `nvidia-smi` (for a real GPU)")  # fmt: skip
    return Check("gpu", OK, f"{be.device_count} GPU(s), driver {be.driver_version or be.driver}")


def check_redis(url: str, timeout_s: float) -> Check:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as e:
        return Check("redis", FAIL, f"Redis at {url} does not answer ({e})",
                     "start redis-server (Debian: apt-get install redis-server, or scripts/setup_redis.sh), or point "
                     "--redis-url at yours; or use --store embedded")  # fmt: skip
    return Check("redis", OK, f"Redis at {url} answers")


def check_enrol_token(env: dict[str, str]) -> Check:
    from fargpu.pool_manager.enrolment import ENROL_TOKEN_ENV
    from fargpu.pool_manager.state_paths import enrol_token_file

    if env.get(ENROL_TOKEN_ENV):
        return Check("enrol token", OK, f"{ENROL_TOKEN_ENV} is set")
    path = enrol_token_file()
    if path.exists():
        return Check("enrol token", OK, f"the enrolment token is in {path} (a pool manager on this machine wrote it)")
    return Check("enrol token", FAIL, f"no enrolment token: {ENROL_TOKEN_ENV} is not set and {path} does not exist",
                 f"set {ENROL_TOKEN_ENV} to the contents of the pool manager's enrol-token file")  # fmt: skip


# ---- putting it together -------------------------------------------------------------------------------------
def run_checks(opts: Options, env: dict[str, str] | None = None) -> list[Check]:
    env = dict(os.environ if env is None else env)
    pool = opts.pool or env.get("FARGPU_POOL_URL") or None
    checks: list[Check] = []
    if opts.role == "client":
        checks += [check_stub_on_path(env), check_loaded_driver(env)]
        server = opts.server or env.get("FARGPU_SERVER")
        token = opts.token or env.get("FARGPU_TOKEN") or env.get("FARGPU_LEASE_TOKEN")
        if server:
            checks += check_node(server, token, opts.expect_gpu, opts.timeout_s)
        if pool or not server:
            checks += check_pool(pool or "http://127.0.0.1:7000", opts.admin_token, True, opts.timeout_s)
    elif opts.role == "node":
        checks.append(check_gpu_here(opts.backend, opts.expect_gpu))
        if opts.listen:
            host, _, port = opts.listen.rpartition(":")
            checks.append(check_port(host.strip("[]") or "127.0.0.1", int(port), "the session listener's",
                                     "--listen HOST:PORT"))  # fmt: skip
        checks.append(check_port(opts.metrics_host, opts.metrics_port, "the Prometheus metrics", "--metrics-port"))
        if pool:
            checks += check_pool(pool, opts.admin_token, False, opts.timeout_s)
            checks.append(check_enrol_token(env))
    elif opts.role == "pool-manager":
        checks.append(check_port(opts.rest_host, opts.rest_port, "the pool manager's REST", "--port"))
        checks.append(check_port(opts.grpc_host, opts.grpc_port, "the pool manager's gRPC", "--grpc-port"))
        if opts.store == "redis":
            checks.append(check_redis(opts.redis_url, opts.timeout_s))
    else:
        raise ValueError(f"unknown role {opts.role!r}: client, node or pool-manager")
    return checks


_STYLE = {OK: "green", WARN: "yellow", FAIL: "red", SKIP: "dim"}


def report(checks: list[Check], as_json: bool, echo: Callable[[str], None] = print) -> int:
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
        return 1 if failed else 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fargpu doctor", show_lines=False)
    for col in ("check", "result", "what was found", "what to do"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail, c.fix)
    console = Console()
    console.print(table)
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed[/red]: " + "; ".join(c.name for c in failed),
                      highlight=False)  # fmt: skip
    else:
        console.print("[green]nothing wrong found[/green]", highlight=False)
    return 1 if failed else 0

