"""Shared fixtures: a private PostgreSQL server and the real kubectl binaries.

Nothing here skips: when PostgreSQL or a kubectl can't be had, the fixture fails with the reason.
"""

from __future__ import annotations

import itertools
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from support import kubectl
from support.postgres import PostgresServer

_db_counter = itertools.count(1)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI timeout, ``kill``) stops the run as Ctrl-C does, so pytest still tears down
    the session's fixtures: the dev clusters, PostgreSQL and MariaDB servers the tests started are
    stopped instead of left running with their namespaces and mounts."""
    signal.signal(signal.SIGTERM, _interrupted)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the whole test session, stopped and removed at the end."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database for this test (dropped afterwards)."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    name = f"t{next(_db_counter)}_{slug}"[:63]
    dsn = postgres_server.create_database(name)
    yield dsn
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def kubectl_home() -> Path:
    """The private HOME every ``run_kubectl`` call of this session uses (isolated discovery cache)."""
    return kubectl.session_home()


@pytest.fixture(scope="session")
def kubectl_120() -> Path:
    """A real kubectl 1.20 (Debian 12's kubernetes-client, unpacked into the test cache)."""
    return kubectl.kubectl_120()


@pytest.fixture(scope="session")
def kubectl_132() -> Path:
    """A real kubectl 1.32 (or newer) from this image."""
    return kubectl.kubectl_132()
