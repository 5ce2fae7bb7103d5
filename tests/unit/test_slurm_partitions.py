"""Partition discovery's parsers, on outputs captured from Slurm 22.05 (tests/unit/data/partitions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from slurmlink.cli.slurm_partitions_cmd import table_rows
from slurmlink.slurm.hostlist import HostlistError, expand_hostlist
from slurmlink.slurm.limits import LimitError, parse_count, parse_memory_mib, parse_minutes
from slurmlink.slurm.partition_config import (
    PartitionConfigError,
    load_partition_config,
    parse_partition_config,
)
from slurmlink.slurm.partitions import (
    ExtraFeature,
    Partition,
    PartitionDiscoveryError,
    default_partition,
    parse_partitions,
    parse_scontrol_partitions,
    parse_sinfo_nodes,
)

DATA = Path(__file__).parent / "data" / "partitions"
LIMIT_FIELDS = (
    "max_time",
    "default_time",
    "max_nodes",
    "max_cpus_per_node",
    "max_memory_per_node",
    "max_memory_per_cpu",
    "default_memory_per_node",
    "default_memory_per_cpu",
)


@pytest.fixture(scope="module")
def captured() -> dict[str, Partition]:
    scontrol = (DATA / "scontrol-show-partition.txt").read_text()
    sinfo = (DATA / "sinfo-nodes.txt").read_text()
    return {partition.name: partition for partition in parse_partitions(scontrol, sinfo)}


def test_unlimited_partition_has_nulls_never_zero_or_nan(captured: dict[str, Partition]) -> None:
    open_ = captured["open"]
    assert open_.default and open_.up and not open_.hidden
    assert open_.nodes == ("compute1", "compute2")
    assert (open_.total_nodes, open_.total_cpus, open_.cpus_per_node, open_.memory_per_node) == (
        2,
        4,
        2,
        23081,
    )
    for name in LIMIT_FIELDS:
        assert getattr(open_, name) is None, name
    assert open_.allowed_accounts is None and open_.allowed_qos is None and open_.allowed_groups is None
    data = open_.to_json()
    assert data["max_time"] is None and data["max_memory_per_node"] is None
    # Nothing that means "no limit" comes out as 0 or NaN anywhere.
    for partition in captured.values():
        for name in LIMIT_FIELDS:
            value = getattr(partition, name)
            assert value is None or (value > 0 and not math.isnan(value)), (partition.name, name, value)
    json.dumps([p.to_json() for p in captured.values()], allow_nan=False)


def test_limited_partitions(captured: dict[str, Partition]) -> None:
    short = captured["short"]
    assert (short.max_time, short.default_time, short.max_nodes) == (30, 10, 1)
    assert (short.max_memory_per_node, short.max_memory_per_cpu) == (2048, None)
    assert short.allowed_accounts == ("physics", "chemistry") and short.allowed_qos is None
    assert not short.default

    gpu = captured["GPU_Short"]
    assert gpu.nodes == ("compute2",) and gpu.total_nodes == 1 and gpu.total_cpus == 2
    assert (gpu.max_time, gpu.max_memory_per_cpu, gpu.default_memory_per_cpu) == (2 * 24 * 60, 1024, 512)
    assert gpu.max_memory_per_node is None
    assert gpu.features == ("gpu", "cuda") and gpu.features_on_some_nodes == ()
    assert gpu.allowed_qos == ("normal",)
    # The captured job holds one of compute2's two CPUs.
    assert (gpu.allocated_cpus, gpu.idle_cpus, gpu.other_cpus) == (1, 1, 0)
    # A partition over both nodes: the feature is on one of them only.
    assert captured["open"].features == () and captured["open"].features_on_some_nodes == ("gpu", "cuda")
    assert (captured["open"].allocated_cpus, captured["open"].idle_cpus) == (1, 3)

    maint = captured["maint"]
    assert (maint.hidden, maint.state, maint.up) == (True, "DRAIN", False)
    assert maint.default_memory_per_node == 1000 and maint.max_time is None


def test_slurms_unlimited_memory_quirk_reads_as_no_limit(captured: dict[str, Partition]) -> None:
    """slurm.conf's MaxMemPerNode=UNLIMITED comes back as MaxMemPerCPU=9223372036854775807."""
    assert "MaxMemPerCPU=9223372036854775807" in (DATA / "scontrol-show-partition.txt").read_text()
    quirk = captured["memquirk"]
    assert (quirk.max_memory_per_cpu, quirk.max_memory_per_node, quirk.max_time) == (None, None, 60)


