"""A real ``slurmlink serve`` process for tests: free port, private state dir, readiness wait."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from support.postgres import free_port


class ServerProcess:
    """Starts ``slurmlink serve`` and stops it; ``kill()`` simulates a crash (SIGKILL)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        store: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = state_dir
        self.store = store
        self.port = port or free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}-serve.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        args = [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "serve",
            "--state-dir",
            str(self.state_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "info",
            *self.extra_args,
        ]
        if self.store:
            args += ["--store", self.store]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("SLURMLINK_CONFIG", None)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"slurmlink serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/readyz", verify=False, timeout=1.0)
                if r.status_code == 200 and self.kubeconfig.exists():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"slurmlink serve not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

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

    def issue_kubeconfig(
        self, user: str, role: str, namespace: str = "default", *, token: bool = False
    ) -> Path:
        """Credentials from this server's CA via ``slurmlink kubeconfig``, written beside the state dir."""
        out = self.state_dir.parent / f"{user}-{role}.kubeconfig"
        args = [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "kubeconfig",
            "--user",
            user,
            "--role",
            role,
            "--namespace",
            namespace,
            "--state-dir",
            str(self.state_dir),
            "--out",
            str(out),
        ]
        subprocess.run([*args, "--token"] if token else args, check=True, capture_output=True)
        return out

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
