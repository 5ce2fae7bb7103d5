"""Write kubeconfig files kubectl can use against slurmlink, and read them back for our own client."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slurmlink.auth.pki import CertKeyPair, atomic_write_bytes


class KubeconfigError(ValueError):
    """A kubeconfig file is unreadable or lacks what is needed to reach the server."""


@dataclass(frozen=True)
class KubeconfigCredentials:
    """Everything needed to open an authenticated connection, with file references already read."""

    server: str
    ca_pem: bytes | None
    cert_pem: bytes | None
    key_pem: bytes | None
    token: str | None
    namespace: str | None
    insecure_skip_tls_verify: bool


def _b64(data: bytes) -> str:
    """Base64 text as kubeconfig ``*-data`` fields expect."""
    return base64.b64encode(data).decode("ascii")


def build_kubeconfig(
    server_url: str,
    ca_pem: bytes,
    user: str,
    *,
    client: CertKeyPair | None = None,
    token: str | None = None,
    namespace: str | None = None,
    cluster_name: str = "slurmlink",
) -> dict[str, Any]:
    """Build a self-contained kubeconfig (everything inline) with one context named after ``user``.

    Inline data rather than file paths keeps the file portable: it can be copied to another host as is.
    """
    user_entry: dict[str, Any] = {}
    if client is not None:
        user_entry["client-certificate-data"] = _b64(client.cert_pem)
        user_entry["client-key-data"] = _b64(client.key_pem)
    if token is not None:
        user_entry["token"] = token
    context: dict[str, Any] = {"cluster": cluster_name, "user": user}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server_url, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> None:
    """Write ``config`` as YAML, owner-only and atomically, since it holds a private key or token."""
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    atomic_write_bytes(path, text.encode("utf-8"), 0o600)


def _named(config: dict[str, Any], section: str, name: str, path: Path) -> dict[str, Any]:
    """The inner mapping of the entry called ``name`` in a ``clusters``/``users``/``contexts`` list."""
    entries = config.get(section) or []
    if not isinstance(entries, list):
        raise KubeconfigError(f"{path}: '{section}' must be a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            inner = entry.get(section[:-1]) or {}
            if not isinstance(inner, dict):
                raise KubeconfigError(f"{path}: {section[:-1]} '{name}' must be a mapping")
            return inner
    raise KubeconfigError(f"{path}: no {section[:-1]} named '{name}' in '{section}'")


def _resolve(path: Path, value: str) -> Path:
    """Resolve a file reference the way kubectl does: relative to the kubeconfig's own directory."""
    ref = Path(value).expanduser()
    return ref if ref.is_absolute() else path.parent / ref


def _read_material(path: Path, entry: dict[str, Any], key: str, what: str) -> bytes | None:
    """Read ``key-data`` (base64) or ``key`` (file path) from an entry; inline data wins, as in kubectl."""
    data = entry.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KubeconfigError(f"{path}: '{key}-data' of {what} is not valid base64") from exc
    ref = entry.get(key)
    if not ref:
        return None
    file = _resolve(path, str(ref))
    try:
        return file.read_bytes()
    except OSError as exc:
        raise KubeconfigError(f"{path}: cannot read '{key}' file {file} of {what}: {exc.strerror}") from exc


def _read_token(path: Path, user: dict[str, Any], what: str) -> str | None:
    """The bearer token; ``tokenFile`` takes precedence over ``token``, matching client-go."""
    ref = user.get("tokenFile")
    if ref:
        file = _resolve(path, str(ref))
        try:
            return file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise KubeconfigError(
                f"{path}: cannot read 'tokenFile' {file} of {what}: {exc.strerror}"
            ) from exc
    token = user.get("token")
    return str(token) if token else None


def _load_yaml(path: Path) -> dict[str, Any]:
    """Parse the file, turning I/O and YAML failures into errors that name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KubeconfigError(f"{path}: cannot read kubeconfig: {exc.strerror}") from exc
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise KubeconfigError(f"{path}: kubeconfig must be a YAML mapping")
    return config


def load_kubeconfig(path: Path, context: str | None = None) -> KubeconfigCredentials:
    """Resolve ``context`` (default: ``current-context``) to a server, trust anchor and credentials."""
    config = _load_yaml(path)
    name = context or config.get("current-context")
    if not name:
        raise KubeconfigError(f"{path}: no context given and 'current-context' is not set")
    ctx = _named(config, "contexts", str(name), path)
    cluster_name = ctx.get("cluster")
    if not cluster_name:
        raise KubeconfigError(f"{path}: context '{name}' names no cluster")
    cluster = _named(config, "clusters", str(cluster_name), path)
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"{path}: cluster '{cluster_name}' has no 'server'")
    user_name = ctx.get("user")
    user = _named(config, "users", str(user_name), path) if user_name else {}
    what = f"user '{user_name}'"
    cert_pem = _read_material(path, user, "client-certificate", what)
    key_pem = _read_material(path, user, "client-key", what)
    if (cert_pem is None) != (key_pem is None):
        missing = "client-key" if key_pem is None else "client-certificate"
        raise KubeconfigError(f"{path}: {what} has a client certificate or key but no '{missing}'")
    namespace = ctx.get("namespace")
    return KubeconfigCredentials(
        server=str(server),
        ca_pem=_read_material(path, cluster, "certificate-authority", f"cluster '{cluster_name}'"),
        cert_pem=cert_pem,
        key_pem=key_pem,
        token=_read_token(path, user, what),
        namespace=str(namespace) if namespace else None,
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
    )
