"""The dev cluster starts reliably and cleans up after itself, also when ``up`` fails.

``SLURMLINK_QUICKSTART_CYCLES`` sets how many ``quickstart up`` / ``down --purge`` cycles run (default 3,
to keep CI fast; run it with 30 before changing how daemons are started or stopped).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from slurmlink.slurm.devcluster import DevCluster, DevClusterError, Network, free_port_pair
from support.devcluster import cluster_leftovers, make_state_dir, quickstart_cli, skip_unless_possible
from support.postgres import free_port

CYCLES = int(os.environ.get("SLURMLINK_QUICKSTART_CYCLES", "3"))


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None once it is gone: tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _assert_nothing_left(
    directory: Path, started: dict[int, int | None] | None = None, network: Network | None = None
) -> None:
    """No process, namespace pin (mount) under ``directory``, nor interface or route of ``network``."""
    left = cluster_leftovers(directory, network, set())
    assert not left, f"{directory} left behind: {left}"
    for pid, ticks in (started or {}).items():
        assert ticks is None or _start_ticks(pid) != ticks, f"pid {pid} still running"


def _recorded_network(directory: Path) -> Network | None:
    return DevCluster.from_state_dir(directory / "cluster").network


@pytest.mark.slurm
@pytest.mark.timeout(120 + 120 * CYCLES)
def test_quickstart_up_down_cycles_start_every_time_and_leave_nothing_behind() -> None:
    skip_unless_possible()
    for cycle in range(CYCLES):
        directory = make_state_dir(f"slurmlink-qs-cycle{cycle}-")
        ctld_port, slurmd_port = free_port_pair()
        where = ["--state-dir", str(directory)]
        # Accounting (MariaDB, slurmdbd) is covered by test_accounting and the seed-job quick start test.
        ports = ["--ctld-port", str(ctld_port), "--slurmd-port", str(slurmd_port), "--no-accounting"]
        started: dict[int, int | None] = {}
        network = None
        began = time.monotonic()
        try:
            up = quickstart_cli("up", *where, "--listen", f"127.0.0.1:{free_port()}", *ports)
            network = _recorded_network(directory)
            assert up.returncode == 0, f"cycle {cycle}: {up.stderr}"
            status = DevCluster.from_state_dir(directory / "cluster").status()
            assert status.running and status.gateway and status.node_state == "idle", (cycle, status)
            pids = [int((directory / "run" / "server.pid").read_text()), *status.pids.values()]
            started = {pid: _start_ticks(pid) for pid in pids if pid is not None}
        finally:
            down = quickstart_cli("down", *where, "--purge", timeout=120)
        assert down.returncode == 0, f"cycle {cycle}: {down.stderr}"
        assert not directory.exists()
        _assert_nothing_left(directory, started, network)
        print(f"cycle {cycle + 1}/{CYCLES}: up and down in {time.monotonic() - began:.1f} s")


@pytest.mark.slurm
def test_failed_quickstart_up_stops_the_server_it_started_and_says_why() -> None:
    skip_unless_possible()
    directory = make_state_dir("slurmlink-qs-failed-")
    where = ["--state-dir", str(directory)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ctld_port = taken.getsockname()[1]
        try:
            up = quickstart_cli(
                "up",
                *where,
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--ctld-port",
                str(ctld_port),
                "--no-accounting",
            )
            assert up.returncode != 0
            # The API server was up before the dev cluster found its port taken.
            assert "API server ready" in up.stderr, up.stderr
            assert f"port(s) already in use: SlurmctldPort {ctld_port}" in up.stderr, up.stderr
            # The dev cluster had made its network and nodes before it found the port taken.
            _assert_nothing_left(directory, network=_recorded_network(directory))
        finally:
            quickstart_cli("down", *where, "--purge", timeout=120)


@pytest.mark.slurm
def test_failed_up_stops_the_daemons_it_started_and_shows_the_log(scratch_cluster: DevCluster) -> None:
    cluster = scratch_cluster
    # A real mistake in slurm.conf: slurmctld starts (after munged) and exits at once.
    with pytest.raises(DevClusterError) as failed:
        cluster.up(wait_timeout=60, extra_lines=["SelectType=select/no-such-plugin"])
    message = str(failed.value)
    assert "exited during startup" in message, message
    assert "no-such-plugin" in message, message  # the daemon's own log line says why
    assert not cluster.status().munged
    _assert_nothing_left(cluster.state_dir, network=cluster.network)
