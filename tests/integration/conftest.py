"""Fixtures for tests against a real ``slurmlink serve`` process and against the store itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmlink.store.sql import SqlStore
from support.server import ServerProcess


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLAlchemy URL of an empty store: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    s = SqlStore(store_url)
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server (SQLite store, test driver on) per test module."""
    proc = ServerProcess(tmp_path_factory.mktemp("serve") / "state")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def wlm_kubeconfig(server: ServerProcess) -> Path:
    """A workload-manager kubeconfig in namespace ``slurm``, as the Slurm plugin uses it."""
    return server.issue_kubeconfig("slurm-dws", "workload-manager", "slurm")
