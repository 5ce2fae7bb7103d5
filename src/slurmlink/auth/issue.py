"""Issue kubeconfigs signed by a server's CA, from its state directory.

One code path for ``slurmlink kubeconfig``, ``slurmlink slurm install --server-state-dir`` and the quick
start, so all three put the same identity (CN = user, O = role group) and the same server URL into the file.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from slurmlink.auth import roles
from slurmlink.auth.kubeconfig import build_kubeconfig, load_kubeconfig
from slurmlink.auth.pki import CertificateAuthority, PKIError
from slurmlink.auth.tokens import TokenStore

#: A certificate that expires sooner than this is replaced rather than reused.
RENEW_BEFORE = dt.timedelta(days=30)


class IssueError(ValueError):
    """Credentials cannot be issued from this state directory; the message says how to fix it."""


def _ca_dir(state_dir: Path) -> Path:
    return state_dir / "pki"


def server_url_of(state_dir: Path) -> str:
    """The API URL the server wrote into ``STATE_DIR/admin.kubeconfig``."""
    admin = state_dir / "admin.kubeconfig"
    try:
        return load_kubeconfig(admin).server
    except (OSError, ValueError) as exc:
        raise IssueError(f"cannot read the server URL from {admin} ({exc})") from exc


def load_ca(state_dir: Path) -> CertificateAuthority:
    """The server's CA; never creates one, since a new CA would not be trusted by the running server."""
    ca_dir = _ca_dir(state_dir)
    if not (ca_dir / "ca.key").exists() or not (ca_dir / "ca.crt").exists():
        raise IssueError(
            f"no CA in {ca_dir}: start `slurmlink serve --state-dir {state_dir}` once first "
            "(or run this on the host that holds the server's state directory)"
        )
    try:
        return CertificateAuthority.load_or_create(ca_dir)
    except (OSError, PKIError) as exc:
        raise IssueError(f"cannot load the CA in {ca_dir}: {exc}") from exc


def issue_kubeconfig(
    state_dir: Path,
    user: str,
    role: str,
    namespace: str,
    *,
    server_url: str | None = None,
    use_token: bool = False,
) -> dict[str, Any]:
    """A self-contained kubeconfig for ``user`` with ``role``, signed by (or a token of) the server's CA.

    ``server_url`` defaults to the one in ``STATE_DIR/admin.kubeconfig``, i.e. where the server listens.
    """
    state_dir = state_dir.expanduser()
    ca = load_ca(state_dir)
    if server_url is None:
        server_url = server_url_of(state_dir)
    try:
        groups = [roles.role_group(role)]
    except ValueError as exc:
        raise IssueError(str(exc)) from exc
    if use_token:
        token = TokenStore(state_dir / "tokens.json").issue(user, groups)
        return build_kubeconfig(server_url, ca.cert_pem, user, token=token, namespace=namespace)
    return build_kubeconfig(
        server_url, ca.cert_pem, user, client=ca.issue_client(user, groups), namespace=namespace
    )


def kubeconfig_is_current(
    path: Path, state_dir: Path, user: str, role: str, namespace: str, *, server_url: str | None = None
) -> bool:
    """Whether ``path`` already holds a client certificate this server's CA issued for exactly this
    user, role, namespace and server URL, valid for at least :data:`RENEW_BEFORE`.

    Lets installers re-run without minting a new key every time (which would needlessly restart the
    daemons that read the file).
    """
    try:
        creds = load_kubeconfig(path)
        ca = load_ca(state_dir.expanduser())
        wanted_url = server_url or server_url_of(state_dir.expanduser())
    except (OSError, ValueError):
        return False
    if creds.server != wanted_url or creds.ca_pem != ca.cert_pem or creds.namespace != namespace:
        return False
    if creds.cert_pem is None or creds.token is not None:
        return False
    try:
        cert = x509.load_pem_x509_certificate(creds.cert_pem)
    except ValueError:
        return False
    if not ca.issued(cert):
        return False
    common_names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    groups = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)}
    if common_names != [user] or groups != {roles.role_group(role)}:
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE
