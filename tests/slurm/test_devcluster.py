"""The dev cluster really runs Slurm: jobs complete, burst_buffer/lua is live, lifecycle commands work."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurmlink.cli.main import main
from slurmlink.slurm.devcluster import BurstBufferSetup, DevCluster, DevClusterError, parse_scontrol_record


def _sbatch_as_job_user(cluster: DevCluster, *args: str) -> str:
    result = cluster.run_as_job_user(["sbatch", "--parsable", *args], timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
    return path.read_text()


# ---------------------------------------------------------------- no cluster needed


def test_render_config_burst_buffer_and_extra_lines(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "dc", ctld_port=7001, slurmd_port=7002)
    bb = BurstBufferSetup(lua_source="-- lua\n", conf_text="Directive=DW\n")
    changed = cluster.render_config(
        bb, extra_lines=["JobSubmitPlugins=lua", "MinJobAge=60"], extra_files={"job_submit.lua": "-- js\n"}
    )
    conf = cluster.slurm_conf.read_text()
    assert "BurstBufferType=burst_buffer/lua" in conf
    assert "SlurmctldPort=7001" in conf and "SlurmdPort=7002" in conf
    assert f"AuthInfo=socket={cluster.state_dir}/munge/munge.socket.2" in conf
    assert "JobSubmitPlugins=lua" in conf
    assert "MinJobAge=60" in conf and "MinJobAge=300" not in conf  # extra lines override defaults
    assert (cluster.etc_dir / "burst_buffer.lua").read_text() == "-- lua\n"
    assert (cluster.etc_dir / "burst_buffer.conf").read_text() == "Directive=DW\n"
    assert (cluster.etc_dir / "job_submit.lua").read_text() == "-- js\n"
    assert "burstbuffertype" in changed

    # Same input: nothing to reconfigure. Dropping the burst buffer removes its files.
    assert cluster.render_config(bb, extra_lines=["JobSubmitPlugins=lua", "MinJobAge=60"]) == set()
    assert "burstbuffertype" in cluster.render_config(None)
    assert "BurstBufferType" not in cluster.slurm_conf.read_text()
    assert not (cluster.etc_dir / "burst_buffer.lua").exists()


def test_parse_scontrol_record_keeps_values_with_spaces() -> None:
    text = (
        "JobId=7 JobName=wrap\n   JobState=COMPLETED Reason=None Dependency=(null)\n"
        "   BurstBuffer=#DW jobdw capacity=1 pool=testpool\n   BurstBufferState=complete\n"
    )
    record = parse_scontrol_record(text)
    assert record["JobId"] == "7"
    assert record["JobState"] == "COMPLETED"
    assert record["BurstBuffer"] == "#DW jobdw capacity=1 pool=testpool"
    assert record["BurstBufferState"] == "complete"


# ------------------------------------------------------------------ real cluster


@pytest.mark.slurm
def test_up_leaves_node_idle(dev_cluster: DevCluster) -> None:
    status = dev_cluster.status()
    assert status.running, status
    assert status.node_state == "idle"
    assert "BurstBufferType=burst_buffer/lua" in dev_cluster.slurm_conf.read_text()


@pytest.mark.slurm
def test_up_again_is_idempotent_and_fast(
    dev_cluster: DevCluster, noop_burst_buffer: BurstBufferSetup
) -> None:
    before = dev_cluster.status().pids
    started = time.monotonic()
    status = dev_cluster.up(burst_buffer=noop_burst_buffer)
    elapsed = time.monotonic() - started
    assert status.running and status.node_state == "idle"
    assert status.pids == before  # nothing restarted
    assert elapsed < 5, f"warm up took {elapsed:.1f} s"


@pytest.mark.slurm
def test_plain_job_completes_and_writes_hostname(dev_cluster: DevCluster) -> None:
    out = dev_cluster.jobs_dir / "plain-%j.out"
    job_id = _sbatch_as_job_user(dev_cluster, "-o", str(out), "--wrap", "hostname")
    info = dev_cluster.wait_for_job(job_id, timeout=60)
    assert info["UserId"].startswith(dev_cluster.job_user)
    text = _wait_for_file(dev_cluster.jobs_dir / f"plain-{job_id}.out")
    assert text.strip() == socket.gethostname()


@pytest.mark.slurm
def test_burst_buffer_job_runs_through_lua_plugin(dev_cluster: DevCluster) -> None:
    script = dev_cluster.jobs_dir / "bb-job.sh"
    lines = [
        "#!/bin/bash",
        "#DW jobdw capacity=1 pool=testpool",
        "#DW noop_directive anything=goes",
        "echo bb-ok",
    ]
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o644)
    job_id = _sbatch_as_job_user(dev_cluster, "-o", str(dev_cluster.jobs_dir / "bb-%j.out"), str(script))
    info = dev_cluster.wait_for_job(job_id, timeout=60)
    assert "#DW jobdw capacity=1 pool=testpool" in info["BurstBuffer"]
    assert "BurstBufferState" in info
    assert _wait_for_file(dev_cluster.jobs_dir / f"bb-{job_id}.out").strip() == "bb-ok"


@pytest.mark.slurm
def test_root_may_not_use_burst_buffers(dev_cluster: DevCluster) -> None:
    result = dev_cluster.run_slurm(["sbatch", "--bb", "#DW noop", "--wrap", "true"], timeout=30)
    assert result.returncode != 0
    assert "Burst Buffer permission denied" in result.stderr


@pytest.mark.slurm
def test_status_and_env_of_running_cluster(dev_cluster: DevCluster) -> None:
    env = dev_cluster.env()
    assert env == {"SLURM_CONF": str(dev_cluster.slurm_conf), "SLURMLINK_JOB_USER": dev_cluster.job_user}

    runner = CliRunner()
    args = ["--state-dir", str(dev_cluster.state_dir)]
    result = runner.invoke(main, ["dev-cluster", "env", *args])
    assert result.exit_code == 0, result.output
    assert f"export SLURM_CONF={dev_cluster.slurm_conf}" in result.output.splitlines()
    assert f"export SLURMLINK_JOB_USER={dev_cluster.job_user}" in result.output.splitlines()

    # Ports come from the settings the fixture's "up" saved, not the defaults.
    result = runner.invoke(main, ["dev-cluster", "status", *args])
    assert result.exit_code == 0, result.output
    assert "running" in result.output and str(dev_cluster.ctld_port) in result.output


@pytest.mark.slurm
def test_lifecycle_up_down_status(scratch_cluster: DevCluster) -> None:
    cluster = scratch_cluster
    started = time.monotonic()
    status = cluster.up(wait_timeout=120)  # no burst buffer this time
    cold = time.monotonic() - started
    assert status.running and status.node_state == "idle", status
    assert "BurstBufferType" not in cluster.slurm_conf.read_text()
    pids = [pid for pid in status.pids.values() if pid is not None]
    assert len(pids) == 3

    started = time.monotonic()
    assert cluster.up().pids == status.pids
    warm = time.monotonic() - started
    print(f"dev cluster up: cold {cold:.2f} s, warm {warm:.2f} s")

    cluster.down()
    for pid in pids:
        assert not _alive(pid), f"pid {pid} still alive"
    status = cluster.status()
    assert not (status.munged or status.slurmctld or status.slurmd)
    assert not status.running and status.node_state is None
    assert cluster.slurm_conf.exists()  # state kept without purge

    result = CliRunner().invoke(main, ["dev-cluster", "status", "--state-dir", str(cluster.state_dir)])
    assert result.exit_code == 1
    assert "stopped" in result.output


def test_cli_up_requires_existing_kubeconfig(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["dev-cluster", "up", "--state-dir", str(tmp_path), "--kubeconfig", str(tmp_path / "missing")]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_record_kubeconfig(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "dc")
    with pytest.raises(DevClusterError):
        cluster.record_kubeconfig(tmp_path / "missing")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    cluster.record_kubeconfig(kubeconfig)
    assert cluster.recorded_kubeconfig() == kubeconfig
