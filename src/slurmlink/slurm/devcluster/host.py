"""What the host needs: Debian's Slurm and munge packages (for accounting also slurmdbd and MariaDB), and
the unprivileged job user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
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


#: With accounting: slurmdbd and its database. mariadb-client provides ``mariadb``, with which the dev
#: cluster creates slurmdbd's database and account.
ACCOUNTING_PACKAGES = ("slurmdbd", "mariadb-server", "mariadb-client")
#: Services those packages enable (and, without a policy-rc.d, start) at install: the dev cluster runs
#: private instances, so the system's are stopped and disabled when the dev cluster installs them.
_SYSTEM_SERVICES = {"mariadb-server": "mariadb", "slurmdbd": "slurmdbd"}
_POLICY_RC = Path("/usr/sbin/policy-rc.d")


def wanted_packages(accounting: bool = False) -> tuple[str, ...]:
    return PACKAGES + ACCOUNTING_PACKAGES if accounting else PACKAGES


def missing_packages(accounting: bool = False) -> list[str]:
    """Packages of :data:`PACKAGES` (and :data:`ACCOUNTING_PACKAGES`) that dpkg does not report as
    installed."""
    missing = []
    for package in wanted_packages(accounting):
        probe = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        if probe.returncode != 0 or "install ok installed" not in probe.stdout:
            missing.append(package)
    return missing


def ensure_packages(log: LogFn, accounting: bool = False) -> None:
    """Install the Debian Slurm + munge packages (and with ``accounting`` slurmdbd and MariaDB) if any is
    missing (needs root and apt)."""
    if shutil.which("dpkg-query") is None:
        raise DevClusterError("dpkg-query not found: the dev cluster needs Debian/Ubuntu Slurm packages")
    missing = missing_packages(accounting)
    if not missing:
        return
    if os.geteuid() != 0:
        raise DevClusterError(
            f"missing packages {' '.join(missing)}; run as root or install them with "
            f"'apt-get install --no-install-recommends {' '.join(missing)}'"
            + (
                " (or run without accounting: --no-accounting)"
                if set(missing) & set(ACCOUNTING_PACKAGES)
                else ""
            )
        )
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # The distro's postinst may try to start its own services (using /etc/slurm); without systemd that
    # fails harmlessly and they never touch this cluster's files. MariaDB's would start for real, so
    # services are kept from starting (policy-rc.d) and those the dev cluster replaces are disabled.
    _stream(["apt-get", "update"], env, log)
    with _services_held():
        _stream(["apt-get", "install", "-y", "--no-install-recommends", *missing], env, log)
    _disable_services([_SYSTEM_SERVICES[p] for p in missing if p in _SYSTEM_SERVICES], log)
    still_missing = missing_packages(accounting)
    if still_missing:
        raise DevClusterError(f"apt-get did not install {' '.join(still_missing)}")


@contextlib.contextmanager
def _services_held() -> Iterator[None]:
    """A policy-rc.d that refuses every service start while packages install (unless one exists)."""
    if _POLICY_RC.exists():
        yield
        return
    _POLICY_RC.write_text("#!/bin/sh\n# temporary, from slurmlink dev-cluster's package install\nexit 101\n")
    _POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        _POLICY_RC.unlink(missing_ok=True)


def _disable_services(services: Sequence[str], log: LogFn) -> None:
    """Stop and disable system services that the dev cluster replaces with private instances."""
    for service in services:
        if Path("/run/systemd/system").is_dir():
            argv = ["systemctl", "disable", "--now", f"{service}.service"]
        elif Path(f"/etc/init.d/{service}").exists() and shutil.which("update-rc.d"):
            argv = ["update-rc.d", service, "disable"]
        else:
            continue
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            log(f"disabled the system's {service} service (the dev cluster runs its own)")
        else:
            log(f"could not disable the system's {service} service: {result.stderr.strip()}")


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
