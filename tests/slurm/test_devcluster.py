"""The dev cluster really runs Slurm: jobs complete, burst_buffer/lua is live, lifecycle commands work."""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurmlink.cli.main import main
from slurmlink.slurm.devcluster import (
    BurstBufferSetup,
    DevCluster,
    DevClusterError,
    GatewaySetup,
    Network,
    free_port_pair,
    gateway_healthy,
    parse_scontrol_record,
)
from slurmlink.slurm.plugin import lua_string_literal
from support.devcluster import make_state_dir, quickstart_cli, skip_unless_possible
from support.postgres import free_port
from support.server import ServerProcess
from support.waiting import wait_for


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


def _start_ticks(pid: int) -> int:
    """When the process started, in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat_text = Path(f"/proc/{pid}/stat").read_text()
    return int(stat_text[stat_text.rindex(")") + 2 :].split()[19])


def _cmdline(pid: int) -> list[str]:
    return [p.decode() for p in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if p]


def _wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
    return path.read_text()


# ---------------------------------------------------------------- no cluster needed


def test_render_config_burst_buffer_and_extra_lines(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "dc", ctld_port=7001, slurmd_port=7002, compute_nodes=2, storage_nodes=3)
    with pytest.raises(DevClusterError, match="no network yet"):
        cluster.render_config(None)
    cluster.network = Network("0a0b0c", ipaddress.IPv4Network("10.213.7.0/24"))
    bb = BurstBufferSetup(lua_source="-- lua\n", conf_text="Directive=DW\n")
    changed = cluster.render_config(
        bb, extra_lines=["JobSubmitPlugins=lua", "MinJobAge=60"], extra_files={"job_submit.lua": "-- js\n"}
    )
    conf = cluster.slurm_conf.read_text()
    assert "SlurmctldHost=localhost(10.213.7.1)" in conf
    # Compute nodes only (storage nodes run no slurmd), each at its own address.
    node_lines = [line for line in conf.splitlines() if line.startswith("NodeName=")]
    assert [line.split()[:3] for line in node_lines] == [
        ["NodeName=compute1", "NodeAddr=10.213.7.101", "NodeHostname=compute1"],
        ["NodeName=compute2", "NodeAddr=10.213.7.102", "NodeHostname=compute2"],
    ]
    assert f"SlurmdPidFile={cluster.run_dir}/slurmd.%n.pid" in conf
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
def test_a_daemon_rewriting_its_pid_file_is_not_taken_for_dead(dev_cluster: DevCluster) -> None:
    munged = dev_cluster._daemon("munged")
    saved = munged.pid_file.read_text()
    try:
        munged.pid_file.write_text("")  # munged truncates its pid file, then writes it, at start-up
        dev_cluster._died_check(munged)()  # no "munged exited during startup"
    finally:
        munged.pid_file.write_text(saved)
    stranger = DevCluster(dev_cluster.state_dir, dev_cluster.ctld_port, dev_cluster.slurmd_port)
    munged.pid_file.write_text("")
    try:  # a DevCluster that did not start munged only has the pid file to go by
        with pytest.raises(DevClusterError, match="munged exited during startup"):
            stranger._died_check(munged)()
    finally:
        munged.pid_file.write_text(saved)


@pytest.mark.slurm
def test_plain_job_completes_and_writes_hostname(dev_cluster: DevCluster) -> None:
    out = dev_cluster.jobs_dir / "plain-%j.out"
    job_id = _sbatch_as_job_user(dev_cluster, "-o", str(out), "--wrap", "hostname")
    info = dev_cluster.wait_for_job(job_id, timeout=60)
    assert info["UserId"].startswith(dev_cluster.job_user)
    text = _wait_for_file(dev_cluster.jobs_dir / f"plain-{job_id}.out")
    assert text.strip() == "compute1"  # the node's own hostname, not the host's


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
    assert env == {
        "SLURM_CONF": str(dev_cluster.slurm_conf),
        "SLURMLINK_JOB_USER": dev_cluster.job_user,
        "SLURMLINK_COMPUTE_NODES": "compute1",
        "SLURMLINK_STORAGE_NODES": "storage1",
        "SLURMLINK_CONTROLLER_ADDRESS": dev_cluster.controller_address,
    }

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
    assert re.search(r"node compute1 +│ idle", result.output), result.output
    assert re.search(r"node storage1 +│ present", result.output), result.output


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


# ------------------------------------------------------------------------- gateway (4th daemon)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real slurmlink API server for the gateway to sync with."""
    proc = ServerProcess(tmp_path_factory.mktemp("devcluster-serve") / "state")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _up_with_gateway(cluster: DevCluster, gateway: GatewaySetup) -> None:
    try:
        cluster.up(wait_timeout=120, gateway=gateway)
    except DevClusterError as exc:
        if "not implemented yet" in str(exc):
            pytest.skip("'slurmlink slurm gateway' is not implemented yet")
        raise


