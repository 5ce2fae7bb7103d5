"""Kubeconfig build/write/load round-trips, file-path variants, errors, and what real kubectl makes of it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from slurmlink.auth.identity import Identity
from slurmlink.auth.kubeconfig import (
    KubeconfigCredentials,
    KubeconfigError,
    build_kubeconfig,
    load_kubeconfig,
    write_kubeconfig,
)
from slurmlink.auth.pki import (
    CertificateAuthority,
    CertKeyPair,
    ensure_server_credentials,
    identity_from_peercert,
)

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
needs_kubectl = pytest.mark.skipif(not os.access(KUBECTL, os.X_OK), reason="kubectl not installed")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


@pytest.fixture
def client(ca: CertificateAuthority) -> CertKeyPair:
    return ca.issue_client("alice", ["users"])


def test_cert_round_trip(tmp_path: Path, ca: CertificateAuthority, client: CertKeyPair) -> None:
    config = build_kubeconfig("https://h:6443", ca.cert_pem, "alice", client=client, namespace="team")
    path = tmp_path / "deep" / "dir" / "config"
    write_kubeconfig(path, config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_kubeconfig(path) == KubeconfigCredentials(
        server="https://h:6443",
        ca_pem=ca.cert_pem,
        cert_pem=client.cert_pem,
        key_pem=client.key_pem,
        token=None,
        namespace="team",
        insecure_skip_tls_verify=False,
    )
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "v1" and doc["kind"] == "Config"
    assert doc["current-context"] == "alice"
    assert doc["contexts"] == [
        {"name": "alice", "context": {"cluster": "slurmlink", "user": "alice", "namespace": "team"}}
    ]


def test_token_round_trip(tmp_path: Path, ca: CertificateAuthority) -> None:
    config = build_kubeconfig("https://h:1", ca.cert_pem, "bob", token="s3cret", cluster_name="c1")
    write_kubeconfig(tmp_path / "kc", config)
    creds = load_kubeconfig(tmp_path / "kc")
    assert (creds.token, creds.cert_pem, creds.key_pem, creds.namespace) == ("s3cret", None, None, None)
    assert creds.ca_pem == ca.cert_pem
    assert "namespace" not in config["contexts"][0]["context"]


def test_write_replaces_existing_file(tmp_path: Path, ca: CertificateAuthority) -> None:
    path = tmp_path / "kc"
    write_kubeconfig(path, build_kubeconfig("https://a", ca.cert_pem, "u", token="one"))
    write_kubeconfig(path, build_kubeconfig("https://b", ca.cert_pem, "u", token="two"))
    assert load_kubeconfig(path).token == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca", "kc"], "no temp files left behind"


def test_file_path_variants(tmp_path: Path, ca: CertificateAuthority, client: CertKeyPair) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "certs" / "c.pem").write_bytes(client.cert_pem)
    absolute_key = tmp_path / "elsewhere" / "k.pem"
    absolute_key.parent.mkdir()
    absolute_key.write_bytes(client.key_pem)
    (tmp_path / "tok").write_text("from-file\n")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": "https://x", "certificate-authority": "certs/ca.pem"}}
        ],
        "users": [
            {"name": "cert", "user": {"client-certificate": "certs/c.pem", "client-key": str(absolute_key)}},
            {"name": "tok", "user": {"tokenFile": "tok", "token": "ignored"}},
        ],
        "contexts": [
            {"name": "a", "context": {"cluster": "c", "user": "cert"}},
            {"name": "b", "context": {"cluster": "c", "user": "tok", "namespace": "ns"}},
        ],
        "current-context": "a",
    }
    path = tmp_path / "kc.yaml"
    write_kubeconfig(path, config)
    creds = load_kubeconfig(path)
    assert (creds.ca_pem, creds.cert_pem, creds.key_pem, creds.token) == (
        ca.cert_pem,
        client.cert_pem,
        client.key_pem,
        None,
    )
    other = load_kubeconfig(path, context="b")
    assert (other.token, other.namespace, other.cert_pem) == ("from-file", "ns", None)


def test_insecure_and_anonymous(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    config = {
        "clusters": [{"name": "c", "cluster": {"server": "https://x", "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "a", "context": {"cluster": "c"}}],
        "current-context": "a",
    }
    path.write_text(yaml.safe_dump(config))
    creds = load_kubeconfig(path)
    assert creds.insecure_skip_tls_verify is True
    assert (creds.ca_pem, creds.cert_pem, creds.token) == (None, None, None)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("current-context"), "'current-context' is not set"),
        (lambda c: c.update({"current-context": "nope"}), "no context named 'nope'"),
        (lambda c: c["clusters"][0]["cluster"].pop("server"), "cluster 'slurmlink' has no 'server'"),
        (lambda c: c["users"][0]["user"].pop("client-key-data"), "no 'client-key'"),
        (lambda c: c["users"][0]["user"].update({"client-key-data": "!!"}), "not valid base64"),
        (lambda c: c["users"][0]["user"].update({"tokenFile": "missing"}), "cannot read 'tokenFile'"),
        (lambda c: c.update({"users": []}), "no user named 'alice'"),
    ],
)
def test_errors_name_file_and_problem(
    tmp_path: Path, ca: CertificateAuthority, client: CertKeyPair, mutate: Any, message: str
) -> None:
    config = build_kubeconfig("https://h", ca.cert_pem, "alice", client=client)
    mutate(config)
    path = tmp_path / "broken"
    write_kubeconfig(path, config)
    with pytest.raises(KubeconfigError, match=message) as info:
        load_kubeconfig(path)
    assert str(path) in str(info.value)


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="cannot read kubeconfig"):
        load_kubeconfig(tmp_path / "absent")
    (tmp_path / "list").write_text("- a\n- b\n")
    with pytest.raises(KubeconfigError, match="must be a YAML mapping"):
        load_kubeconfig(tmp_path / "list")
    assert issubclass(KubeconfigError, ValueError)


def _kubectl(*args: str, home: Path) -> str:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "NO_PROXY": "*", "no_proxy": "*"}
    proc = subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@needs_kubectl
@pytest.mark.kubectl
def test_kubectl_config_view_reads_our_file(
    tmp_path: Path, ca: CertificateAuthority, client: CertKeyPair
) -> None:
    path = tmp_path / "kc"
    write_kubeconfig(
        path, build_kubeconfig("https://h:6443", ca.cert_pem, "alice", client=client, namespace="ns")
    )
    out = _kubectl(
        "config",
        "view",
        "--kubeconfig",
        str(path),
        "--raw",
        "-o",
        "jsonpath={.current-context} {.contexts[0].context.namespace} {.users[0].user.client-key-data}",
        home=tmp_path,
    )
    ctx, namespace, key_data = out.split()
    assert (ctx, namespace) == ("alice", "ns")
    assert base64.b64decode(key_data) == client.key_pem


@needs_kubectl
@pytest.mark.kubectl
def test_kubectl_flatten_of_file_paths_loads_identically(
    tmp_path: Path, ca: CertificateAuthority, client: CertKeyPair
) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "c.pem").write_bytes(client.cert_pem)
    (tmp_path / "k.pem").write_bytes(client.key_pem)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://x", "certificate-authority": "ca.pem"}}],
        "users": [{"name": "u", "user": {"client-certificate": "c.pem", "client-key": "k.pem"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "a",
    }
    write_kubeconfig(tmp_path / "paths", config)
    flat = _kubectl("config", "view", "--kubeconfig", str(tmp_path / "paths"), "--flatten", home=tmp_path)
    (tmp_path / "flat").write_text(flat)
    assert load_kubeconfig(tmp_path / "flat") == load_kubeconfig(tmp_path / "paths")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[dict[str, Any]]]]:
    """A tiny HTTPS server using our server cert that records who each request came from."""
    creds = ensure_server_credentials(tmp_path / "state", ["127.0.0.1"])
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert isinstance(self.connection, ssl.SSLSocket)
            seen.append(
                {
                    "identity": identity_from_peercert(self.connection.getpeercert()),
                    "authorization": self.headers.get("Authorization"),
                }
            )
            body = json.dumps({"major": "1", "minor": "32", "gitVersion": "v1.32.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(creds.server_cert, creds.server_key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=str(creds.ca_cert))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tmp_path / "state" / "pki", seen
    finally:
        server.shutdown()
        server.server_close()


@needs_kubectl
@pytest.mark.kubectl
def test_kubectl_accepts_our_certificates_over_tls(
    tmp_path: Path, tls_server: tuple[str, Path, list[dict[str, Any]]]
) -> None:
    """Go's TLS stack (kubectl) verifies our server cert and presents our client cert and tokens."""
    url, pki, seen = tls_server
    ca = CertificateAuthority.load_or_create(pki)
    cert_kc, token_kc = tmp_path / "cert-kc", tmp_path / "token-kc"
    write_kubeconfig(
        cert_kc, build_kubeconfig(url, ca.cert_pem, "alice", client=ca.issue_client("alice", ["g1", "g2"]))
    )
    write_kubeconfig(token_kc, build_kubeconfig(url, ca.cert_pem, "bob", token="tok-123"))

    out = _kubectl("--kubeconfig", str(cert_kc), "get", "--raw", "/version", home=tmp_path)
    assert json.loads(out)["gitVersion"] == "v1.32.0"
    assert seen and all(
        s == {"identity": Identity("alice", ("g1", "g2")), "authorization": None} for s in seen
    )
    seen.clear()
    _kubectl("--kubeconfig", str(token_kc), "get", "--raw", "/version", home=tmp_path)
    assert seen and all(s == {"identity": None, "authorization": "Bearer tok-123"} for s in seen)
