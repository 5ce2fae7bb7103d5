"""A real ``slurmlink serve`` process for tests (:mod:`slurmlink.serve_process`) on a free port."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from slurmlink.serve_process import ServeProcess
from support.postgres import free_port


class ServerProcess(ServeProcess):
    """Starts ``slurmlink serve`` and stops it; ``kill()`` simulates a crash (SIGKILL)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        store: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        args = ("--log-level", "info", *extra_args, *(("--store", store) if store else ()))
        super().__init__(
            state_dir,
            port or free_port(),
            log_path=state_dir.parent / f"{state_dir.name}-serve.log",
            extra_args=args,
        )
        self.store = store

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return ctx

    def client(self, kubeconfig: Path | None = None, **kw: Any) -> httpx.Client:
        """An httpx client authenticated with a kubeconfig's client certificate (admin by default)."""
        from slurmlink.auth.kubeconfig import load_kubeconfig

        creds = load_kubeconfig(kubeconfig or self.kubeconfig)
        ctx = ssl.create_default_context(cadata=(creds.ca_pem or b"").decode())
        headers = {}
        if creds.cert_pem and creds.key_pem:
            cert_dir = self.state_dir.parent / f"{self.state_dir.name}-client-{abs(hash(str(kubeconfig)))}"
            cert_dir.mkdir(mode=0o700, exist_ok=True)
            (cert_dir / "c.crt").write_bytes(creds.cert_pem)
            (cert_dir / "c.key").write_bytes(creds.key_pem)
            ctx.load_cert_chain(str(cert_dir / "c.crt"), str(cert_dir / "c.key"))
        if creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        return httpx.Client(base_url=self.url, verify=ctx, headers=headers, timeout=30.0, **kw)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
