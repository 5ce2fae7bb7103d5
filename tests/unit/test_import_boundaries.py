"""Clients, the gateway and the CLI's client-side commands load without the object store.

They run on hosts that only talk to the API (the slurmctld host, a user's login node), and start-up
time matters there; SQLAlchemy is the store's dependency alone. Each check runs in a fresh
interpreter with a finder that refuses ``sqlalchemy``, so an import anywhere in the chain fails.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import slurmlink
from slurmlink.slurm.plugin import WRAPPED_MODULES

_BLOCK = textwrap.dedent(
    """
    import sys

    class _Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "sqlalchemy" or name.startswith("sqlalchemy."):
                raise ImportError(f"{name} imported by client-side code")
            return None

    sys.meta_path.insert(0, _Refuse())
    """
)

CLIENT_SIDE_MODULES = [
    "slurmlink.resources.kind",
    "slurmlink.resources.errors",
    "slurmlink.resources.watch",
    "slurmlink.resources.catalog",
    "slurmlink.client.base",
    "slurmlink.client.http",
    "slurmlink.client.informer",
    "slurmlink.resources.coordination",
    "slurmlink.controllers.runtime",
    "slurmlink.controllers.workflow",
    "slurmlink.controllers.testdriver",
    "slurmlink.controllers.registry",
    "slurmlink.controllers.leaderelection",
    "slurmlink.controllers.manager",
    "slurmlink.controllers.gc",
    "slurmlink.slurm.gateway",
    "slurmlink.slurm.gateway.front",
    "slurmlink.slurm.gateway.operations",
    "slurmlink.slurm.gateway.sweeper",
    "slurmlink.cli.main",
    "slurmlink.cli.resources_cmd",
    "slurmlink.cli.controller_cmd",
    "slurmlink.cli.slurm_gateway_cmd",
    "slurmlink.cli.slurm_partitions_cmd",
    "slurmlink.slurm.partitions",
    "slurmlink.slurm.partition_config",
    "slurmlink.bridge.publisher",
    "slurmlink.cli.kubeconfig_cmd",
    "slurmlink.cli.agent_cmd",
    "slurmlink.cli.storage_cmd",
    "slurmlink.agent.storage_agent",
    "slurmlink.agent.device",
    "slurmlink.controllers.storagenodes",
    "slurmlink.controllers.storagepool",
    "slurmlink.resources.storage.capacity",
    "slurmlink.burstbuffer.directives",
    "slurmlink.identity",
    "slurmlink.bridge.files",
    "slurmlink.bridge.asuser",
    "slurmlink.safedirs",
]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("module", CLIENT_SIDE_MODULES)
def test_module_imports_without_sqlalchemy(module: str) -> None:
    result = _run(f"import {module}\nassert 'sqlalchemy' not in sys.modules\n")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [["get", "--help"], ["describe", "--help"], ["watch", "--help"]])
def test_cli_client_commands_run_without_sqlalchemy(command: list[str]) -> None:
    """The human views parse their options and print help with the store unimportable."""
    result = _run(
        "import sys\nfrom slurmlink.cli.main import main\n"
        f"sys.argv = ['slurmlink', *{command!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_the_block_works() -> None:
    """The guard itself: a server-side module does need the store, and is refused."""
    result = _run("import slurmlink.apiserver.service\n")
    assert result.returncode != 0
    assert "sqlalchemy imported by client-side code" in result.stderr


@pytest.mark.parametrize("module", WRAPPED_MODULES)
def test_what_slurm_runs_for_every_job_starts_without_site_packages(module: str) -> None:
    """The bank's hooks and the datawarp wrappers run as ``python -S``: nothing outside the standard
    library and slurmlink may be imported on their way."""
    src = str(Path(slurmlink.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-S", "-c", f"import {module}, sys\nprint(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    allowed = {*sys.stdlib_module_names, *sys.builtin_module_names, "__main__", "slurmlink"}
    assert [name for name in result.stdout.split() if name.split(".")[0] not in allowed] == []
