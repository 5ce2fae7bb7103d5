"""slurm.conf is read as Slurm reads it: one reader for the dev cluster, the installer and the commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmlink.slurm import slurmconf
from slurmlink.slurm.commands import read_conf_value
from slurmlink.slurm.devcluster.config import changed_keys

CONF = """\
# Comments and blank lines are skipped.

clustername=one   # a trailing comment
SlurmctldPort=6817 SlurmdPort=6818
SchedulerParameters="bf_interval=2,sched_min_interval=100000"
NodeName=n[1-2] CPUs=4 \\
    RealMemory=1000
NodeName = n3  CPUs=8
PartitionName=debug Nodes=ALL Default=YES
MailProg=/bin/echo\\#not-a-comment
ClusterName=two
"""


def test_keys_are_case_insensitive_and_the_last_value_wins() -> None:
    entries = slurmconf.parse(CONF)
    assert slurmconf.values(entries, "CLUSTERNAME") == ["one", "two"]
    assert slurmconf.value(entries, "ClusterName") == "two"
    assert slurmconf.value(entries, "SlurmdPort") == "6818"  # several pairs on one line
    assert slurmconf.value(entries, "SchedulerParameters") == "bf_interval=2,sched_min_interval=100000"
    assert slurmconf.value(entries, "MailProg") == "/bin/echo#not-a-comment"
    assert slurmconf.value(entries, "AuthType", "auth/munge") == "auth/munge"


def test_record_lines_repeat_and_continue_over_backslash_newline() -> None:
    nodes = [e for e in slurmconf.parse(CONF) if e.key == "nodename"]
    assert [(n.value, n.attributes, n.line) for n in nodes] == [
        ("n[1-2]", {"cpus": "4", "realmemory": "1000"}, 6),
        ("n3", {"cpus": "8"}, 8),
    ]
    assert slurmconf.values(slurmconf.parse(CONF), "CPUs") == []  # attributes, not settings


def test_include_is_read_in_place_relative_to_slurm_conf(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "bb.conf").write_text("BurstBufferType=burst_buffer/lua\n")
    (tmp_path / "conf.d" / "nodes.conf").write_text("NodeName=n9 CPUs=2\n")
    conf = tmp_path / "slurm.conf"
    conf.write_text("BurstBufferType=burst_buffer/none\nInclude conf.d/*.conf\nclustername=x\n")
    entries = slurmconf.read(conf)
    assert slurmconf.value(entries, "BurstBufferType") == "burst_buffer/lua"
    assert [e.source for e in entries if e.key == "nodename"] == [tmp_path / "conf.d" / "nodes.conf"]
    assert read_conf_value(conf, "burstbuffertype") == "burst_buffer/lua"

    conf.write_text("include missing.conf\n")
    with pytest.raises(slurmconf.SlurmConfError, match=r"missing\.conf"):
        slurmconf.read(conf)
    assert slurmconf.read_value(conf, "ClusterName", "default") == "default"


def test_line_keys_and_changed_keys_for_the_dev_cluster() -> None:
    assert slurmconf.line_keys("  # SlurmUser=root") == set()
    assert slurmconf.line_keys("SlurmctldPort=1 SlurmdPort=2") == {"slurmctldport", "slurmdport"}
    assert slurmconf.line_keys("NodeName=n1 CPUs=4") == {"nodename"}
    old = "SlurmctldPort=1\nNodeName=n1 CPUs=4\nMinJobAge=300\n"
    new = "slurmctldport=1\nNodeName=n1 CPUs=8\nMinJobAge=300\n"
    assert changed_keys(old, new) == {"slurmctldport", "nodename"}