def test_default_partition_and_order(captured: dict[str, Partition]) -> None:
    assert list(captured) == ["open", "short", "GPU_Short", "maint", "memquirk"]
    found = default_partition(captured.values())
    assert found is not None and found.name == "open"
    assert default_partition([captured["short"]]) is None


def test_sinfo_nodes_are_read_once() -> None:
    nodes = parse_sinfo_nodes((DATA / "sinfo-nodes.txt").read_text())
    assert sorted(nodes) == ["compute1", "compute2"]
    assert nodes["compute2"].features == ("gpu", "cuda") and nodes["compute2"].gres == ()
    assert (nodes["compute2"].cpus, nodes["compute2"].memory) == (2, 23081)


def test_parsers_refuse_what_they_do_not_understand() -> None:
    assert parse_scontrol_partitions("No partitions in the system\n") == []
    with pytest.raises(PartitionDiscoveryError, match="unexpected line"):
        parse_scontrol_partitions("scontrol: error: something\n")
    with pytest.raises(PartitionDiscoveryError, match="unexpected line from sinfo"):
        parse_sinfo_nodes("compute1|debug|2\n")
    with pytest.raises(PartitionDiscoveryError, match="A/I/O/T"):
        parse_sinfo_nodes("compute1|debug|2|100|(null)|(null)|2/0\n")
    with pytest.raises(PartitionDiscoveryError, match="MaxTime"):
        parse_partitions("PartitionName=p MaxTime=soon Nodes=n1\n", "")


def test_gres_and_partial_node_information() -> None:
    scontrol = "PartitionName=gpu Nodes=g[01-02],g04 State=UP TotalNodes=3 TotalCPUs=24 MaxTime=1-00:00:00\n"
    sinfo = (
        "g01|gpu|8|64000|a100|gpu:a100:4(S:0-1)|4/4/0/8\ng02|gpu|8|32000|a100,ib|gpu:a100:4(S:0-1)|0/0/8/8\n"
    )
    (partition,) = parse_partitions(scontrol, sinfo)
    assert partition.nodes == ("g01", "g02", "g04")
    assert (partition.cpus_per_node, partition.memory_per_node) == (8, 32000)  # the smallest node
    assert partition.features == ("a100",) and partition.features_on_some_nodes == ("ib",)
    assert partition.gres == ("gpu:a100:4(S:0-1)",)
    assert (partition.allocated_cpus, partition.idle_cpus, partition.other_cpus) == (4, 4, 8)
    assert partition.max_time == 24 * 60


def test_table_shows_unlimited_not_zero(captured: dict[str, Partition]) -> None:
    headers, rows = table_rows(list(captured.values()))
    row = dict(zip(headers, rows[0], strict=True))
    assert row["PARTITION"] == "open*"
    assert (row["MAXTIME"], row["MAXNODES"], row["MAXMEM"], row["DEFAULTTIME"]) == (
        "UNLIMITED",
        "UNLIMITED",
        "UNLIMITED",
        "NONE",
    )
    gpu = dict(zip(headers, rows[2], strict=True))
    assert (gpu["MAXTIME"], gpu["MAXMEM"], gpu["CPUS(A/I/O)"]) == ("2-00:00:00", "1024M/cpu", "1/1/0")


# ---------------------------------------------------------------------------- limits and host lists


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("NONE", None),
        ("-1", None),
        ("30", 30),
        ("00:30:00", 30),
        ("30:00", 30),
        ("30:01", 31),  # seconds round up, as Slurm rounds them
        ("2-00:00:00", 2880),
        ("1-12", 36 * 60),
        ("1-00:30", 24 * 60 + 30),
        ("0", 0),
    ],
)
def test_parse_minutes(text: str, minutes: int | None) -> None:
    assert parse_minutes(text) == minutes


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("1000", 1000),
        ("4G", 4096),
        ("4GiB", 4096),
        ("512M", 512),
        ("1T", 1024 * 1024),
        ("1536K", 2),
        ("UNLIMITED", None),
        ("9223372036854775807", None),
        ("18446744073709551615", None),
    ],
)
def test_parse_memory(text: str, mib: int | None) -> None:
    assert parse_memory_mib(text) == mib


