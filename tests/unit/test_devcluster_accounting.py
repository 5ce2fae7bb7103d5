"""The dev cluster's accounting storage on paper: slurm.conf and slurmdbd.conf lines, MariaDB's option file,
its readiness probe, the flags of --accounting-enforce, settings that survive, and what a missing package
says."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from pathlib import Path

import pytest

from slurmlink.slurm.devcluster import DEFAULT_DBD_PORT, DevCluster, DevClusterError, MariaDB, Network
from slurmlink.slurm.devcluster.daemons import Daemon
from slurmlink.slurm.devcluster.slurmdbd import parse_enforce, render_slurmdbd_conf, write_slurmdbd_conf
from slurmlink.slurm.slurmconf import line_keys

NETWORK = Network("0a1b2c", ipaddress.IPv4Network("10.213.9.0/24"))


def _conf(cluster: DevCluster) -> list[str]:
    cluster.network = NETWORK
    return cluster.render_slurm_conf(None).splitlines()


def test_slurm_conf_without_accounting_has_none(tmp_path: Path) -> None:
    lines = _conf(DevCluster(tmp_path / "dc"))
    assert "AccountingStorageType=accounting_storage/none" in lines
    assert "JobAcctGatherType=jobacct_gather/none" in lines
    assert not any(line.startswith(("AccountingStorageHost", "AccountingStorageEnforce")) for line in lines)


def test_slurm_conf_with_accounting_points_at_slurmdbd(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "dc", accounting=True, dbd_port=7019, accounting_enforce="safe,limits")
    lines = _conf(cluster)
    assert "AccountingStorageType=accounting_storage/slurmdbd" in lines
    assert "AccountingStorageHost=10.213.9.1" in lines  # the bridge: reachable from the host and the nodes
    assert "AccountingStoragePort=7019" in lines
    assert f"AccountingStoragePass={cluster.munge_socket}" in lines  # the cluster's munged, not the system's
    assert "JobAcctGatherType=jobacct_gather/linux" in lines
    assert "AccountingStorageEnforce=safe,limits" in lines
    keys = [key for line in lines for key in line_keys(line)]
    assert {key for key in keys if keys.count(key) > 1} == set()  # the accounting lines replaced the defaults


def test_accounting_settings_survive_in_the_state_dir(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path, accounting=True, dbd_port=7019, accounting_enforce=["associations"])
    tmp_path.mkdir(exist_ok=True)
    cluster._save_settings()
    again = DevCluster.from_state_dir(tmp_path)
    assert (again.accounting, again.dbd_port, again.accounting_enforce) == (True, 7019, ("associations",))
    off = DevCluster.from_state_dir(tmp_path, accounting=False)
    assert not off.accounting and off.dbd_port == 7019
    assert DevCluster(tmp_path / "fresh").dbd_port == DEFAULT_DBD_PORT


def test_parse_enforce() -> None:
    assert parse_enforce("associations, limits,safe") == ("associations", "limits", "safe")
    assert parse_enforce("none") == () == parse_enforce("") == parse_enforce(None)
    assert parse_enforce(["QOS", "qos"]) == ("qos",)
    with pytest.raises(DevClusterError, match=r"unknown AccountingStorageEnforce flag.*bogus"):
        parse_enforce("associations,bogus")


def test_slurmdbd_conf_is_private_and_names_the_socketless_database(tmp_path: Path) -> None:
    text = render_slurmdbd_conf(
        dbd_port=7019,
        munge_socket=tmp_path / "munge.socket.2",
        log_file=tmp_path / "slurmdbd.log",
        pid_file=tmp_path / "slurmdbd.pid",
        storage_password="s3cret-Pass_word",
    )
    lines = text.splitlines()
    assert "DbdPort=7019" in lines and "StorageHost=localhost" in lines
    assert f"AuthInfo=socket={tmp_path / 'munge.socket.2'}" in lines
    assert "StoragePass=s3cret-Pass_word" in lines
    path = tmp_path / "slurmdbd.conf"
    assert write_slurmdbd_conf(path, text)
    assert path.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        assert not write_slurmdbd_conf(path, text)  # unchanged: no rewrite, no slurmdbd restart
    path.chmod(0o644)
    assert write_slurmdbd_conf(path, text) and path.stat().st_mode & 0o777 == 0o600


def test_mariadb_option_file_keeps_everything_in_its_directory(tmp_path: Path) -> None:
    db = MariaDB(tmp_path / "mariadb")
    text = db.render_config()
    assert "skip-networking" in text.splitlines()  # no TCP port to collide on
    assert f"datadir={db.datadir}" in text and f"socket={db.socket}" in text
    assert db.argv()[1] == f"--defaults-file={db.config}"


def test_missing_mariadb_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevClusterError) as failed:
        MariaDB(tmp_path / "mariadb").check_host()
    assert "mariadb-server mariadb-client" in str(failed.value)
    assert "--no-accounting" in str(failed.value)


def test_mariadb_ready_wants_the_server_greeting(tmp_path: Path) -> None:
    db = MariaDB(tmp_path)
    db.run_dir.mkdir()
    assert not db.ready()  # no socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(db.socket))
        server.listen()

        def greet() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"\x4a\x00\x00\x00\x0a10.11.19-MariaDB\x00")

        thread = threading.Thread(target=greet)
        thread.start()
        assert db.ready()
        thread.join(5)


def test_daemon_recognised_by_its_environment() -> None:
    daemon = Daemon(
        "slurmdbd",
        Path("/x.pid"),
        Path("/x.log"),
        ("slurmdbd", "-D"),
        env=(("SLURM_CONF", "/a/etc/slurm.conf"),),
    )
    assert daemon.matches(["slurmdbd", "-D"])
    assert daemon.environ_matches({"SLURM_CONF": "/a/etc/slurm.conf", "HOME": "/root"})
    assert not daemon.environ_matches({"SLURM_CONF": "/b/etc/slurm.conf"})  # another cluster's
    assert not daemon.environ_matches({})
