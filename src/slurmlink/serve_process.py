"""``slurmlink serve`` as a child process: start it, wait for /readyz, stop it, issue credentials from it.

One way to run the API server as a subprocess for the quick start (detached, found again by its pid file),
the tests and the benchmarks. It is started as ``sys.executable -m slurmlink.cli.main``, so it runs the
same source tree (and PYTHONPATH) as its caller.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from slurmlink import supervise


class ServeError(RuntimeError):
    """The server did not start or become ready; the message has its log tail."""


def serve_argv(state_dir: Path, listen: str, extra_args: Sequence[str] = ()) -> list[str]:
    """The command line of ``slurmlink serve`` on ``state_dir``, listening on ``listen`` (HOST:PORT)."""
    return [
        sys.executable,
        *("-m", "slurmlink.cli.main", "serve"),
        *("--state-dir", str(state_dir)),
        *("--listen", listen),
        *extra_args,
    ]


class ServeProcess:
    """One ``slurmlink serve`` on ``state_dir`` (its CA, admin kubeconfig and database live there)."""

    def __init__(
        self,
        state_dir: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        log_path: Path,
        extra_args: Sequence[str] = (),
        pid_file: Path | None = None,
        ignore_host_config: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.log_path = log_path
        self.extra_args = tuple(extra_args)
        self.pid_file = pid_file
        #: Drop SLURMLINK_CONFIG from its environment, so a host's config cannot change a test or benchmark.
        self.ignore_host_config = ignore_host_config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"https://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig the server writes at its first start."""
        return self.state_dir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    def argv(self) -> list[str]:
        return serve_argv(self.state_dir, self.listen, self.extra_args)

    def log_tail(self, lines: int = 40) -> str:
        return supervise.log_tail([self.log_path], lines)

    def start(self, timeout: float = 60.0) -> Self:
        """Spawn it (in its own session; it outlives this process) and wait until it is ready.

        If it exits or does not become ready in time it is stopped, and :class:`ServeError` says why.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.ignore_host_config:
            env.pop("SLURMLINK_CONFIG", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cwd = self.state_dir.parent
        cwd.mkdir(parents=True, exist_ok=True)
        self.proc = supervise.spawn(self.argv(), self.log_path, env=env, cwd=cwd)
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            supervise.write_pid(self.pid_file, self.proc.pid)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Wait until /readyz answers 200 (verified with the server's CA); stops the server on failure."""
        assert self.proc is not None, "start() first"
        pid = self.proc.pid
        check = supervise.died_check(pid, f"slurmlink serve (pid {pid})", self.log_tail)
        try:
            supervise.wait_until(self.ready, timeout, f"{self.url}/readyz to answer", check)
        except supervise.SupervisionError as exc:
            self.stop()
            if isinstance(exc, supervise.WaitTimeout):
                raise ServeError(f"{exc}:\n{self.log_tail()}") from None
            raise ServeError(str(exc)) from None

    def ready(self) -> bool:
        """/readyz answers 200 over TLS verified with the CA of the admin kubeconfig written for this URL."""
        import httpx

        from slurmlink.auth.kubeconfig import load_kubeconfig

        try:
            creds = load_kubeconfig(self.kubeconfig)
        except (OSError, ValueError):
            return False
        if creds.server != self.url or not creds.ca_pem:
            return False  # written by an earlier run on another address; the new server rewrites it
        try:
            ctx = ssl.create_default_context(cadata=creds.ca_pem.decode("ascii"))
            response = httpx.get(f"{self.url}/readyz", verify=ctx, timeout=2.0, trust_env=False)
        except (httpx.HTTPError, ssl.SSLError, ValueError):
            return False
        return response.status_code == 200

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; removes the pid file."""
        if self.proc is not None and self.proc.poll() is None:
            supervise.stop_pid(self.proc.pid, "slurmlink serve", timeout, lambda _message: None)
        if self.pid_file is not None and supervise.read_pid(self.pid_file) in (self.pid, None):
            self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL its whole session: no clean shutdown, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def issue_kubeconfig(
        self,
        user: str | None,
        role: str,
        namespace: str = "default",
        *,
        out: Path | None = None,
        token: bool = False,
        node: str | None = None,
        server_url: str | None = None,
    ) -> Path:
        """Credentials from this server's CA via ``slurmlink kubeconfig``, written to ``out``.

        ``out`` defaults to ``USER-ROLE.kubeconfig`` beside the state dir. ``node`` is the node of a
        ``node-agent`` (whose ``user`` is then ``system:node:NODE`` or empty).
        """
        out = out or self.state_dir.parent / f"{(user or node or '').replace(':', '_')}-{role}.kubeconfig"
        argv = [
            sys.executable,
            *("-m", "slurmlink.cli.main", "kubeconfig"),
            *(("--user", user) if user else ()),
            *(("--node", node) if node else ()),
            *("--role", role, "--namespace", namespace),
            *("--state-dir", str(self.state_dir), "--out", str(out)),
            *(("--server", server_url) if server_url else ()),
        ]
        result = subprocess.run(
            [*argv, "--token"] if token else argv, capture_output=True, text=True, check=False, timeout=60
        )
        if result.returncode != 0:
            raise ServeError(f"slurmlink kubeconfig failed: {result.stderr.strip()}")
        return out