def test_limit_errors_say_what_is_accepted() -> None:
    with pytest.raises(LimitError, match="D-HH"):
        parse_minutes("tomorrow")
    with pytest.raises(LimitError, match="K, M, G or T"):
        parse_memory_mib("4X")
    with pytest.raises(LimitError, match="whole number or UNLIMITED"):
        parse_count("-3")
    assert parse_count("UNLIMITED") is None and parse_count("4294967294") is None


def test_expand_hostlist() -> None:
    assert expand_hostlist("compute[1-3,7],login1") == [
        "compute1",
        "compute2",
        "compute3",
        "compute7",
        "login1",
    ]
    assert expand_hostlist("gpu[01-03]") == ["gpu01", "gpu02", "gpu03"]
    assert expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert expand_hostlist("(null)") == [] and expand_hostlist("") == []
    for bad in ("n[1-", "n]1", "n[a-b]", "n[3-1]", "n[1-99999999]"):
        with pytest.raises(HostlistError):
            expand_hostlist(bad)


# ------------------------------------------------------------------------------ admin overrides


def test_partition_config_applies_overrides_and_extra_features(captured: dict[str, Partition]) -> None:
    config = parse_partition_config(
        """
        [partition.GPU_Short]
        extra_features = [{name = "cuda", version = "10", quantity = 1}, {name = "nvidia-gpu"}]
        total_nodes = 4
        memory_per_node = "32G"
        max_time = "UNLIMITED"

        [partition.open]
        hidden = true
        cpus_per_node = 0      # red-box's "take Slurm's value"

        [partition.gone]
        hidden = true
        """
    )
    applied = {p.name: p for p in config.apply(captured.values())}
    gpu = applied["GPU_Short"]
    assert gpu.extra_features == (ExtraFeature("cuda", "10", 1), ExtraFeature("nvidia-gpu", None, 1))
    assert [f.key for f in gpu.extra_features] == ["cuda_10", "nvidia-gpu"]
    assert (gpu.total_nodes, gpu.memory_per_node, gpu.max_time) == (4, 32768, None)
    assert applied["open"].hidden and applied["open"].cpus_per_node == 2
    assert applied["short"] == captured["short"]
    assert config.unknown(captured.values()) == ["gone"]
    assert gpu.to_json()["extra_features"][0] == {"name": "cuda", "version": "10", "quantity": 1}


def test_partition_config_takes_red_box_keys(tmp_path: Path, captured: dict[str, Partition]) -> None:
    path = tmp_path / "partitions.toml"
    path.write_text(
        """
        [partition.short]
        nodes = 10
        cpu_per_node = 8
        mem_per_node = 2048
        wall_time = "1h30m"
        auto_cpu_per_node = true
        additional_features = [{name = "nvidia-gpu", version = "2080ti-cuda-7.0", quantity = 20}]
        """
    )
    short = load_partition_config(path).apply([captured["short"]])[0]
    assert (short.total_nodes, short.cpus_per_node, short.memory_per_node, short.max_time) == (
        10,
        2,
        2048,
        90,
    )
    assert short.extra_features[0].key == "nvidia-gpu_2080ti-cuda-7.0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[partition.p]\nadditional_feautres = []\n", "unknown key.*additional_feautres"),
        ('[partition.p]\nmax_time = "soon"\n', r"partition\.p\.max_time: 'soon' is not a Slurm time"),
        ('[partition.p]\nextra_features = [{version = "10"}]\n', "name None"),
        ('[partition.p]\nextra_features = [{name = "a b"}]\n', "letters, digits"),
        ('[partition.p]\nhidden = "yes"\n', "true or false"),
        ("[partition.p]\nnodes = 2\ntotal_nodes = 3\n", "given twice"),
        ("[partitions.p]\n", "unknown table"),
        ("[partition.p\n", "not valid TOML"),
    ],
)
def test_partition_config_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(PartitionConfigError, match=message):
        parse_partition_config(text, "f.toml")
