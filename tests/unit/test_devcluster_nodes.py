"""The dev cluster's nodes on paper: names, addresses, interface names, the nsenter argv, the pool."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from slurmlink.slurm.devcluster import (
    MAX_COMPUTE_NODES,
    MAX_STORAGE_NODES,
    DevCluster,
    DevClusterError,
    Network,
    node_command,
)
from slurmlink.slurm.devcluster.layout import parse_node_name
from slurmlink.slurm.devcluster.nodes import subnet_pool


def test_layout_names_addresses_and_interfaces(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "dc", compute_nodes=2, storage_nodes=3)
    with pytest.raises(DevClusterError, match="no nodes yet"):
        _ = cluster.nodes
    assert cluster.node_names() == ["compute1", "compute2", "storage1", "storage2", "storage3"]
    assert cluster.node_names("storage") == ["storage1", "storage2", "storage3"]
    network = Network("0a1b2c", ipaddress.IPv4Network("10.213.9.0/24"))
    cluster.network = network
    assert network.bridge == "sl0a1b2cbr" and network.controller_address == "10.213.9.1"
    assert [(n.name, n.role, n.address, n.host_veth) for n in cluster.nodes] == [
        ("compute1", "compute", "10.213.9.101", "sl0a1b2cc1"),
        ("compute2", "compute", "10.213.9.102", "sl0a1b2cc2"),
        ("storage1", "storage", "10.213.9.201", "sl0a1b2cs1"),
        ("storage2", "storage", "10.213.9.202", "sl0a1b2cs2"),
        ("storage3", "storage", "10.213.9.203", "sl0a1b2cs3"),
    ]
    storage2 = cluster.node("storage2")
    assert storage2.mnt_ns == cluster.state_dir / "ns" / "storage2" / "mnt"
    assert storage2.to_json()["net_ns"] == str(cluster.state_dir / "ns" / "storage2" / "net")
    assert [n.name for n in cluster.compute_nodes] == ["compute1", "compute2"]
    with pytest.raises(DevClusterError, match="no node 'compute3'"):
        cluster.node("compute3")
    # The largest clusters still fit: interface names of at most 15 characters, addresses inside the /24.
    assert len(network.host_veth("compute", MAX_COMPUTE_NODES)) <= 15
    assert len(network.host_veth("storage", MAX_STORAGE_NODES)) <= 15
    assert ipaddress.IPv4Address(network.address("storage", MAX_STORAGE_NODES)) in network.subnet
    assert cluster.env()["SLURMLINK_CONTROLLER_ADDRESS"] == "10.213.9.1"


def test_node_counts_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(DevClusterError, match="compute nodes must be 1"):
        DevCluster(tmp_path, compute_nodes=0)
    with pytest.raises(DevClusterError, match="storage nodes must be 0"):
        DevCluster(tmp_path, storage_nodes=MAX_STORAGE_NODES + 1)
    assert DevCluster(tmp_path, storage_nodes=0).node_names() == ["compute1"]


def test_parse_node_name() -> None:
    assert parse_node_name("compute12") == ("compute", 12)
    assert parse_node_name("storage1") == ("storage", 1)
    for name in ("compute", "compute01", "storageX", "login1", "localhost"):
        assert parse_node_name(name) is None


def test_node_command_enters_all_three_namespaces_without_a_shell(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "dc")
    cluster.network = Network("0a1b2c", ipaddress.IPv4Network("10.213.9.0/24"))
    node = cluster.node("compute1")
    ns = cluster.state_dir / "ns" / "compute1"
    enter = ["nsenter", f"--net={ns}/net", f"--uts={ns}/uts", f"--mount={ns}/mnt"]
    assert node_command(node, ["hostname"]) == [*enter, "--", "hostname"]
    assert cluster.node_command(
        "compute1", ["sh", "-c", "echo $X; rm -rf x"], user="u", env={"X": "a b"}
    ) == [
        *enter,
        "--",
        *("runuser", "-u", "u", "--"),
        *("env", "X=a b"),
        *("sh", "-c", "echo $X; rm -rf x"),
    ]
    assert node_command(node, ["pwd"], cwd="/srv") == [*enter, "--wd=/srv", "--", "pwd"]
    for bad in ({"": "x"}, {"A=B": "x"}):
        with pytest.raises(ValueError):
            node_command(node, ["true"], env=bad)
    with pytest.raises(ValueError):
        node_command(node, [])


def test_subnet_pool_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURMLINK_DEV_CLUSTER_SUBNETS", raising=False)
    assert subnet_pool() == ipaddress.IPv4Network("10.213.0.0/16")
    monkeypatch.setenv("SLURMLINK_DEV_CLUSTER_SUBNETS", "172.30.0.0/20")
    assert subnet_pool() == ipaddress.IPv4Network("172.30.0.0/20")
    for bad in ("172.30.0.0/25", "not-a-network", "172.30.0.1/16"):
        monkeypatch.setenv("SLURMLINK_DEV_CLUSTER_SUBNETS", bad)
        with pytest.raises(DevClusterError, match="SLURMLINK_DEV_CLUSTER_SUBNETS"):
            subnet_pool()
