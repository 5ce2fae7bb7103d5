"""The job bridge's small languages: Kubernetes quantities, Slurm time limits, paths inside a job
directory, partition and node names, and how a seed job maps onto a ``slurmlink.io/v1`` spec."""

from __future__ import annotations

import decimal
from typing import Any

import pytest

from slurmlink.resources.bridge.common import relative_path_error
from slurmlink.resources.bridge.fit import misfits, request_of, request_of_script, slurm_mem_mib
from slurmlink.resources.bridge.node import matches, node_labels, node_object
from slurmlink.resources.bridge.partition import node_name, object_name, selection_labels
from slurmlink.resources.bridge.timelimit import TimeLimitError, format_minutes, parse_time_limit
from slurmlink.resources.bridge.wlmjob import bridge_spec, node_selector, results_destination, seed_status
from slurmlink.resources.quantity import QuantityError, format_memory, mebibytes, parse_quantity, whole

GI = 2**30


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4Gi", 4 * GI),
        ("4G", 4 * 10**9),
        ("4096Mi", 4 * GI),
        ("1.5Gi", 3 * 2**29),
        ("512Ki", 512 * 1024),
        ("1k", 1000),
        ("4e9", 4 * 10**9),
        ("4E9", 4 * 10**9),
        ("1E", 10**18),
        ("100m", decimal.Decimal("0.1")),
        ("+5", 5),
        (".5Gi", GI // 2),
        ("5.", 5),
        (4294967296, 4 * GI),
        ("0", 0),
        ("-1Gi", -GI),
    ],
)
def test_quantities_read_as_kubernetes_reads_them(text: int | str, value: int | decimal.Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text", ["4GB", "4K", "4 Gi", "Gi", "", "1.2.3", "4gi", "NaN", "inf", "1e", "0x10", True]
)
def test_what_is_not_a_quantity(text: Any) -> None:
    with pytest.raises(QuantityError, match="quantities must match the regular expression"):
        parse_quantity(text)


def test_memory_reaches_slurm_in_whole_mebibytes_rounded_up() -> None:
    assert mebibytes("4Gi") == 4096
    assert mebibytes("4G") == 3815  # 4e9 / 2^20 = 3814.7
    assert mebibytes(1) == 1
    assert whole("1500m") == 2 and whole("2") == 2
    assert format_memory(4 * GI) == "4Gi" and format_memory("4G") == "4G" and format_memory(1000) == "1000"


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        (30, 30),
        ("30", 30),
        ("30:00", 30),
        ("30:01", 31),  # seconds round up, as Slurm rounds them
        ("0:30", 1),
        ("1:00:00", 60),
        ("100:00:00", 6000),
        ("2-0", 2880),
        ("2-12", 3600),
        ("1-02:30", 1590),
        ("1-02:30:15", 1591),
        ("90m", 90),
        ("2h", 120),
        ("1h30m", 90),
        ("1d12h", 2160),
        ("45s", 1),
        ("UNLIMITED", None),
        ("infinite", None),
        (" 15 ", 15),
    ],
)
def test_time_limits(text: int | str, minutes: int | None) -> None:
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2 hours", "a time limit is"),
        ("soon", "a time limit is"),
        ("", "a time limit is"),
        ("1:60:00", "below 60"),
        ("1-24:00", "below 24"),
        ("10:75", "below 60"),
        (0, "write UNLIMITED"),
        ("0:00", "write UNLIMITED"),
        (-5, "negative"),
        (1.5, "a time limit is"),
        ("1:2:3:4", "a time limit is"),
    ],
)
def test_bad_time_limits(text: Any, why: str) -> None:
    with pytest.raises(TimeLimitError, match=why):
        parse_time_limit(text)


def test_minutes_print_as_slurm_prints_limits() -> None:
    assert [format_minutes(m) for m in (None, 5, 60, 90, 1440, 2160)] == [
        "UNLIMITED",
        "5:00",
        "1:00:00",
        "1:30:00",
        "1-00:00:00",
        "1-12:00:00",
    ]


@pytest.mark.parametrize(
    ("path", "glob", "fine"),
    [
        (".", False, True),
        ("data/in", False, True),
        ("a/./b", False, True),
        ("results/**/*.csv", True, True),
        ("..foo/bar", False, True),  # a name starting with dots is a name
        ("../x", False, False),
        ("a/../../x", False, False),
        ("a/../b", False, False),  # no '..' at all: clearer than judging where it leads
        ("/etc/passwd", False, False),
        ("", False, False),
        ("a\x00b", False, False),
        ("*/../*", True, False),
    ],
)
def test_paths_stay_in_the_job_directory(path: str, glob: bool, fine: bool) -> None:
    assert (relative_path_error(path, glob=glob) is None) is fine


def test_partition_and_node_names_are_dns_labels() -> None:
    assert object_name("GPU_Short") == "gpu-short"
    assert object_name("debug") == "debug"
    assert node_name("minikube", "cpu") == "slurm-minikube-cpu"
    assert node_name("Lab_Cluster", "GPU_Short") == "slurm-lab-cluster-gpu-short"
    assert len(node_name("c", "x" * 100)) == 63
    assert object_name("__") == "partition"


def partition(**spec: Any) -> dict[str, Any]:
    base = {"slurmName": "cpu", "cluster": "minikube"}
    return {
        "metadata": {"name": "cpu", "labels": selection_labels({**base, **spec})},
        "spec": {**base, **spec},
    }


