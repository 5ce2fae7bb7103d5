"""What the host needs: Debian's Slurm and munge packages (for accounting also slurmdbd and MariaDB), the
unprivileged job user, and for memory limits cgroup v1's memory controller."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


#: cgroup v1's memory controller, where cgroup.conf's ``CgroupMountpoint=/sys/fs/cgroup`` makes the dev
#: cluster's Slurm (``TaskPlugin=task/cgroup``, ``CgroupPlugin=cgroup/v1``) look for it.
MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")
_MOUNTINFO = Path("/proc/self/mountinfo")


def memory_cgroup_problem(path: Path = MEMORY_CGROUP, mountinfo: Path = _MOUNTINFO) -> str | None:
    """What keeps this host from enforcing memory limits, None if nothing: ``path`` must be a cgroup v1
    hierarchy with the memory controller, mounted read-write, in which we can make a cgroup."""
    found: dict[str, tuple[str, set[str]]] = {}
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            fields = line.split(" ")
            if "-" not in fields or len(fields) < 5:
                continue
            rest = fields[fields.index("-") + 1 :]
            options = set(fields[5].split(",")) | (set(rest[2].split(",")) if len(rest) > 2 else set())
            found[fields[4]] = (rest[0] if rest else "", options)  # the last mount on a path wins
    mount = found.get(str(path))
    if mount is None:
        if found.get(str(path.parent), ("",))[0] == "cgroup2":
            return f"the host has cgroup v2 (unified hierarchy at {path.parent}), no v1 memory controller"
        return f"nothing is mounted at {path}"
    fstype, options = mount
    if fstype != "cgroup" or "memory" not in options:
        return f"{path} is a {fstype} mount, not a cgroup v1 hierarchy with the memory controller"
    if "ro" in options:
        return f"{path} is mounted read-only"
    probe = path / f"slurmlink-probe-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as exc:
        return f"cannot make a cgroup in {path}: {exc.strerror or exc}"
    return None


def check_memory_limits() -> None:
    """Fail with what is missing unless this host can enforce the dev cluster's memory limits."""
    problem = memory_cgroup_problem()
    if problem is not None:
        raise DevClusterError(
            f"memory limits need cgroup v1's memory controller mounted read-write at {MEMORY_CGROUP}, but "
            f"{problem}. Without them (--no-memory-limits) the cluster runs without memory enforcement."
        )


def remove_job_cgroups(node_names: Iterable[str], job_ids: range, log: LogFn, timeout: float = 5) -> None:
    """Remove the memory cgroups Slurm made for the jobs ``job_ids`` on the nodes ``node_names``, and the
    job user's cgroups above them once empty (``slurm_<node>/uid_<uid>/job_<id>/step_*``).

    slurmstepd removes a job's cgroups when the job ends, not when it is killed with its node. Holds the
    lock Slurm takes on the hierarchy's root while it makes cgroups, since the dev clusters of a host share
    ``slurm_<node>`` (their nodes have the same names); ``slurm_<node>`` itself is left, as Slurm leaves it.
    A cgroup whose processes have not exited yet is retried until ``timeout``.
    """
    roots = [MEMORY_CGROUP / f"slurm_{name}" for name in node_names]
    if not any(root.is_dir() for root in roots):
        return
    deadline = time.monotonic() + timeout
    fd = os.open(MEMORY_CGROUP, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for root in roots:
            for user in sorted(root.glob("uid_*")):
                for job in sorted(user.glob("job_*")):
                    number = job.name.removeprefix("job_")
                    if number.isdigit() and int(number) in job_ids:
                        _remove_cgroup_tree(job, deadline, log)
                with contextlib.suppress(OSError):
                    user.rmdir()  # busy while another cluster's job of the same user runs on its namesake
    finally:
        os.close(fd)  # releases the lock


def _remove_cgroup_tree(top: Path, deadline: float, log: LogFn) -> None:
    """rmdir a cgroup and its children, deepest first (their files are the kernel's, rmdir takes them)."""
    for directory, _subdirs, _files in os.walk(top, topdown=False):
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    log(f"could not remove the cgroup {directory}: {exc.strerror or exc}")
                    return
                time.sleep(0.1)
