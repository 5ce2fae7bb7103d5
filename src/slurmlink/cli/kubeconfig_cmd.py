"""``slurmlink kubeconfig``: credentials for a user or service, signed by the server's CA."""

from __future__ import annotations

from pathlib import Path

import click

from slurmlink.auth import roles, unix
from slurmlink.auth.issue import IssueError, issue_kubeconfig, load_ca, server_url_of
from slurmlink.auth.kubeconfig import write_kubeconfig
from slurmlink.config import default_state_dir


@click.command("kubeconfig")
@click.option(
    "--user",
    help="User name (certificate CN), e.g. slurm-dws; for --role user, the Unix login it acts as; "
    "for --role node-agent, system:node:NODE (the default).",
)
@click.option("--role", required=True, type=click.Choice(list(roles.ROLES)), help="What the user may do.")
@click.option("--node", help="For --role node-agent: the storage or compute node the agent runs on.")
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
    user: str | None,
    role: str,
    node: str | None,
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

    Roles: admin (everything), workload-manager (the Slurm plugin), viewer (read-only), user (an HPC
    user: USER is their Unix login, which the server resolves to a uid with its user database; they
    see and change only their own objects, and read the Workflows of their own jobs), node-agent
    (`--node NAME`: the agent on node NAME, user system:node:NAME; it reads Storage and ClientMounts
    and writes only the Storage named NAME and the ClientMounts of node NAME).
    """
    state = (state_dir or default_state_dir()).expanduser()
    if role == "node-agent":
        if not node:
            raise click.UsageError("--role node-agent needs --node NAME")
        problem = roles.node_name_error(node)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--node")
        if user not in (None, roles.node_user(node)):
            raise click.BadParameter(
                f"a node agent's user name is {roles.node_user(node)} (leave --user out)",
                param_hint="--user",
            )
        user = roles.node_user(node)
    elif node is not None:
        raise click.UsageError("--node is only for --role node-agent")
    if not user:
        raise click.UsageError("Missing option '--user'.")
    if role == "user":
        try:
            unix.account(user)
        except unix.NoSuchUser as exc:
            raise click.ClickException(str(exc)) from exc
    try:
        load_ca(state)  # first, so a wrong state dir is reported as such
        if server_url is None:
            try:
                server_url = server_url_of(state)
            except IssueError as exc:
                raise click.ClickException(f"{exc}; pass --server") from exc
        config = issue_kubeconfig(state, user, role, namespace, server_url=server_url, use_token=use_token)
    except IssueError as exc:
        raise click.ClickException(str(exc)) from exc
    target = out or state / (f"node-agent-{node}.kubeconfig" if node else f"{user}.kubeconfig")
    write_kubeconfig(target, config)
    click.echo(f"wrote {target} (user {user}, role {role}, namespace {namespace})")