def test_node_labels_leave_out_unlimited_values() -> None:
    limited = node_labels(
        partition(totalNodes=4, maxNodesPerJob=2, maxTime=90, cpusPerNode=8, memoryPerNode="4G")
    )
    assert limited["wlm.sylabs.io/nodes"] == "2"  # most nodes one job may use, as the seed's label
    assert limited["wlm.sylabs.io/wall-time"] == "5400"
    assert limited["wlm.sylabs.io/mem-per-node"] == "3815"
    unlimited = node_labels(partition(totalNodes=4))
    assert unlimited["wlm.sylabs.io/nodes"] == "4"
    assert not any(k.endswith(("wall-time", "mem-per-node", "cpu-per-node")) for k in unlimited)
    assert "0" not in unlimited.values() and "nan" not in unlimited.values()


def test_seed_node_selectors_pick_partitions() -> None:
    cuda = partition(extraFeatures=[{"name": "cuda", "quantity": 10}])
    plain = partition()
    seed = {"spec": {"nodeSelector": {"wlm.sylabs.io/cuda": 10}}}
    assert node_selector(seed) == {"type": "virtual-kubelet", "wlm.sylabs.io/cuda": "10"}
    assert matches(node_selector(seed), cuda) and not matches(node_selector(seed), plain)
    by_host = {"spec": {"nodeSelector": {"kubernetes.io/hostname": "slurm-minikube-cpu"}}}
    assert matches(node_selector(by_host), plain)
    node = node_object(cuda)
    assert node["metadata"]["name"] == "slurm-minikube-cpu"
    assert node["status"]["conditions"][0]["status"] == "Unknown"  # no state reported yet


def test_seed_job_maps_onto_a_v1_spec() -> None:
    job = {
        "spec": {
            "batch": "#!/bin/sh\necho Hello\n",
            "prepare": {"to": ".", "mount": {"name": "inputs", "hostPath": {"path": "/home/docker/inputs"}}},
            "results": {
                "from": "bar/",
                "mount": {"name": "outputs", "hostPath": {"path": "/home/docker/outputs"}},
            },
        }
    }
    assert bridge_spec(job, ["cpu"]) == {
        "script": "#!/bin/sh\necho Hello\n",
        "partition": "cpu",
        "inputs": [{"path": "/home/docker/inputs", "to": ".", "name": "inputs"}],
        "outputs": ["bar", "bar/**"],
    }
    assert bridge_spec(job, ["a", "b"])["partitions"] == ["a", "b"]
    assert "partition" not in bridge_spec(job, [])
    assert results_destination(job) == "/home/docker/outputs/bar"
    assert results_destination({"spec": {"batch": "x"}}) is None


def test_seed_status_follows_the_phase() -> None:
    assert [seed_status(p) for p in ("Pending", "Staging", "Queued", "Running", "Collecting")] == [
        "Pending",
        "Pending",
        "Pending",
        "Running",
        "Running",
    ]
    assert [seed_status(p) for p in ("Succeeded", "Failed", "Cancelled", "Unknown", None)] == [
        "Succeeded",
        "Failed",
        "Failed",
        "Unknown",
        "Pending",
    ]


def test_sbatch_lines_are_read_as_sbatch_reads_them() -> None:
    script = (
        "#!/bin/bash\n"
        "# a comment\n"
        "\n"
        "#SBATCH -N 2-4 # total number of nodes\n"
        "#SBATCH --time=1-00:00:00 --mem 4G\n"
        "#SBATCH -c4 --ntasks-per-node=2\n"
        "srun hostname\n"
        "#SBATCH --nodes=99\n"
    )
    req = request_of_script(script)
    assert req.nodes == (2, "spec.batch")  # the minimum of a range, as the seed took it
    assert req.minutes == (1440, "spec.batch")
    assert req.memory_mib == (4096, "spec.batch")  # --mem=4G is Slurm's 4 GiB, where the seed failed
    assert req.cpus_per_node == (8, "spec.batch")


@pytest.mark.parametrize(
    ("text", "mib"),
    [("2048", 2048), ("4G", 4096), ("4g", 4096), ("1T", 2**20), ("512K", 1), ("0", None), ("lots", None)],
)
def test_slurm_memory_units(text: str, mib: int | None) -> None:
    assert slurm_mem_mib(text) == mib


def test_unlimited_partitions_refuse_nothing() -> None:
    unlimited = {"spec": {"slurmName": "long", "cluster": "c"}}
    req = request_of(
        {
            "account": "a",
            "resources": {"nodes": 500, "timeLimit": "UNLIMITED", "memoryPerNode": "1Ei", "cpusPerTask": 64},
        }
    )
    assert misfits(req, unlimited) == []
    limited = {
        "spec": {
            "slurmName": "debug",
            "cluster": "c",
            "maxNodesPerJob": 2,
            "totalNodes": 1,
            "allowedAccounts": [],
        }
    }
    found = {c.field: c.message for c in misfits(req, limited)}
    assert (
        found["spec.resources.nodes"]
        == 'Invalid value: 500: partition "debug" allows at most 2 nodes per job'
    )
    assert "does not allow it (allowed: none)" in found["spec.account"]
    gone = {"spec": {"slurmName": "old"}, "status": {"state": "GONE"}}
    assert "no longer exists" in misfits(req, gone)[0].message
