"""A small private CA: the server's TLS certificate and client certificates that carry user and groups.

Kubernetes clients (kubectl is Go) authenticate the server by its CA and present client certificates
whose subject CN is the user and whose O attributes are the groups; this module issues both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slurmlink.auth.identity import Identity

CA_DAYS = 3650
DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
RENEW_BEFORE = dt.timedelta(days=30)
# Tolerate clocks that are slightly behind ours when a freshly issued certificate is first used.
_BACKDATE = dt.timedelta(minutes=5)

CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
HostName = ipaddress.IPv4Address | ipaddress.IPv6Address | str


class PKIError(RuntimeError):
    """The on-disk CA material is unusable and cannot be repaired without losing trust."""


@dataclass(frozen=True)
class CertKeyPair:
    """A PEM certificate and its unencrypted PKCS#8 PEM private key."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class ServerCredentials:
    """Where the server's TLS material lives, ready for ``ssl.SSLContext.load_cert_chain``."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` via a temp file and ``os.replace`` so readers never see a half-written file.

    The temp file is created with ``mode`` already set, so secrets are never briefly world-readable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` so concurrent processes don't race a read-modify-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> dt.datetime:
    """Current UTC time; one place so validity maths is consistent."""
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key: small, fast, and accepted by Go's crypto/tls and OpenSSL alike."""
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: CAKey) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM, which Go, OpenSSL and Python all load."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(pem: bytes, source: Path | str) -> CAKey:
    """Load a PEM private key, rejecting algorithms we cannot sign certificates with."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"{source}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"{source}: unsupported key type {type(key).__name__}; use ECDSA or RSA")
    return key


def _same_public_key(cert: x509.Certificate, key: CAKey) -> bool:
    """Whether ``key`` is the private half of ``cert``; guards against a crash between two writes."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _parse_host(host: str) -> HostName:
    """Normalise a host to an IP address object or a lower-case DNS name so SANs compare reliably."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return text.lower().rstrip(".")


def _wanted_hosts(hosts: Iterable[str]) -> list[HostName]:
    """Requested hosts plus the loopback defaults, normalised and de-duplicated in order."""
    wanted: list[HostName] = []
    for host in (*DEFAULT_HOSTS, *hosts):
        parsed = _parse_host(host)
        if parsed != "" and parsed not in wanted:
            wanted.append(parsed)
    return wanted


def _san_hosts(cert: x509.Certificate) -> set[HostName]:
    """The IP and DNS names a certificate is valid for, normalised like ``_parse_host``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    found: set[HostName] = {
        ip
        for ip in san.get_values_for_type(x509.IPAddress)
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    }
    found.update(name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName))
    return found


class CertificateAuthority:
    """A self-signed CA whose key signs the server certificate and every client certificate."""

    def __init__(self, cert: x509.Certificate, key: CAKey) -> None:
        """Wrap an already-loaded CA; use :meth:`load_or_create` to get one from disk."""
        if not _same_public_key(cert, key):
            raise PKIError("CA certificate and key do not match")
        self._cert = cert
        self._key = key

    @classmethod
    def load_or_create(cls, directory: Path, common_name: str = "slurmlink-ca") -> CertificateAuthority:
        """Load ``ca.crt``/``ca.key`` from ``directory``, creating them on first use.

        A key without a certificate (a crash mid-creation) is replaced, since nothing can trust it yet;
        a certificate without its key is an error, because regenerating would break every issued cert.
        """
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "ca.crt", directory / "ca.key"
        with file_lock(directory / ".ca.lock"):
            if cert_path.exists():
                if not key_path.exists():
                    raise PKIError(f"{cert_path} exists but {key_path} is missing; cannot issue certificates")
                try:
                    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                except ValueError as exc:
                    raise PKIError(f"{cert_path}: not a PEM certificate: {exc}") from exc
                key = _load_key(key_path.read_bytes(), key_path)
                if not _same_public_key(cert, key):
                    raise PKIError(f"{cert_path} and {key_path} do not belong together")
                return cls(cert, key)
            ca = cls._create(common_name)
            # Key first: if we crash before the certificate lands, the next call simply starts over.
            atomic_write_bytes(key_path, _key_pem(ca._key), 0o600)
            atomic_write_bytes(cert_path, ca.cert_pem, 0o644)
            return ca

    @classmethod
    def _create(cls, common_name: str) -> CertificateAuthority:
        """Generate a new self-signed CA allowed to sign only end-entity certificates."""
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed CA certificate, for callers that verify chains themselves."""
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM, what clients put in ``certificate-authority-data``."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether this CA signed ``cert`` (so a stale cert from an older CA is not reused)."""
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def issue_server(
        self, hosts: list[str], common_name: str = "slurmlink-server", days: int = 825
    ) -> CertKeyPair:
        """Issue a TLS server certificate valid for ``hosts`` plus loopback names.

        Go ignores the CN and only matches SANs, so every host goes into SubjectAltName as an IP or DNS
        entry. 825 days is the longest lifetime Apple clients accept.
        """
        names: list[x509.GeneralName] = []
        for host in _wanted_hosts(hosts):
            names.append(x509.DNSName(host) if isinstance(host, str) else x509.IPAddress(host))
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.SubjectAlternativeName(names), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return self._issue(subject, extensions, days)

    def issue_client(self, user: str, groups: list[str], days: int = 500) -> CertKeyPair:
        """Issue a client certificate that Kubernetes-style servers read as ``user`` in ``groups``."""
        if not user:
            raise ValueError("client certificate needs a non-empty user name")
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ]
        return self._issue(x509.Name(attributes), extensions, days)

    def _issue(
        self, subject: x509.Name, extensions: list[tuple[x509.ExtensionType, bool]], days: int
    ) -> CertKeyPair:
        """Sign an end-entity certificate for a new key; never outlives the CA itself."""
        if days <= 0:
            raise ValueError(f"certificate lifetime must be positive, got {days} days")
        key = _new_key()
        now = _now()
        not_after = min(now + dt.timedelta(days=days), self._cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(self._key, hashes.SHA256())
        return CertKeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """Link issued certs to this CA, reusing its own SKI when it has one so chain building matches."""
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _reusable_server_cert(
    ca: CertificateAuthority, cert_path: Path, key_path: Path, hosts: list[str]
) -> bool:
    """Whether the server cert on disk is ours, matches its key, lasts 30+ days and covers every host."""
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = _load_key(key_path.read_bytes(), key_path)
    except (ValueError, PKIError):
        return False
    if not (ca.issued(cert) and _same_public_key(cert, key)):
        return False
    if cert.not_valid_after_utc - _now() <= RENEW_BEFORE:
        return False
    return set(_wanted_hosts(hosts)) <= _san_hosts(cert)


def ensure_server_credentials(state_dir: Path, hosts: list[str]) -> ServerCredentials:
    """Make sure ``state_dir/pki`` holds a CA and a current server cert for ``hosts``; return the paths.

    Re-issuing only when needed keeps the certificate stable across restarts, so clients that pinned
    nothing but the CA keep working either way.
    """
    pki = state_dir / "pki"
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    ca = CertificateAuthority.load_or_create(pki)
    creds = ServerCredentials(
        ca_cert=pki / "ca.crt", server_cert=pki / "server.crt", server_key=pki / "server.key"
    )
    with file_lock(pki / ".server.lock"):
        if not _reusable_server_cert(ca, creds.server_cert, creds.server_key, hosts):
            pair = ca.issue_server(hosts)
            # A crash between these two writes leaves a mismatched pair, which the check above re-issues.
            atomic_write_bytes(creds.server_key, pair.key_pem, 0o600)
            atomic_write_bytes(creds.server_cert, pair.cert_pem, 0o644)
    return creds


def _subject_values(peercert: Mapping[str, Any], attribute: str) -> list[str]:
    """All values of one attribute in the subject of a ``getpeercert()`` dict, in certificate order."""
    values: list[str] = []
    for rdn in peercert.get("subject", ()):
        for pair in rdn:
            if len(pair) == 2 and pair[0] == attribute and isinstance(pair[1], str):
                values.append(pair[1])
    return values


def identity_from_peercert(peercert: Mapping[str, Any] | None) -> Identity | None:
    """Turn a verified peer certificate (``SSLSocket.getpeercert()``) into user and groups.

    Follows Kubernetes: the CN is the user and each O is a group. Returns ``None`` when no certificate
    was presented or it has no single, non-empty CN, so the caller falls back to other authentication.
    """
    if not peercert:
        return None
    common_names = _subject_values(peercert, "commonName")
    if len(common_names) != 1 or not common_names[0]:
        return None
    return Identity(user=common_names[0], groups=tuple(_subject_values(peercert, "organizationName")))
