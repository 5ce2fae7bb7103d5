"""The dev cluster's memory limits on paper: slurm.conf lines and cgroup.conf, what a toggle restarts, the
setting surviving in the state dir, the CLI flags, the host check and the removal of jobs' cgroups."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slurmlink.cli.main import main
from slurmlink.cli.quickstart_cmd import Quickstart
from slurmlink.slurm.devcluster import DevCluster, DevClusterError, Network, host
from slurmlink.slurm.devcluster.config import (
    CGROUP_CONF,
    CGROUP_CONF_NAME,
    JOB_ID_BLOCK,
    MEMORY_LIMIT_LINES,
    RESTART_KEYS,
    first_job_id,
)
from slurmlink.slurm.devcluster.layout import SETTINGS_FILE
from slurmlink.slurm.slurmconf import line_keys

NETWORK = Network("0a1b2c", ipaddress.IPv4Network("10.213.9.0/24"))


def _cluster(state_dir: Path, **kw: Any) -> DevCluster:
    cluster = DevCluster(state_dir, **kw)
    cluster.network = NETWORK
    return cluster


def _keys(text: str) -> list[str]:
    return [key for line in text.splitlines() for key in line_keys(line)]


def test_without_memory_limits_the_config_is_unchanged(tmp_path: Path) -> None:
    default = _cluster(tmp_path / "dc").render_slurm_conf(None)
    off = _cluster(tmp_path / "dc", memory_limits=False).render_slurm_conf(None)
    assert off == default
    lines = off.splitlines()
    assert "SelectTypeParameters=CR_Core" in lines and "TaskPlugin=task/none" in lines
    assert "ProctrackType=proctrack/linuxproc" in lines
    assert not any(line.startswith(("DefMemPerCPU", "FirstJobId")) for line in lines)
    assert not set(MEMORY_LIMIT_LINES) & set(lines)


def test_memory_limit_lines_replace_the_defaults(tmp_path: Path) -> None:
    text = _cluster(tmp_path / "dc", memory_limits=True).render_slurm_conf(None)
    lines = text.splitlines()
    for line in MEMORY_LIMIT_LINES:
        assert line in lines
    assert "SelectTypeParameters=CR_Core_Memory" in lines and "DefMemPerCPU=256" in lines
    assert "TaskPlugin=task/cgroup" in lines
    assert "ProctrackType=proctrack/linuxproc" in lines  # tracking stays /proc based
    # The cluster's own job ids: its /24 is 10.213.9.0, so 100000 * (1 + 9).
    assert first_job_id(NETWORK) == JOB_ID_BLOCK * 10 == 1_000_000
    assert "FirstJobId=1000000" in lines
    keys = _keys(text)
    assert {key for key in keys if keys.count(key) > 1} == set()
    # With accounting too, both sets of lines replace their defaults.
    both = _cluster(tmp_path / "dc", memory_limits=True, accounting=True).render_slurm_conf(None)
    keys = _keys(both)
    assert {key for key in keys if keys.count(key) > 1} == set()
    assert "JobAcctGatherType=jobacct_gather/linux" in both.splitlines()
    # An extra line still wins over them.
    extra = _cluster(tmp_path / "dc", memory_limits=True).render_slurm_conf(None, ["DefMemPerCPU=512"])
    assert "DefMemPerCPU=512" in extra.splitlines() and "DefMemPerCPU=256" not in extra.splitlines()


def test_first_job_ids_differ_between_clusters() -> None:
    ids = {first_job_id(Network("x", ipaddress.IPv4Network(f"10.213.{i}.0/24"))) for i in range(256)}
    assert len(ids) == 256
    assert max(ids) + JOB_ID_BLOCK <= 67_043_328  # Slurm's default MaxJobId


def test_toggling_writes_and_removes_cgroup_conf_and_restarts(tmp_path: Path) -> None:
    cgroup_conf = tmp_path / "dc" / "etc" / CGROUP_CONF_NAME
    off = _cluster(tmp_path / "dc")
    off.render_config(None)
    assert not cgroup_conf.exists()

    on = _cluster(tmp_path / "dc", memory_limits=True)
    changed = on.render_config(None)
    assert cgroup_conf.read_text() == CGROUP_CONF
    assert {"selecttypeparameters", "taskplugin"} <= changed & RESTART_KEYS
    assert {"defmempercpu", "firstjobid", "*"} <= changed
    conf = CGROUP_CONF.splitlines()
    assert {"CgroupPlugin=cgroup/v1", "CgroupMountpoint=/sys/fs/cgroup"} <= set(conf)
    assert {"ConstrainRAMSpace=yes", "ConstrainSwapSpace=yes"} <= set(conf)
    assert on.render_config(None) == set()  # unchanged: no reconfigure

    changed = off.render_config(None)
    assert not cgroup_conf.exists()  # a stale one is removed
    assert {"selecttypeparameters", "taskplugin"} <= changed & RESTART_KEYS
    assert off.slurm_conf.read_text() == off.render_slurm_conf(None)
    assert not {"defmempercpu", "firstjobid"} & set(_keys(off.slurm_conf.read_text()))


def test_memory_limits_survive_in_the_state_dir(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path, memory_limits=True)
    cluster._save_settings()
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["memory_limits"] is True
    assert DevCluster.from_state_dir(tmp_path).memory_limits
    assert DevCluster.from_state_dir(tmp_path, memory_limits=None).memory_limits  # flag not given
    assert not DevCluster.from_state_dir(tmp_path, memory_limits=False).memory_limits
    assert not DevCluster.from_state_dir(tmp_path / "fresh").memory_limits  # default: off
    # The quick start passes its flag through to its cluster, which keeps the last up's choice.
    quick = Quickstart(tmp_path / "qs")
    quick.cluster_dir.mkdir(parents=True)
    quick.cluster(memory_limits=True)._save_settings()
    assert quick.cluster().memory_limits and not quick.cluster(memory_limits=False).memory_limits


@pytest.mark.parametrize("command", [["dev-cluster", "up"], ["quickstart", "up"]])
def test_help_describes_the_flag(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--memory-limits / --no-memory-limits" in text
    assert "cgroup" in text and "DefMemPerCPU=256 MiB per CPU" in text
    assert "whole node's memory" in text and "OUT_OF_MEMORY" in text


def test_dev_cluster_up_passes_the_flag_or_the_saved_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def fake_up(self: DevCluster, *args: Any, **kw: Any) -> None:
        seen.append(self.memory_limits)
        raise DevClusterError("not starting anything in a unit test")

    monkeypatch.setattr(DevCluster, "up", fake_up)
    where = ["--state-dir", str(tmp_path), "--no-burst-buffer"]
    for flags in (["--memory-limits"], [], ["--no-memory-limits"]):
        result = CliRunner().invoke(main, ["dev-cluster", "up", *where, *flags])
        assert result.exit_code == 1 and "not starting anything" in result.output
        if flags == ["--memory-limits"]:
            DevCluster(tmp_path, memory_limits=True)._save_settings()  # as a real up would
    assert seen == [True, True, False]


def test_quickstart_up_passes_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def fake_up(self: Quickstart, *args: Any, **kw: Any) -> None:
        seen.append(kw.get("memory_limits"))
        raise DevClusterError("not starting anything in a unit test")

    monkeypatch.setattr(Quickstart, "up", fake_up)
    for flags, wanted in ((["--memory-limits"], True), ([], None), (["--no-memory-limits"], False)):
        result = CliRunner().invoke(main, ["quickstart", "up", "--state-dir", str(tmp_path), *flags])
        assert isinstance(result.exception, DevClusterError)
        assert seen[-1] is wanted


def _mountinfo(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_host_check_says_what_is_missing(tmp_path: Path) -> None:
    memory = tmp_path / "cgroup" / "memory"
    memory.mkdir(parents=True)
    base = f"31 23 0:28 / {memory.parent} rw,relatime - tmpfs tmpfs rw,mode=755"
    v1 = f"35 31 0:32 / {memory} rw,relatime shared:9 - cgroup cgroup rw,memory"
    assert host.memory_cgroup_problem(memory, _mountinfo(tmp_path, base, v1)) is None
    assert not list(memory.iterdir())  # the probe cgroup is gone again

    ro = v1.replace("rw,relatime", "ro,relatime")
    assert "read-only" in str(host.memory_cgroup_problem(memory, _mountinfo(tmp_path, base, ro)))
    cpu = v1.replace("rw,memory", "rw,cpu")
    problem = str(host.memory_cgroup_problem(memory, _mountinfo(tmp_path, base, cpu)))
    assert "not a cgroup v1 hierarchy with the memory controller" in problem
    assert "nothing is mounted" in str(host.memory_cgroup_problem(memory, _mountinfo(tmp_path, base)))
    unified = f"31 23 0:28 / {memory.parent} rw,relatime - cgroup2 cgroup2 rw"
    assert "cgroup v2" in str(host.memory_cgroup_problem(memory, _mountinfo(tmp_path, unified)))
    # Mounted, but no cgroup can be made there (here: it is no directory).
    plain = memory.parent / "plain"
    plain.write_text("")
    mounted = f"35 31 0:32 / {plain} rw,relatime - cgroup cgroup rw,memory"
    assert "cannot make a cgroup" in str(
        host.memory_cgroup_problem(plain, _mountinfo(tmp_path, base, mounted))
    )


def test_up_refuses_memory_limits_the_host_cannot_enforce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "memory_cgroup_problem", lambda: "nothing is mounted at /sys/fs/cgroup/memory")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    cluster = DevCluster(tmp_path, memory_limits=True)
    for start in (cluster.up, cluster.ensure_network):
        with pytest.raises(DevClusterError) as caught:
            start()
        message = str(caught.value)
        assert "cgroup v1's memory controller" in message and "nothing is mounted" in message
        assert "--no-memory-limits" in message and "without memory enforcement" in message
    assert not (tmp_path / SETTINGS_FILE).exists()


def test_down_removes_only_its_jobs_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "MEMORY_CGROUP", tmp_path)
    ours = range(first_job_id(NETWORK), first_job_id(NETWORK) + JOB_ID_BLOCK)
    mine = tmp_path / "slurm_compute1" / "uid_23001" / f"job_{ours.start + 3}"
    (mine / "step_batch" / "task_0").mkdir(parents=True)
    (mine / "step_extern").mkdir()
    other = tmp_path / "slurm_compute1" / "uid_23001" / "job_7"  # another cluster's job
    other.mkdir()
    only_mine = tmp_path / "slurm_compute2" / "uid_0" / f"job_{ours.start}"
    only_mine.mkdir(parents=True)
    host.remove_job_cgroups(["compute1", "compute2", "compute3"], ours, log=lambda _: None)
    assert not mine.exists() and other.is_dir()
    assert not only_mine.parent.exists()  # its user's cgroup emptied: removed
    assert (tmp_path / "slurm_compute2").is_dir()  # the node's is left, as Slurm leaves it
