"""The dev cluster's ``--partition`` specs and ``--cluster-name``: parsing, checks, slurm.conf rendering."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurmlink.bank.bootstrap import quickstart_rate_card
from slurmlink.bank.ratecard import load_rate_card
from slurmlink.cli.main import main
from slurmlink.slurm.devcluster import DevCluster, DevClusterError, Network
from slurmlink.slurm.devcluster.config import NODE_FEATURES_KEY, RESTART_KEYS, changed_keys
from slurmlink.slurm.devcluster.layout import SETTINGS_FILE
from slurmlink.slurm.devcluster.partitions import (
    PartitionSpec,
    PartitionSpecError,
    default_partition_name,
    node_features,
    parse_partitions,
    partition_lines,
)

NODES = ["compute1", "compute2", "compute3"]


def test_spec_parses_keys_in_any_case_and_lists_with_commas() -> None:
    spec = PartitionSpec.parse(
        "GPU_Short:nodes=compute2,compute3,maxtime=2-00:00:00,MaxNodes=1,MaxMemPerNode=4G,"
        "DefMemPerNode=1000,AllowAccounts=physics,chemistry,AllowQos=ALL,Features=gpu,cuda,state=drain"
    )
    assert spec.name == "GPU_Short"
    assert spec.nodes == ("compute2", "compute3")
    assert (spec.max_time, spec.max_nodes, spec.max_mem_per_node, spec.def_mem_per_node) == (
        2880,
        1,
        4096,
        1000,
    )
    assert spec.allow_accounts == ("physics", "chemistry") and spec.allow_qos is None
    assert spec.features == ("gpu", "cuda") and spec.state == "DRAIN"
    assert PartitionSpec.parse(spec.to_text()) == spec
    assert PartitionSpec.parse("debug").to_text() == "debug"


def test_unlimited_values_are_left_out_of_slurm_conf() -> None:
    spec = PartitionSpec.parse("open:MaxTime=UNLIMITED,MaxNodes=UNLIMITED,MaxMemPerNode=UNLIMITED")
    assert (spec.max_time, spec.max_nodes, spec.max_mem_per_node) == (None, None, None)
    # MaxMemPerNode=UNLIMITED would come back from Slurm 22.05 as MaxMemPerCPU=9223372036854775807.
    assert partition_lines([spec], NODES) == [
        "PartitionName=open Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "partition name"),
        ("a b", "partition name"),
        ("default", "DEFAULT is not a partition name"),
        ("p:MaxTme=30", "unknown key 'MaxTme'"),
        ("p:MaxTime=30,MaxTime=40", "MaxTime is given twice"),
        ("p:MaxTime=soon", "MaxTime: 'soon' is not a Slurm time"),
        ("p:DefaultTime=UNLIMITED", "give a time"),
        ("p:MaxTime=30,DefaultTime=60", "DefaultTime exceeds MaxTime"),
        ("p:MaxNodes=0", "0 is not a limit"),
        ("p:MaxNodes=two", "not a count"),
        ("p:MaxMemPerNode=1G,MaxMemPerCPU=100", "not both"),
        ("p:DefMemPerCPU=200,MaxMemPerCPU=100", "DefMemPerCPU exceeds MaxMemPerCPU"),
        ("p:MaxMemPerNode=lots", "not a memory size"),
        ("p:Default=maybe", "not one of YES, NO"),
        ("p:State=OPEN", "not one of UP, DOWN, DRAIN, INACTIVE"),
        ("p:Nodes=0", "at least one node"),
        ("p:Nodes=compute[1-", "unbalanced"),
        ("p:AllowAccounts=a b", "letters, digits"),
        ("p:MaxTime=", "MaxTime has no value"),
        ("p:compute1", "is not Key=Value"),
    ],
)
def test_spec_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PartitionSpecError, match=message):
        PartitionSpec.parse(text)


def test_partitions_are_checked_together() -> None:
    with pytest.raises(PartitionSpecError, match="must differ"):
        parse_partitions(["gpu", "GPU"])
    with pytest.raises(PartitionSpecError, match="only one partition can say Default=YES"):
        parse_partitions(["a:Default=YES", "b:Default=YES"])
    with pytest.raises(PartitionSpecError, match="at least one partition"):
        parse_partitions([])
    with pytest.raises(PartitionSpecError, match="Nodes=4, but the cluster has 3"):
        partition_lines(parse_partitions(["p:Nodes=4"]), NODES)
    with pytest.raises(PartitionSpecError, match="no compute node compute9"):
        partition_lines(parse_partitions(["p:Nodes=compute9"]), NODES)


def test_default_is_the_first_unless_one_says_so() -> None:
    assert default_partition_name(parse_partitions(["a", "b"])) == "a"
    assert default_partition_name(parse_partitions(["a", "b:Default=YES"])) == "b"
    assert default_partition_name(parse_partitions(["a:Default=NO", "b"])) is None
    lines = partition_lines(parse_partitions(["a", "b:Default=YES"]), NODES)
    assert ["Default=YES" in line for line in lines] == [False, True]


def test_lines_nodes_features_and_bank_default_time() -> None:
    specs = parse_partitions(
        [
            "open:MaxTime=UNLIMITED",
            "short:Nodes=2,MaxTime=30,MaxNodes=1,Features=fast",
            "GPU_Short:Nodes=compute[2-3],MaxTime=120,DefaultTime=5,Features=gpu,fast,Hidden=YES",
        ]
    )
    assert partition_lines(specs, NODES, default_time=60) == [
        "PartitionName=open Nodes=ALL Default=YES DefaultTime=60 MaxTime=INFINITE State=UP",
        # The bank's hour, capped at the partition's MaxTime.
        "PartitionName=short Nodes=compute1,compute2 DefaultTime=30 MaxTime=30 MaxNodes=1 State=UP",
        "PartitionName=GPU_Short Nodes=compute2,compute3 DefaultTime=5 MaxTime=120 Hidden=YES State=UP",
    ]
    assert node_features(specs, NODES) == {
        "compute1": ("fast",),
        "compute2": ("fast", "gpu"),
        "compute3": ("gpu", "fast"),
    }


def _rendered(tmp_path: Path, **kwargs: object) -> DevCluster:
    cluster = DevCluster(tmp_path / "dc", ctld_port=7001, slurmd_port=7002, compute_nodes=2, **kwargs)  # type: ignore[arg-type]
    cluster.network = Network("0a0b0c", ipaddress.IPv4Network("10.213.7.0/24"))
    return cluster


def test_default_cluster_renders_the_debug_partition_as_before(tmp_path: Path) -> None:
    cluster = _rendered(tmp_path)
    conf = cluster.render_slurm_conf(None)
    assert "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" in conf.splitlines()
    assert "EnforcePartLimits=ANY" in conf.splitlines()
    assert "Features=" not in conf
    assert cluster.default_partition == "debug"
    with_bank = cluster.render_slurm_conf(None, partition_default_time=60)
    assert "PartitionName=debug Nodes=ALL Default=YES DefaultTime=60 MaxTime=INFINITE State=UP" in with_bank


def test_features_change_reconfigures_and_partitions_are_saved(tmp_path: Path) -> None:
    cluster = _rendered(
        tmp_path, partitions=["open", "gpu:Nodes=compute2,Features=gpu"], cluster_name="Parts"
    )
    assert cluster.cluster_name == "parts"
    cluster.render_config(None)
    before = cluster.slurm_conf.read_text()
    assert "NodeName=compute2 NodeAddr=10.213.7.102 NodeHostname=compute2" in before
    assert " Features=gpu State=UNKNOWN" in before

    changed = _rendered(
        tmp_path,
        partitions=["open", "gpu:Nodes=compute2,Features=gpu,cuda", "new:MaxTime=5"],
        cluster_name="parts",
    )
    keys = changed.render_config(None)
    # Partitions and node features take a reconfigure, not a restart.
    assert keys == {"partitionname", NODE_FEATURES_KEY} and not keys & RESTART_KEYS
    assert "nodename" in changed_keys(before, before.replace("CPUs=", "CPUs=1"))  # anything else: restart

    changed._save_settings()
    saved = json.loads((changed.state_dir / SETTINGS_FILE).read_text())
    assert saved["partitions"] == ["open", "gpu:Nodes=compute2,Features=gpu,cuda", "new:MaxTime=5"]
    again = DevCluster.from_state_dir(changed.state_dir)
    assert again.partitions == changed.partitions
    assert DevCluster.from_state_dir(changed.state_dir, partitions=["x"]).partitions == parse_partitions(
        ["x"]
    )


def test_cluster_checks_names_and_nodes(tmp_path: Path) -> None:
    with pytest.raises(DevClusterError, match="cluster name"):
        DevCluster(tmp_path, cluster_name="bad name")
    with pytest.raises(DevClusterError, match="Nodes=3, but the cluster has 1"):
        DevCluster(tmp_path, partitions=["p:Nodes=3"])


@pytest.mark.parametrize("command", [["dev-cluster", "up"], ["quickstart", "up"]])
def test_cli_refuses_bad_specs_before_doing_anything(command: list[str], tmp_path: Path) -> None:
    where = ["--state-dir", str(tmp_path / "d")]
    result = CliRunner().invoke(main, [*command, *where, "--partition", "short:MaxTime=soon"])
    assert result.exit_code == 2
    assert (
        "Invalid value for '--partition'" in result.output and "'soon' is not a Slurm time" in result.output
    )
    result = CliRunner().invoke(main, [*command, *where, "--cluster-name", "no spaces please"])
    assert result.exit_code == 2 and "Invalid value for '--cluster-name'" in result.output
    assert not (tmp_path / "d").exists()


def test_quickstart_rate_card_prices_every_partition() -> None:
    version, text = quickstart_rate_card({"debug": 60}, "debug", 4)
    assert version == "quickstart-1"
    assert tomllib.loads(text)["partition"]["debug"]["default"] is True
    version, text = quickstart_rate_card({"open": 60, "short": 30, "GPU_Short": 60}, "open", 4)
    assert version.startswith("quickstart-1-")
    card = load_rate_card(text)
    assert card.version == version
    assert set(card.partitions) == {"open", "short", "GPU_Short"}
    assert card.partitions["short"].default_time == 30
    assert quickstart_rate_card({"open": 60, "short": 30}, "open", 4)[0] != version
