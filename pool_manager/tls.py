"""TLS policy and where certificates come from (no key generation here: that is `tls_ca.py`).

The rule, one place for every link (REST, gRPC, the data socket):
- TLS is on for a listener that other machines can reach: a pool manager whose REST or gRPC address is not
  loopback serves HTTPS and gRPC over TLS (nodes then present client certificates: mTLS); a node server accepts
  connections from other machines only over TLS. `FARGPU_TLS=on` (or `--tls on`) turns it on for loopback too,
  `off` turns it off everywhere (a private network, or TLS terminated in front).
- Loopback and unix sockets of one machine may stay plaintext (`auto`, the default): traffic there never
  leaves the kernel, only root can watch it, and the API key and lease token still authenticate every request.
  That keeps one machine zero-configuration (`make demo` and the README's commands are unchanged).

Certificates come from files: `FARGPU_TLS_CERT` / `FARGPU_TLS_KEY` (this server's chain and key, PEM) and
`FARGPU_TLS_CA` (the CA clients verify against; a pool manager that has its key too, `FARGPU_TLS_CA_KEY`, issues
node certificates with it). Without them, development mode: the first pool manager on a machine creates a CA in
`<state dir>/tls/` (`ca.pem`, `ca.key` mode 0600) and a server certificate for this machine's names, and clients
of the same user find `ca.pem` there by themselves. Other machines need `ca.pem` copied and FARGPU_TLS_CA set."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

TLS_ENV = "FARGPU_TLS"
CERT_ENV = "FARGPU_TLS_CERT"
KEY_ENV = "FARGPU_TLS_KEY"
CA_ENV = "FARGPU_TLS_CA"
CA_KEY_ENV = "FARGPU_TLS_CA_KEY"
MODES = ("auto", "on", "off")


class TlsConfigError(RuntimeError):
    """TLS cannot be set up as asked; the message says what to set."""


def tls_dir() -> Path:
    from fargpu.pool_manager.state_paths import state_dir

    return state_dir() / "tls"


def is_loopback(host: str) -> bool:
    """True for loopback addresses and 'localhost' (not for wildcards: 0.0.0.0 is reachable from elsewhere)."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a loopback peer of a dual-stack listener
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def mode_from_env(default: str = "auto") -> str:
    mode = (os.environ.get(TLS_ENV) or default).strip().lower()
    if mode in ("1", "true", "yes"):
        mode = "on"
    if mode in ("0", "false", "no"):
        mode = "off"
    if mode not in MODES:
        raise TlsConfigError(f"{TLS_ENV}={mode!r}: expected auto, on or off")
    return mode


def wanted(mode: str, hosts: list[str]) -> bool:
    """Whether listeners on `hosts` use TLS under `mode` (auto: when one of them is not loopback)."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return any(not is_loopback(h) for h in hosts if h)


@dataclass(frozen=True)
class ServerFiles:
    """What a TLS server needs: its certificate chain and key, and the CA its clients (and nodes) verify with."""

    cert: Path
    key: Path
    ca: Path
    ca_key: Path | None = None  # present when this process may issue node certificates
    development: bool = False


def write_private(path: Path, data: bytes) -> None:
    """Writes `data` to `path` with mode 0600 (replacing it atomically)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def client_ca_file() -> Path | None:
    """The CA a client verifies servers with: FARGPU_TLS_CA, else this machine's development CA if there is one."""
    env = os.environ.get(CA_ENV)
    if env:
        return Path(env)
    dev = tls_dir() / "ca.pem"
    return dev if dev.is_file() else None


def client_context(ca: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the server against `ca` (else client_ca_file(), else the system's CAs)."""
    ca = ca or client_ca_file()
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"cannot load the CA file {ca} ({e}): set {CA_ENV} to the pool's ca.pem") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(files: ServerFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"cannot load the TLS certificate {files.cert} with its key {files.key} ({e}): "
                             f"check {CERT_ENV} and {KEY_ENV}") from None  # fmt: skip
    return ctx


def machine_names(extra: list[str] | None = None) -> list[str]:
    """Names a development server certificate covers: localhost, loopback, this host's name and addresses."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    try:  # the address the default route leaves from (UDP connect sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            names.append(str(s.getsockname()[0]))
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.append(str(info[4][0]))
    except OSError:
        pass
    for h in extra or []:
        h = h.strip("[]")
        if h and h not in ("0.0.0.0", "::"):
            names.append(h)
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def server_files(cert: str | None, key: str | None, ca: str | None, ca_key: str | None,
                 hosts: list[str]) -> ServerFiles:  # fmt: skip
    """The files a TLS server uses: those given (flags or FARGPU_TLS_*), else development ones made here."""
    cert = cert or os.environ.get(CERT_ENV) or None
    key = key or os.environ.get(KEY_ENV) or None
    ca = ca or os.environ.get(CA_ENV) or None
    ca_key = ca_key or os.environ.get(CA_KEY_ENV) or None
    if bool(cert) != bool(key):
        raise TlsConfigError(f"give both a certificate and its key ({CERT_ENV} and {KEY_ENV}), or neither")
    if cert and key:
        if not ca:
            raise TlsConfigError(f"with {CERT_ENV} set, also set {CA_ENV} to the CA that issued it (clients and "
                                 "nodes verify against it)")  # fmt: skip
        for p in (cert, key, ca, ca_key):
            if p and not Path(p).is_file():
                raise TlsConfigError(f"the TLS file {p} does not exist")
        return ServerFiles(Path(cert), Path(key), Path(ca), Path(ca_key) if ca_key else None)
    from fargpu.pool_manager.tls_ca import development_server_files

    return development_server_files(machine_names(hosts))


def verify_for(url: str) -> ssl.SSLContext | bool:
    """httpx's `verify` for a URL: the pool's CA for https (see client_context), True otherwise."""
    return client_context() if url.startswith("https://") else True


def speaks_tls(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether host:port answers a TLS handshake (nothing is verified: this only tells the protocol)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s) as raw:
            with ctx.wrap_socket(raw) as s:
                return bool(s.version())
    except (OSError, ssl.SSLError):
        return False


def explain(url: str, error: BaseException) -> str | None:
    """One line on a failed connection that TLS explains: a plaintext client at a TLS server, the other way
    round, or a certificate this client cannot verify. None when TLS has nothing to do with it."""
    from urllib.parse import urlsplit

    text = f"{error} {error.__cause__ or ''} {error.__context__ or ''}"
    parts = urlsplit(url)
    if parts.scheme == "http" and parts.hostname and parts.port:
        if speaks_tls(parts.hostname, parts.port):
            return (f"the pool manager at {url} speaks HTTPS (TLS is on): use "
                    f"https://{parts.netloc}{parts.path} (--pool / FARGPU_POOL_URL)")  # fmt: skip
        return None
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return f"{url} does not speak TLS: use http://{parts.netloc}{parts.path}, or turn TLS on there"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        ca = client_ca_file()
        return (f"cannot verify the TLS certificate of {url} against {ca or 'the system CAs'}: set {CA_ENV} to "
                "the pool's ca.pem (<state dir>/tls/ca.pem on the pool's machine)")  # fmt: skip
    return None
