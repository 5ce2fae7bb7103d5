"""Slurm clients against a dev cluster, for tests: run commands (as root or the job user), follow jobs."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slurmlink.slurm.devcluster.errors import DevClusterError, wait_until
from slurmlink.slurm.devcluster.layout import COMPUTE, Layout
from slurmlink.slurm.oneliner import parse_record


def parse_scontrol_record(text: str) -> dict[str, str]:
    """Parse ``scontrol show job|node`` output into ``{Key: value}`` (see ``slurm.oneliner``)."""
    return parse_record(text)


def summarize_node_states(names: Sequence[str], states: Mapping[str, str]) -> str:
    """``idle`` if every node of ``names`` is idle, else ``compute1=idle compute2=down*`` (``unknown``: not
    in ``states``)."""
    wanted = [states.get(name, "unknown") for name in names]
    if len(set(wanted)) == 1:
        return wanted[0]
    return " ".join(f"{name}={state}" for name, state in zip(names, wanted, strict=True))


class SlurmClients(Layout):
    """Slurm clients with this cluster's SLURM_CONF; burst buffer jobs must run as ``job_user``."""

    job_user: str

    def run_slurm(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command as the current user (root) against this cluster."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", False)
        env = dict(kw.pop("env", None) or os.environ)
        env["SLURM_CONF"] = str(self.slurm_conf)
        result: subprocess.CompletedProcess[str] = subprocess.run(list(args), env=env, **kw)
        return result

    def run_as_job_user(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``args`` as the job user via ``runuser`` (no shell), with SLURM_CONF set.

        Keyword arguments go to :func:`subprocess.run`; output is captured as text and the working
        directory defaults to the job user's home, since root's cwd is usually not writable for it.
        """
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", False)
        if "cwd" not in kw:
            with contextlib.suppress(KeyError):
                kw["cwd"] = pwd.getpwnam(self.job_user).pw_dir
        argv = ["runuser", "-u", self.job_user, "--", "env", f"SLURM_CONF={self.slurm_conf}", *args]
        result: subprocess.CompletedProcess[str] = subprocess.run(argv, **kw)
        return result

    def sacctmgr(self, args: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``sacctmgr -i ARGS`` as root (``-i``: commit without the confirmation prompt). Needs a cluster
        with accounting; exit status and output are the caller's to judge."""
        return self.run_slurm(["sacctmgr", "-i", *args], timeout=timeout)

    def sacct(
        self,
        job_ids: Iterable[int | str],
        fields: Sequence[str],
        *,
        steps: bool = False,
        duplicates: bool = False,
        timeout: float = 30,
    ) -> list[dict[str, str]]:
        """``sacct -P -n -o FIELDS -j IDS`` as root, one dict per line (by field name as given).

        Allocations only (``-X``) unless ``steps``; every run of a requeued job with ``duplicates``
        (``-D``), else its last. Raises :class:`DevClusterError` if sacct fails (no accounting, slurmdbd
        down).
        """
        ids = ",".join(str(job_id) for job_id in job_ids)
        argv = ["sacct", "-P", "-n", "-o", ",".join(fields), "-j", ids]
        argv += [] if steps else ["-X"]
        argv += ["-D"] if duplicates else []
        result = self.run_slurm(argv, timeout=timeout)
        if result.returncode != 0:
            raise DevClusterError(f"sacct failed: {result.stderr.strip()}")
        return [
            dict(zip(fields, line.split("|"), strict=False)) for line in result.stdout.splitlines() if line
        ]

    def node_states(self) -> dict[str, str] | None:
        """``sinfo``'s state of each compute node (e.g. ``idle``, ``down*``), by node name.

        None while slurmctld does not answer; a node slurmctld does not know is missing.
        """
        try:
            result = self.run_slurm(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10)
        except subprocess.TimeoutExpired:
            return None
        if result.returncode != 0:
            return None
        states = {}
        for line in result.stdout.splitlines():
            name, _, state = line.strip().partition(" ")
            if name and state:
                states[name] = state.strip()
        return states

    def node_state(self) -> str | None:
        """The compute nodes' state when they all share it (``idle``), else ``compute1=idle compute2=down*``.

        None while slurmctld does not answer.
        """
        states = self.node_states()
        return None if states is None else summarize_node_states(self.node_names(COMPUTE), states)

    def job_info(self, job_id: int | str) -> dict[str, str] | None:
        """``scontrol show job`` as a dict, None once the job is unknown (e.g. purged after MinJobAge)."""
        result = self.run_slurm(["scontrol", "show", "job", str(job_id)], timeout=10)
        if result.returncode != 0:
            return None
        return parse_scontrol_record(result.stdout)

    def wait_for_job(
        self, job_id: int | str, states: Iterable[str] = ("COMPLETED",), timeout: float = 60
    ) -> dict[str, str]:
        """Poll until the job reaches one of ``states``; fails fast if it ends in another final state."""
        wanted = {s.upper() for s in states}
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
        last: dict[str, str] = {}

        def probe() -> dict[str, str] | None:
            nonlocal last
            last = self.job_info(job_id) or last
            state = last.get("JobState", "")
            if state in wanted:
                return last
            if state in final:
                raise DevClusterError(f"job {job_id} ended {state}, wanted {sorted(wanted)}: {last}")
            return None

        try:
            return wait_until(probe, timeout, f"job {job_id} to reach {sorted(wanted)}")
        except DevClusterError as exc:
            if "timed out" in str(exc):
                raise DevClusterError(f"{exc}; last seen: {last}") from None
            raise