@pytest.mark.slurm
def test_up_with_gateway_runs_it_before_slurmctld_and_down_stops_it(
    scratch_cluster: DevCluster, api_server: ServerProcess, tmp_path: Path
) -> None:
    cluster = scratch_cluster
    kubeconfig = tmp_path / "first.kubeconfig"
    kubeconfig.write_bytes(api_server.issue_kubeconfig("slurm-dws", "workload-manager", "slurm").read_bytes())
    extra = ("--sweep-interval", "0")
    _up_with_gateway(cluster, GatewaySetup(kubeconfig=kubeconfig, extra_args=extra))

    status = cluster.status()
    assert status.running and status.gateway and status.gateway_enabled, status
    assert status.node_state == "idle"
    pids = {name: pid for name, pid in status.pids.items() if pid is not None}
    assert set(pids) == {"munged", "gateway", "slurmctld", "slurmd@compute1"}
    assert gateway_healthy(cluster.gateway_socket)
    assert stat.S_IMODE(cluster.gateway_socket.stat().st_mode) == 0o600
    # slurmctld calls slurm_bb_pools through the gateway as soon as it starts.
    assert _start_ticks(pids["gateway"]) <= _start_ticks(pids["slurmctld"])
    assert _cmdline(pids["gateway"]) == [
        sys.executable,
        *("-m", "slurmlink.cli.main", "slurm", "gateway"),
        *("--kubeconfig", str(cluster.etc_dir / "slurm-dws.kubeconfig")),
        *("--socket", str(cluster.gateway_socket)),
        *("--slurm-conf", str(cluster.slurm_conf)),
        *extra,
    ]

    # slurmlink's plugin, not the placeholder, talking to that socket with the given credentials.
    assert "BurstBufferType=burst_buffer/lua" in cluster.slurm_conf.read_text()
    lua = (cluster.etc_dir / "burst_buffer.lua").read_text()
    assert f"local SOCKET_PATH = {lua_string_literal(str(cluster.gateway_socket))}" in lua
    assert 'local SLURM_API = "22.05"' in lua  # detected from slurmctld -V
    installed = cluster.etc_dir / "slurm-dws.kubeconfig"
    assert installed.read_bytes() == kubeconfig.read_bytes()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o600
    assert cluster.recorded_kubeconfig() == kubeconfig

    # Same settings again, also through the CLI without --kubeconfig (the recorded one is used): no restart.
    cluster.up(gateway=GatewaySetup(kubeconfig=kubeconfig, extra_args=extra))
    assert cluster.status().pids == status.pids
    args = ["--state-dir", str(cluster.state_dir), "--gateway-arg=--sweep-interval", "--gateway-arg=0"]
    result = CliRunner().invoke(main, ["dev-cluster", "up", *args])
    assert result.exit_code == 0, result.output
    assert f"using the kubeconfig of an earlier 'up': {kubeconfig}" in result.output
    assert cluster.status().pids == status.pids

    result = CliRunner().invoke(main, ["dev-cluster", "status", "--state-dir", str(cluster.state_dir)])
    assert result.exit_code == 0, result.output
    gateway_row = next(line for line in result.output.splitlines() if "gateway" in line)
    assert "running" in gateway_row and str(pids["gateway"]) in gateway_row

    # New credentials: only the gateway restarts, with the new file installed.
    renewed = api_server.issue_kubeconfig("slurm-dws", "workload-manager", "slurm", token=True)
    assert renewed.read_bytes() != kubeconfig.read_bytes()
    cluster.up(gateway=GatewaySetup(kubeconfig=renewed, extra_args=extra))
    restarted = cluster.status()
    assert restarted.gateway and restarted.pids["gateway"] != pids["gateway"]
    assert not _alive(pids["gateway"])
    assert {k: v for k, v in restarted.pids.items() if k != "gateway"} == {
        k: v for k, v in status.pids.items() if k != "gateway"
    }
    assert installed.read_bytes() == renewed.read_bytes()
    assert gateway_healthy(cluster.gateway_socket)

    # down stops all four; the config (and the knowledge that a gateway belongs here) stays.
    gateway_pid = restarted.pids["gateway"]
    assert gateway_pid is not None
    cluster.down()
    assert not _alive(gateway_pid)
    assert not cluster.gateway_socket.exists()
    after = cluster.status()
    assert not after.gateway and after.gateway_enabled and not after.running


