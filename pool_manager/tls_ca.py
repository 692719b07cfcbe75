"""A small certificate authority (with the `cryptography` library): the development CA of one machine and the
node certificates a pool manager issues at enrolment.

`CertificateAuthority.load_or_create(dir)` keeps `ca.pem` and `ca.key` (0600, in a 0700 directory) and makes
them once, under a file lock, so two processes on a machine never make two CAs. `issue(cn, names, days)` signs a
fresh P-256 key: server and client use (a node presents it to the pool as its client certificate and to stubs as
its data-socket certificate), its common name the node id, its subject alternative names the host names and
addresses given. Keys never reach a log."""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fargpu.pool_manager.tls import ServerFiles, TlsConfigError, tls_dir, write_private

CA_DAYS = 3650
SERVER_DAYS = 365
NODE_DAYS = 90


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fargpu"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])])  # fmt: skip


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n.strip("[]"))))
        except ValueError:
            if n and all(c.isalnum() or c in "-._" for c in n):
                out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
        except (OSError, ValueError, TypeError) as e:
            raise TlsConfigError(f"cannot load the CA {cert_file} with its key {key_file} ({e})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsConfigError(f"the CA key {key_file} is not an EC key: give a P-256 CA key")
        return cls(cert, key, cert_file)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_file, key_file = directory / "ca.pem", directory / "ca.key"
        with open(directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cert_file.is_file() and key_file.is_file():
                return cls.load(cert_file, key_file)
            key = ec.generate_private_key(ec.SECP256R1())
            name = _name(f"fargpu development CA ({os.uname().nodename})")
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(_now() - datetime.timedelta(minutes=5))
                    .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                 key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                 key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                 decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))  # fmt: skip
            write_private(key_file, key_pem(key))
            cert_file.write_bytes(cert_pem(cert))
            return cls(cert, key, cert_file)

    def issue(self, cn: str, names: list[str], days: float = NODE_DAYS,
              not_before: datetime.datetime | None = None,
              csr: bytes | None = None) -> tuple[bytes, bytes]:  # fmt: skip
        """(key PEM, certificate PEM) of a new certificate for `cn` and `names`, for server and client use. With
        `csr` (PEM, its signature checked) the certificate is for the CSR's key, and no key is returned (b"");
        only the key is taken from the CSR: the name and addresses are the pool's to decide."""
        key = ec.generate_private_key(ec.SECP256R1()) if csr is None else None
        public = key.public_key() if key is not None else _csr_key(csr or b"")
        start = not_before or _now() - datetime.timedelta(minutes=5)  # some slack for clocks a little behind
        end = (not_before or _now()) + datetime.timedelta(days=days)
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))  # fmt: skip
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return (key_pem(key) if key is not None else b""), cert_pem(cert)


def _csr_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of a certificate signing request, checked: its signature, and a P-256 key."""
    try:
        req = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise ValueError("the certificate request is not a PEM CSR") from None
    if not req.is_signature_valid:
        raise ValueError("the certificate request's signature is wrong")
    public = req.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise ValueError("the certificate request must be for a P-256 EC key")
    return public


def make_csr(cn: str) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM): a new P-256 key that stays with its maker, and a request for a certificate of it."""
    key = ec.generate_private_key(ec.SECP256R1())
    req = x509.CertificateSigningRequestBuilder().subject_name(_name(cn)).sign(key, hashes.SHA256())
    return key_pem(key), req.public_bytes(serialization.Encoding.PEM)


def covers(cert_file: Path, names: list[str], min_days: float = 7) -> bool:
    """Whether the certificate in `cert_file` names all of `names` and stays valid for `min_days` more."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    want = {str(g.value) for g in _san(names)}
    return want <= have and cert.not_valid_after_utc > _now() + datetime.timedelta(days=min_days)


def development_server_files(names: list[str], directory: Path | None = None) -> ServerFiles:
    """This machine's development CA and a server certificate for `names` (made or renewed as needed)."""
    directory = directory or tls_dir()
    ca = CertificateAuthority.load_or_create(directory)
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (key_file.is_file() and covers(cert_file, names)):
            key, cert = ca.issue("fargpu server", names, SERVER_DAYS)
            write_private(key_file, key)
            cert_file.write_bytes(cert)
    return ServerFiles(cert_file, key_file, ca.cert_file, directory / "ca.key", development=True)
