"""``slurmlink kubeconfig``: credentials for a user or service, signed by the server's CA."""

from __future__ import annotations

from pathlib import Path

import click

from slurmlink.auth import roles
from slurmlink.auth.kubeconfig import build_kubeconfig, load_kubeconfig, write_kubeconfig
from slurmlink.auth.pki import CertificateAuthority
from slurmlink.auth.tokens import TokenStore
from slurmlink.config import default_state_dir


@click.command("kubeconfig")
@click.option("--user", required=True, help="User name (certificate CN), e.g. slurm-dws.")
@click.option("--role", required=True, type=click.Choice(list(roles.ROLES)), help="What the user may do.")
@click.option(
    "--namespace", default="default", show_default=True, help="Namespace of the kubeconfig's context."
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write it (default: STATE_DIR/<user>.kubeconfig).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SLURMLINK_STATE_DIR",
    help="The server's state directory (holds the CA).",
)
@click.option("--server", "server_url", help="API URL (default: the one in STATE_DIR/admin.kubeconfig).")
@click.option(
    "--token", "use_token", is_flag=True, help="Issue a bearer token instead of a client certificate."
)
def kubeconfig(
    user: str,
    role: str,
    namespace: str,
    out: Path | None,
    state_dir: Path | None,
    server_url: str | None,
    use_token: bool,
) -> None:
    """Issue credentials for USER with ROLE and write a kubeconfig for them.

    Replaces the openssl and `kubectl config` steps of a Kubernetes install: run it on the server
    host (it needs the CA key in the state directory), then hand the file to the user or service,
    e.g. as /etc/slurm/slurm-dws.kubeconfig for the Slurm plugin (role workload-manager).
    """
    state = (state_dir or default_state_dir()).expanduser()
    ca_dir = state / "pki"
    if not (ca_dir / "ca.key").exists():
        raise click.ClickException(
            f"no CA in {ca_dir}: start `slurmlink serve --state-dir {state}` once first"
        )
    if server_url is None:
        admin = state / "admin.kubeconfig"
        try:
            server_url = load_kubeconfig(admin).server
        except (OSError, ValueError) as exc:
            raise click.ClickException(
                f"cannot read the server URL from {admin} ({exc}); pass --server"
            ) from exc
    ca = CertificateAuthority.load_or_create(ca_dir)
    groups = [roles.role_group(role)]
    if use_token:
        token = TokenStore(state / "tokens.json").issue(user, groups)
        config = build_kubeconfig(server_url, ca.cert_pem, user, token=token, namespace=namespace)
    else:
        config = build_kubeconfig(
            server_url, ca.cert_pem, user, client=ca.issue_client(user, groups), namespace=namespace
        )
    target = out or state / f"{user}.kubeconfig"
    write_kubeconfig(target, config)
    click.echo(f"wrote {target} (user {user}, role {role}, namespace {namespace})")