@pytest.mark.slurm
def test_up_with_placeholder_stops_a_gateway_left_running(
    scratch_cluster: DevCluster, api_server: ServerProcess, noop_burst_buffer: BurstBufferSetup
) -> None:
    cluster = scratch_cluster
    kubeconfig = api_server.issue_kubeconfig("slurm-dws", "workload-manager", "slurm")
    _up_with_gateway(cluster, GatewaySetup(kubeconfig=kubeconfig))
    before = cluster.status()
    gateway_pid = before.pids["gateway"]
    assert gateway_pid is not None

    status = cluster.up(burst_buffer=noop_burst_buffer)
    assert status.running and not status.gateway and not status.gateway_enabled
    assert not _alive(gateway_pid)
    assert (cluster.etc_dir / "burst_buffer.lua").read_text() == noop_burst_buffer.lua_source
    # BurstBufferType did not change, so Slurm kept running.
    for name in ("munged", "slurmctld", "slurmd@compute1"):
        assert status.pids[name] == before.pids[name], name


def test_gateway_pid_check_never_matches_a_reused_pid(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "dc")
    cluster.run_dir.mkdir(parents=True)
    # This pytest process is a live Python, but not this cluster's gateway.
    (cluster.run_dir / "gateway.pid").write_text(f"{os.getpid()}\n")
    assert cluster.status().pids["gateway"] is None
    assert not cluster.status().gateway

    # What the check accepts: python running our gateway on this cluster's socket, whatever its options.
    daemon = cluster._daemon("gateway")
    ours = list(daemon.argv)
    assert daemon.matches(ours)
    assert daemon.matches(["/usr/bin/python3.11", *ours[1:], "--transient-grace", "5"])
    assert not daemon.matches([*ours[:8], "/var/tmp/other-cluster/run/slurm-bb.sock", *ours[9:]])
    assert not daemon.matches(["/usr/bin/bash", *ours[1:]])
    assert not daemon.matches([ours[0], "-m", "slurmlink.cli.main", "serve", *ours[5:]])
    assert not daemon.matches([])


