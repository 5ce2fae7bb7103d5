"""The private CA: real TLS handshakes with issued certificates, SANs, reuse and re-issue rules."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slurmlink.auth.identity import Identity
from slurmlink.auth.pki import (
    CertificateAuthority,
    CertKeyPair,
    PKIError,
    ensure_server_credentials,
    identity_from_peercert,
)


def _write_pair(directory: Path, name: str, pair: CertKeyPair) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    return cert, key


def _server_context(ca_file: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def _client_context(ca_file: Path, client: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca_file))
    if client is not None:
        ctx.load_cert_chain(*client)
    return ctx


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "localhost"
) -> dict[str, Any]:
    """Run a TLS handshake over a socketpair; report the server's view of the peer and any errors."""
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)
    result: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                result["peercert"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            result["server_error"] = exc
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            result["reply"] = tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        result["client_error"] = exc
    finally:
        client_sock.close()
        thread.join(10)
    return result


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


def _cert(pair: CertKeyPair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert_pem)


def _sans(cert: x509.Certificate) -> tuple[set[str], set[object]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), set(san.get_values_for_type(x509.IPAddress))


def test_load_or_create_is_idempotent_and_key_is_private(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    second = CertificateAuthority.load_or_create(tmp_path)
    assert second.cert_pem == first.cert_pem
    # A cert issued by the first instance verifies against the reloaded CA's key material.
    assert second.issued(_cert(first.issue_client("alice", [])))
    cert = x509.load_pem_x509_certificate(first.cert_pem)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is True
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "slurmlink-ca"


def test_load_or_create_recovers_from_key_without_cert(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.crt").unlink()
    ca = CertificateAuthority.load_or_create(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == ca.cert_pem


def test_load_or_create_refuses_cert_without_key(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(PKIError, match=r"ca\.key is missing"):
        CertificateAuthority.load_or_create(tmp_path)


def test_load_or_create_rejects_mismatched_key(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "a")
    CertificateAuthority.load_or_create(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(PKIError, match="do not belong together"):
        CertificateAuthority.load_or_create(tmp_path / "a")


def test_server_cert_sans_and_usage(ca: CertificateAuthority) -> None:
    pair = ca.issue_server(["node01.example", "10.1.2.3", "fd00::7", "Head.Example."])
    cert = _cert(pair)
    dns, ips = _sans(cert)
    assert dns == {"localhost", "node01.example", "head.example"}
    assert ips == {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3", "fd00::7")}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.issued(cert)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=824) < lifetime < dt.timedelta(days=826)


def test_client_cert_subject_order(ca: CertificateAuthority) -> None:
    cert = _cert(ca.issue_client("alice", ["dws-admins", "system:authenticated"]))
    assert [(a.oid, a.value) for a in cert.subject] == [
        (NameOID.COMMON_NAME, "alice"),
        (NameOID.ORGANIZATION_NAME, "dws-admins"),
        (NameOID.ORGANIZATION_NAME, "system:authenticated"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_tls_handshake_yields_identity(tmp_path: Path, ca: CertificateAuthority) -> None:
    ca_file = tmp_path / "ca" / "ca.crt"
    server = _write_pair(tmp_path, "server", ca.issue_server(["node01.example", "10.9.8.7"]))
    client = _write_pair(tmp_path, "alice", ca.issue_client("alice", ["admins", "users"]))
    for hostname in ("localhost", "127.0.0.1", "::1", "node01.example", "10.9.8.7"):
        result = _handshake(_server_context(ca_file, *server), _client_context(ca_file, client), hostname)
        assert "server_error" not in result and "client_error" not in result, result
        assert result["reply"] == b"ok"
        assert identity_from_peercert(result["peercert"]) == Identity("alice", ("admins", "users"))


def test_tls_without_client_cert_is_anonymous(tmp_path: Path, ca: CertificateAuthority) -> None:
    ca_file = tmp_path / "ca" / "ca.crt"
    server = _write_pair(tmp_path, "server", ca.issue_server([]))
    result = _handshake(_server_context(ca_file, *server), _client_context(ca_file, None))
    assert result["reply"] == b"ok"
    assert identity_from_peercert(result["peercert"]) is None


def test_client_cert_from_other_ca_is_rejected(tmp_path: Path, ca: CertificateAuthority) -> None:
    ca_file = tmp_path / "ca" / "ca.crt"
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    server = _write_pair(tmp_path, "server", ca.issue_server([]))
    mallory = _write_pair(tmp_path, "mallory", other.issue_client("admin", ["system:masters"]))
    result = _handshake(_server_context(ca_file, *server), _client_context(ca_file, mallory))
    assert "peercert" not in result
    assert isinstance(result["server_error"], ssl.SSLError)


def test_server_hostname_outside_sans_is_rejected(tmp_path: Path, ca: CertificateAuthority) -> None:
    ca_file = tmp_path / "ca" / "ca.crt"
    server = _write_pair(tmp_path, "server", ca.issue_server(["node01.example"]))
    result = _handshake(_server_context(ca_file, *server), _client_context(ca_file, None), "evil.example")
    assert isinstance(result["client_error"], ssl.SSLCertVerificationError)


def test_ensure_server_credentials_reuses_and_reissues(tmp_path: Path) -> None:
    creds = ensure_server_credentials(tmp_path, ["node01"])
    pki = tmp_path / "pki"
    assert creds.ca_cert == pki / "ca.crt" and creds.server_cert == pki / "server.crt"
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    assert stat.S_IMODE(creds.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    original = creds.server_cert.read_bytes()

    assert ensure_server_credentials(tmp_path, ["NODE01", "localhost"]) == creds
    assert creds.server_cert.read_bytes() == original, "covered hosts must not re-issue"

    ca_before = creds.ca_cert.read_bytes()
    ensure_server_credentials(tmp_path, ["node01", "192.168.5.5"])
    reissued = creds.server_cert.read_bytes()
    assert reissued != original
    assert creds.ca_cert.read_bytes() == ca_before, "the CA must survive server re-issue"
    dns, ips = _sans(x509.load_pem_x509_certificate(reissued))
    assert "node01" in dns and ipaddress.ip_address("192.168.5.5") in ips
    # The freshly written pair must load together (key matches cert).
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(creds.server_cert, creds.server_key)


def test_ensure_server_credentials_reissues_expiring_and_foreign_certs(tmp_path: Path) -> None:
    creds = ensure_server_credentials(tmp_path, [])
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    _write_pair(tmp_path / "pki", "server", ca.issue_server([], days=10))
    expiring = creds.server_cert.read_bytes()
    ensure_server_credentials(tmp_path, [])
    assert creds.server_cert.read_bytes() != expiring

    other = CertificateAuthority.load_or_create(tmp_path / "other")
    _write_pair(tmp_path / "pki", "server", other.issue_server([]))
    foreign = creds.server_cert.read_bytes()
    ensure_server_credentials(tmp_path, [])
    assert creds.server_cert.read_bytes() != foreign
    assert ca.issued(x509.load_pem_x509_certificate(creds.server_cert.read_bytes()))


def test_ensure_server_credentials_repairs_mismatched_key(tmp_path: Path) -> None:
    creds = ensure_server_credentials(tmp_path, [])
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    creds.server_key.write_bytes(ca.issue_server([]).key_pem)  # as if a crash hit between two writes
    ensure_server_credentials(tmp_path, [])
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(creds.server_cert, creds.server_key)


def test_identity_from_peercert_shapes() -> None:
    assert identity_from_peercert(None) is None
    assert identity_from_peercert({}) is None
    assert identity_from_peercert({"subject": ((("organizationName", "g"),),)}) is None
    peer = {
        "subject": ((("commonName", "bob"),), (("organizationName", "g1"),), (("organizationName", "g2"),))
    }
    assert identity_from_peercert(peer) == Identity("bob", ("g1", "g2"))
    two_cns = {"subject": ((("commonName", "a"),), (("commonName", "b"),))}
    assert identity_from_peercert(two_cns) is None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_reads_certificates(tmp_path: Path, ca: CertificateAuthority) -> None:
    server, _ = _write_pair(tmp_path, "server", ca.issue_server(["node01.example", "10.0.0.1"]))
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(server)], check=True, capture_output=True, text=True
    ).stdout
    assert "DNS:node01.example" in text and "IP Address:10.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    ca_file = tmp_path / "ca" / "ca.crt"
    client, _ = _write_pair(tmp_path, "alice", ca.issue_client("alice", ["g"]))
    for cert in (server, client):
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca_file), str(cert)], capture_output=True, text=True
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
