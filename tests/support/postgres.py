"""A private, throw-away PostgreSQL server for tests.

``PostgresServer`` runs Debian's PostgreSQL binaries (``/usr/lib/postgresql/<ver>/bin``) in its own
temporary directory: its own data directory, its own unix-socket directory, a free TCP port on
127.0.0.1 (never the default 5432) and ``fsync=off`` for speed.  When the tests run as root the
server runs as the ``postgres`` OS user (``initdb`` refuses to run as root).  Leaving the ``with``
block (also on an exception) stops it with a fast shutdown and removes the directory.

If the binaries are missing it raises ``PostgresUnavailable`` telling how to install them: the tests
that need a database must fail loudly, never be skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
INSTALL_HINT = (
    "Install Debian's PostgreSQL server with `apt-get install -y postgresql` "
    "(it provides /usr/lib/postgresql/<version>/bin/{initdb,postgres}), "
    "or point SLURMLINK_PG_BINDIR at a directory holding initdb and postgres."
)
_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries or the ``postgres`` OS user are missing, or the server did not start."""


def find_bindir() -> Path:
    """Return the bin directory of the newest PostgreSQL installed under /usr/lib/postgresql.

    ``$SLURMLINK_PG_BINDIR`` overrides the search.
    """
    override = os.environ.get("SLURMLINK_PG_BINDIR")
    candidates: list[Path]
    if override:
        candidates = [Path(override)]
    else:
        found = [p.parent for p in POSTGRES_ROOT.glob("*/bin/initdb")]

        def version_key(bindir: Path) -> tuple[int, ...]:
            return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)

        candidates = sorted(found, key=version_key, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "postgres")):
            return bindir
    where = override or f"{POSTGRES_ROOT}/*/bin"
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries (initdb, postgres) found in {where}. {INSTALL_HINT}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (and is not PostgreSQL's default 5432)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port != 5432:
            return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask the kernel to stop the postmaster (fast shutdown) if the test process dies abruptly."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGINT), 0, 0, 0)


class PostgresServer:
    """A private PostgreSQL server; use it as a context manager.

    Attributes once started: ``port``, ``host`` (127.0.0.1), ``socket_dir``, ``data_dir``, ``user``,
    ``dbname`` (a database created at start), ``dsn`` (SQLAlchemy URL of ``dbname``) and
    ``libpq_dsn`` (libpq conninfo string of ``dbname``, for psycopg).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        dbname: str = "slurmlink",
        *,
        bindir: Path | None = None,
        startup_timeout: float = 60.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = bindir if bindir is not None else find_bindir()
        self.dbname = dbname
        self.user = SUPERUSER
        self.startup_timeout = startup_timeout
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        if settings:
            self.settings.update(settings)
        self.port = 0
        self._tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_as: pwd.struct_passwd | None = None

    # -- paths -----------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        if self._tmpdir is None:
            raise RuntimeError("PostgresServer is not started")
        return self._tmpdir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    # -- connection strings ----------------------------------------------------------------------

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of database ``dbname`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def libpq_dsn_for(self, dbname: str) -> str:
        """libpq conninfo string of database ``dbname`` on this server (for ``psycopg.connect``)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    @property
    def dsn(self) -> str:
        return self.url_for(self.dbname)

    @property
    def libpq_dsn(self) -> str:
        return self.libpq_dsn_for(self.dbname)

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._tmpdir is not None:
            raise RuntimeError("PostgresServer already started")
        self._run_as = self._os_user()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="slurmlink-pg-"))
        try:
            self.socket_dir.mkdir()
            if self._run_as is not None:
                for path in (self.base_dir, self.socket_dir):
                    os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
            self._initdb()
            last_error: Exception | None = None
            for _attempt in range(5):  # the free port may be taken between probing and binding
                self.port = free_port(self.host)
                try:
                    self._launch()
                    self._wait_ready()
                    break
                except _PortInUse as err:
                    last_error = err
                    self._kill()
            else:
                raise PostgresUnavailable(f"PostgreSQL could not bind a free port: {last_error}")
            self._create(self.dbname)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGQUIT/SIGKILL if it hangs; always removes the directory."""
        try:
            self._kill()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, grace in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- databases -------------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its SQLAlchemy URL."""
        self._create(name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, terminating any connection still open to it."""
        self._check_name(name)
        with self.connect("postgres") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def connect(self, dbname: str | None = None) -> psycopg.Connection[TupleRow]:
        """An autocommit psycopg connection to ``dbname`` (default: the server's own database)."""
        return psycopg.connect(self.libpq_dsn_for(dbname or self.dbname), autocommit=True, connect_timeout=10)

    def _create(self, name: str) -> None:
        self._check_name(name)
        with self.connect("postgres") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    @staticmethod
    def _check_name(name: str) -> None:
        if not _DB_NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*, at most 63 characters")

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _os_user() -> pwd.struct_passwd | None:
        """The OS user to run the server as: ``postgres`` when we are root, else ourselves (None)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root, but there is no `postgres` OS user to run PostgreSQL as "
                f"(initdb refuses to run as root). {INSTALL_HINT}"
            ) from None

    def _env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.bindir}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.base_dir),
            "TZ": "UTC",
        }
        return env

    @property
    def _uid(self) -> int | None:
        return None if self._run_as is None else self._run_as.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self._run_as is None else self._run_as.pw_gid

    @property
    def _extra_groups(self) -> list[int] | None:
        return None if self._run_as is None else []

    def _initdb(self) -> None:
        cmd = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        ]
        result = subprocess.run(
            cmd,
            cwd=self.base_dir,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
            user=self._uid,
            group=self._gid,
            extra_groups=self._extra_groups,
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed (exit {result.returncode}): {' '.join(cmd)}\n"
                + result.stdout.decode(errors="replace")
            )

    def _launch(self) -> None:
        cmd = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(self.socket_dir),
        ]
        for key, value in self.settings.items():
            cmd += ["-c", f"{key}={value}"]
        log = self.log_file.open("ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.base_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # the test process forks this from its main thread
                user=self._uid,
                group=self._gid,
                extra_groups=self._extra_groups,
            )
        finally:
            log.close()

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        """Poll a real connection until it succeeds, the server dies, or ``startup_timeout`` passes."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self._log_tail()
                if "could not bind" in tail or "Address already in use" in tail:
                    raise _PortInUse(tail)
                raise PostgresUnavailable(f"postgres exited with code {code} during startup; log:\n{tail}")
            try:
                with psycopg.connect(self.libpq_dsn_for("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as err:
                last_error = err
            if time.monotonic() > deadline:
                raise PostgresUnavailable(
                    f"PostgreSQL on {self.host}:{self.port} not ready after {self.startup_timeout:.0f}s "
                    f"(last error: {last_error}); log:\n{self._log_tail()}"
                )
            time.sleep(0.05)


class _PortInUse(PostgresUnavailable):
    pass