def test_cli_up_gateway_option_conflicts(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("apiVersion: v1\n")
    runner = CliRunner()
    args = ["dev-cluster", "up", "--state-dir", str(tmp_path / "dc")]
    result = runner.invoke(main, [*args, "--no-burst-buffer", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 2
    assert "--no-burst-buffer cannot be combined with --kubeconfig" in result.output
    result = runner.invoke(main, [*args, "--gateway-arg=--sweep-interval"])
    assert result.exit_code == 2
    assert "--gateway-arg needs --kubeconfig" in result.output


# ------------------------------------------------------------------------------------ quick start


@pytest.mark.slurm
def test_quickstart_up_runs_the_seed_job_then_down_purges() -> None:
    skip_unless_possible()
    directory = make_state_dir("slurmlink-quickstart-")
    ctld_port, slurmd_port = free_port_pair()
    listen = f"127.0.0.1:{free_port()}"
    where = ["--state-dir", str(directory)]
    ports = ["--ctld-port", str(ctld_port), "--slurmd-port", str(slurmd_port)]
    try:
        # The quick start's defaults, accounting storage included (slurmdbd on a free port).
        up = quickstart_cli("up", *where, "--listen", listen, *ports, "--dbd-port", str(free_port("0.0.0.0")))
        if "not implemented yet" in up.stderr:
            pytest.skip("'slurmlink slurm gateway' is not implemented yet")
        assert up.returncode == 0, up.stderr
        assert "[quickstart] starting slurmlink serve" in up.stderr
        admin = directory / "server" / "admin.kubeconfig"
        assert (
            f"KUBECONFIG={admin} kubectl get \\\n        workflows.dataworkflowservices.github.io -A -w"
            in up.stdout
        )
        assert "scontrol show bbstat workflow <jobid>" in up.stdout
        cluster = DevCluster.from_state_dir(directory / "cluster")
        lua = (cluster.etc_dir / "burst_buffer.lua").read_text()
        assert "local SOCKET_PATH" in lua  # slurmlink's plugin, not the placeholder

        # The printed submit command, as printed, runs the seed's example job through the plugin.
        lines = up.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("runuser -u"))
        command = shlex.split((lines[start].rstrip("\\") + lines[start + 1]).strip())
        submitted = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd="/")
        assert submitted.returncode == 0, submitted.stderr
        match = re.fullmatch(r"Submitted batch job (\d+)", submitted.stdout.strip())
        assert match is not None, submitted.stdout
        job_id = match.group(1)
        info = cluster.wait_for_job(job_id, timeout=90)
        assert info["BurstBuffer"] == "#DW", info
        # Teardown runs after the job is COMPLETED.
        wait_for(
            lambda: (cluster.job_info(job_id) or {}).get("BurstBufferState") == "complete",
            timeout=60,
            message=f"job {job_id}'s burst buffer to be torn down",
        )
        output = _wait_for_file(cluster.jobs_dir / f"slurm-{job_id}.out")
        assert "0: compute1" in output  # srun ran on the cluster's compute node

        status = quickstart_cli("status", *where, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "slurmdbd" in status.stdout and "sacct -X" in up.stdout
        wait_for(  # slurmctld reports job ends to slurmdbd asynchronously
            lambda: (
                cluster.sacct([job_id], ("JobIDRaw", "Account", "State"))
                == [{"JobIDRaw": job_id, "Account": "default", "State": "COMPLETED"}]
            ),
            timeout=30,
            message=f"sacct to show job {job_id} COMPLETED in account default",
        )
        pids = cluster.status().pids
        assert pids["mariadbd"] and pids["slurmdbd"], pids
        server_pid = int((directory / "run" / "server.pid").read_text())

        again = quickstart_cli("up", *where)  # idempotent: same listen address and ports remembered
        assert again.returncode == 0, again.stderr
        assert f"slurmlink serve already running (pid {server_pid})" in again.stderr
        assert cluster.status().pids == pids
    finally:
        down = quickstart_cli("down", *where, "--purge", timeout=120)
    assert down.returncode == 0, down.stderr
    assert not directory.exists()
    for pid in [server_pid, *(p for p in pids.values() if p is not None)]:
        assert not _alive(pid), pid
