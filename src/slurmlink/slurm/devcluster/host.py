"""What the host needs: Debian's Slurm and munge packages, and the unprivileged job user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from slurmlink.slurm.devcluster.errors import DevClusterError, LogFn

#: Debian packages that provide the daemons, clients, munge and the lua plugins; slurmlink's
#: burst_buffer.lua talks to its gateway with LuaSocket, loaded inside slurmctld. iproute2 (``ip``) makes
#: the nodes' network; nsenter, unshare, mount and runuser come with util-linux and mount (essential).
#: xfsprogs (``mkfs.xfs``): the quick start's storage agents format their loop files with XFS.
PACKAGES = (
    "slurmctld",
    "slurmd",
    "slurm-client",
    "munge",
    "slurm-wlm-basic-plugins",
    "lua-socket",
    "iproute2",
    "xfsprogs",
)


def missing_packages() -> list[str]:
    """Packages of :data:`PACKAGES` that dpkg does not report as installed."""
    missing = []
    for package in PACKAGES:
        probe = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        if probe.returncode != 0 or "install ok installed" not in probe.stdout:
            missing.append(package)
    return missing


def ensure_packages(log: LogFn) -> None:
    """Install the Debian Slurm + munge packages if any is missing (needs root and apt)."""
    if shutil.which("dpkg-query") is None:
        raise DevClusterError("dpkg-query not found: the dev cluster needs Debian/Ubuntu Slurm packages")
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise DevClusterError(
            f"missing packages {' '.join(missing)}; run as root or install them with "
            f"'apt-get install --no-install-recommends {' '.join(missing)}'"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # The distro's postinst may try to start its own services (using /etc/slurm); without systemd that
    # fails harmlessly and they never touch this cluster's files.
    _stream(["apt-get", "update"], env, log)
    _stream(["apt-get", "install", "-y", "--no-install-recommends", *missing], env, log)
    still_missing = missing_packages()
    if still_missing:
        raise DevClusterError(f"apt-get did not install {' '.join(still_missing)}")


def _stream(argv: Sequence[str], env: Mapping[str, str], log: LogFn) -> None:
    """Run a command, forwarding its output line by line as progress."""
    with subprocess.Popen(
        list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                log(f"  {argv[0]}: {line.rstrip()}")
        rc = proc.wait()
    if rc != 0:
        raise DevClusterError(f"{' '.join(argv)} failed with exit code {rc}")


def ensure_job_user(job_user: str, job_uid: int, log: LogFn) -> pwd.struct_passwd:
    """Create the unprivileged job user (root may not use burst buffers) with a home, if missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(job_user)
    if os.geteuid() != 0:
        raise DevClusterError(f"job user {job_user!r} does not exist and only root can create it")
    argv = ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group"]
    try:
        pwd.getpwuid(job_uid)
        log(f"uid {job_uid} is taken; letting useradd choose one for {job_user}")
    except KeyError:
        argv += ["--uid", str(job_uid)]
    log(f"creating job user {job_user}")
    result = subprocess.run([*argv, job_user], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DevClusterError(f"useradd {job_user} failed: {result.stderr.strip()}")
    return pwd.getpwnam(job_user)


def check_reachable_by(state_dir: Path, job_user: str) -> None:
    """Fail early if ``job_user`` cannot traverse to ``state_dir``.

    Its clients read slurm.conf and the munge socket there, and slurmstepd runs the batch script from
    the spool dir inside it, so every ancestor needs the search (x) bit for others.
    """
    for directory in [state_dir, *state_dir.parents]:
        with contextlib.suppress(FileNotFoundError):
            if not directory.stat().st_mode & 0o001:
                raise DevClusterError(
                    f"{directory} is not searchable by other users (mode "
                    f"{directory.stat().st_mode & 0o777:04o}), so job user {job_user} could not "
                    f"reach {state_dir}. Use a state dir under a world-searchable directory "
                    f"(e.g. --state-dir /var/tmp/slurmlink-dev-cluster) or 'chmod o+x {directory}'."
                )
