"""A quick start (``slurmlink quickstart up``) of its own for a test module: state dir, ports, clients."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from slurmlink.auth.kubeconfig import load_kubeconfig
from slurmlink.slurm.devcluster import DevCluster, free_port_pair
from support.devcluster import make_state_dir, quickstart_cli, skip_unless_possible
from support.postgres import free_port


class QuickStart:
    def __init__(
        self,
        directory: Path,
        listen: str,
        ports: list[str],
        *,
        compute_nodes: int = 2,
        storage_nodes: int = 3,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.dir = directory
        self.listen = listen
        self.where = ["--state-dir", str(directory)]
        nodes = ["--compute-nodes", str(compute_nodes), "--storage-nodes", str(storage_nodes)]
        self.args = [*self.where, "--listen", listen, *ports, *nodes, *extra_args]
        self.up_result: subprocess.CompletedProcess[str] | None = None
        self.down_result: subprocess.CompletedProcess[str] | None = None

    @property
    def admin(self) -> Path:
        return self.dir / "server" / "admin.kubeconfig"

    @property
    def cluster(self) -> DevCluster:
        return DevCluster.from_state_dir(self.dir / "cluster")

    def client(self, kubeconfig: Path | None = None) -> httpx.Client:
        """An API client with ``kubeconfig``'s client certificate (the admin's by default)."""
        import ssl
        import tempfile

        creds = load_kubeconfig(kubeconfig or self.admin)
        ctx = ssl.create_default_context(cadata=(creds.ca_pem or b"").decode())
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "c.crt"), Path(tmp, "c.key")
            cert.write_bytes(creds.cert_pem or b"")
            key.write_bytes(creds.key_pem or b"")
            ctx.load_cert_chain(str(cert), str(key))
        return httpx.Client(base_url=creds.server, verify=ctx, timeout=30)

    def agent_pid(self, node: str) -> int | None:
        path = self.dir / "run" / f"agent.{node}.pid"
        return int(path.read_text()) if path.exists() else None

    def down(self) -> subprocess.CompletedProcess[str]:
        if self.down_result is None:
            self.down_result = quickstart_cli("down", *self.where, "--purge", timeout=180)
        return self.down_result


@contextmanager
def running_quickstart(
    prefix: str, *, compute_nodes: int = 2, storage_nodes: int = 3, extra_args: tuple[str, ...] = ()
) -> Iterator[QuickStart]:
    """Bring one up on a fresh state dir and free ports; take it down (``--purge``) afterwards.

    ``extra_args`` go to ``quickstart up`` (e.g. ``--burst-buffer-plugin datawarp``)."""
    skip_unless_possible()
    directory = make_state_dir(prefix)
    ctld_port, slurmd_port = free_port_pair()
    ports = ["--ctld-port", str(ctld_port), "--slurmd-port", str(slurmd_port)]
    quick = QuickStart(
        directory,
        f"127.0.0.1:{free_port()}",
        ports,
        compute_nodes=compute_nodes,
        storage_nodes=storage_nodes,
        extra_args=extra_args,
    )
    try:
        quick.up_result = quickstart_cli("up", *quick.args, timeout=480)
        assert quick.up_result.returncode == 0, quick.up_result.stderr
        yield quick
    finally:
        quick.down()
