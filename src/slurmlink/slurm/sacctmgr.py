"""Slurm's account database through ``sacctmgr``: the bank creates the Slurm account it charges.

Runs the tools Slurm ships (argv lists, never a shell); ``SLURM_CONF`` in the environment picks
the cluster, as for every Slurm command. Needs accounting storage (slurmdbd).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

_TIMEOUT = 30.0


class SacctmgrError(RuntimeError):
    """sacctmgr is missing or refused; the message says what to do."""


def _run(args: list[str]) -> str:
    tool = shutil.which("sacctmgr")
    if tool is None:
        raise SacctmgrError("sacctmgr is not installed here (Debian: apt install slurm-client)")
    try:
        done = subprocess.run(
            [tool, "--immediate", "--noheader", "--parsable2", *args],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SacctmgrError(f"sacctmgr {' '.join(args)} did not answer in {_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise SacctmgrError(f"sacctmgr {' '.join(args)} failed: {reason[-1] if reason else done.returncode}")
    return done.stdout


def account_exists(name: str) -> bool:
    return name in _run(["show", "account", name, "format=Account"]).split()


def add_account(name: str, *, parent: str | None = None, description: str = "") -> None:
    args = ["add", "account", name]
    if parent:
        args.append(f"Parent={parent}")
    if description:
        args.append(f"Description={description}")
    _run(args)


@dataclass(frozen=True)
class Association:
    account: str
    user: str  # "" for the account's own association
    parent: str


def associations(cluster: str | None = None) -> list[Association]:
    """Slurm's associations (account, user, parent account), of ``cluster`` when given."""
    args = ["show", "associations", "format=Account,User,ParentName"]
    if cluster:
        args.append(f"cluster={cluster}")
    found = []
    for line in _run(args).splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0]:
            found.append(Association(parts[0], parts[1], parts[2]))
    return found


def ensure_account(name: str, *, parent: str | None = None, description: str = "") -> str:
    """Create Slurm account ``name`` unless it exists; a sentence saying what happened."""
    try:
        if account_exists(name):
            return f"Slurm account {name} exists already"
        add_account(name, parent=parent, description=description)
        return f"Slurm account {name} created"
    except SacctmgrError as exc:
        return (
            f"warning: the Slurm account was not created: {exc}; create it with: sacctmgr add account {name}"
        )
