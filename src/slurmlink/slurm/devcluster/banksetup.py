"""The bank's Slurm hooks in a dev cluster: the files and slurm.conf lines ``up`` is given.

``job_submit.lua`` (JobSubmitPlugins=lua) and the PrologSlurmctld/EpilogSlurmctld programs are written
into the cluster's etc/, rendered for its gateway socket and this Python, so they run the slurmlink the
cluster was started with.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import slurmlink
from slurmlink.slurm import plugin

#: A job without --time gets an hour, as the quick start's rate card prices it: a limit the bank can hold
#: for (an unlimited job's cost has no bound).
BANK_DEFAULT_TIME = 60


@dataclass(frozen=True)
class BankHookFiles:
    lines: tuple[str, ...]
    files: dict[str, str]
    #: DefaultTime (minutes) of every partition that sets none: ``DevCluster.up(partition_default_time=)``.
    default_time: int = BANK_DEFAULT_TIME


def bank_hook_files(etc_dir: Path, gateway_socket: Path) -> BankHookFiles:
    package_root = Path(slurmlink.__file__).resolve().parent.parent
    prolog, epilog = etc_dir / plugin.BANK_PROLOG_NAME, etc_dir / plugin.BANK_EPILOG_NAME
    files = {
        plugin.JOB_SUBMIT_NAME: plugin.render_job_submit_lua(gateway_socket),
        prolog.name: plugin.render_bank_hook(sys.executable, package_root, gateway_socket, "prolog"),
        epilog.name: plugin.render_bank_hook(sys.executable, package_root, gateway_socket, "epilog"),
    }
    lines = (
        "JobSubmitPlugins=lua",
        f"PrologSlurmctld={prolog}",
        f"EpilogSlurmctld={epilog}",
    )
    return BankHookFiles(lines, files)
