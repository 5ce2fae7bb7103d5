"""Fixtures for tests against a real ``slurmlink serve`` process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server import ServerProcess


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
