"""File-system driver pieces that need no root: records, names, runners, errors, glusterd's volfile."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from slurmlink.storage.filesystems import (
    DRIVERS,
    Allocation,
    CommandError,
    FileSystem,
    MissingToolError,
    Mount,
    NodeRunner,
    StateError,
    StorageNode,
    driver,
    options_from_profile,
    static_runners,
)
from slurmlink.storage.filesystems.glusterd import Glusterd, parse_peers
from slurmlink.storage.filesystems.loop import MIB, round_size


def test_allocation_rules() -> None:
    Allocation("job-12_scratch", 1, 1000, 1000)
    for name in ("", "-x", "Upper", "a/b", "a.b", "x" * 64):
        with pytest.raises(StateError, match="allocation name"):
            Allocation(name, MIB, 1000, 1000)
    with pytest.raises(StateError, match="capacity must be positive"):
        Allocation("a", 0, 1000, 1000)
    with pytest.raises(StateError, match="permission mode"):
        Allocation("a", 1, 1000, 1000, mode=0o10000)


def test_paths_must_be_absolute_and_normalised() -> None:
    for path in ("relative", "/", "/a/../b", "/a//b", "/a/"):
        with pytest.raises(StateError):
            StorageNode("s1", path)
        with pytest.raises(StateError):
            Mount("c1", path)
    assert StorageNode("s1", "/pool").node_state_dir == "/pool/.node"
    assert StorageNode("s1", "/pool", state_dir="/state").node_state_dir == "/state"


def test_record_round_trip() -> None:
    fs = FileSystem(
        "gluster",
        Allocation("vol", 64 * MIB, 1001, 1002, 0o750),
        (StorageNode("s1", "/p1", "10.0.0.2"), StorageNode("s2", "/p2", "10.0.0.3", "/state")),
        "ready",
        {"volume": "vol", "bricks": [{"node": "s1"}]},
    )
    assert FileSystem.from_json(fs.to_json()) == fs
    with pytest.raises(StateError, match="version"):
        FileSystem.from_json({**fs.to_json(), "version": 99})


def test_registry() -> None:
    assert sorted(DRIVERS) == ["dir", "gluster", "raw", "xfs"]
    assert driver("raw").type == "raw"
    with pytest.raises(StateError, match="known: dir, gluster, raw, xfs"):
        driver("lustre")


def test_runner_prefix_and_errors() -> None:
    runner = NodeRunner("n1", prefix=("env", "FOO=bar"))
    assert runner.command(["printenv", "FOO"]) == ["env", "FOO=bar", "printenv", "FOO"]
    assert runner.run(["printenv", "FOO"]).stdout == "bar\n"
    wrapped = NodeRunner("n1", wrap=lambda argv: ["env", "FOO=baz", *argv])
    assert wrapped.run(["printenv", "FOO"]).stdout == "baz\n"
    with pytest.raises(MissingToolError, match="no-such-tool not found on node n1"):
        runner.run(["no-such-tool", "-V"])
    with pytest.raises(
        MissingToolError, match=r"mkfs\.xfs not found on node n2: install the Debian package xfsprogs"
    ):
        NodeRunner("n2", env={"PATH": "/nonexistent"}).run(["mkfs.xfs", "-V"])
    with pytest.raises(
        CommandError, match=r"on node n1: `sh -c echo oops >&2; exit 3` failed with exit code 3: oops"
    ):
        runner.run(["sh", "-c", "echo oops >&2; exit 3"])
    assert runner.run(["false"], check=False).returncode == 1
    with pytest.raises(CommandError, match="timed out"):
        runner.run(["sleep", "5"], timeout=0.2)


def test_static_runners() -> None:
    lookup = static_runners({"a": NodeRunner("a")})
    assert lookup("a").name == "a"
    with pytest.raises(StateError, match="no runner for node 'b'"):
        lookup("b")


def test_glusterd_volfile_is_per_node() -> None:
    glusterd = Glusterd(StorageNode("s1", "/pool", "10.0.0.2", "/state/s1"), NodeRunner("s1"))
    text = glusterd.volfile_text()
    for option in (
        "option working-directory /state/s1/glusterd/work",
        "option run-directory /state/s1/glusterd/run",
        "option logging-directory /state/s1/glusterd/log",
        "option glusterd-sockfile /state/s1/glusterd/run/glusterd.socket",
        # glusterd 10 fails every peer probe without these:
        "option transport.socket.keepalive-time 10",
        "option transport.socket.keepalive-interval 2",
    ):
        assert option in text
    assert text.startswith("volume management\n    type mgmt/glusterd\n") and text.endswith("end-volume\n")
    assert (
        glusterd.layout.brick_log("/pool/v/mnt/brick") == "/state/s1/glusterd/log/bricks/pool-v-mnt-brick.log"
    )


def test_parse_peers() -> None:
    root = ET.fromstring(
        "<cliOutput><opRet>0</opRet><peerStatus>"
        "<peer><hostname>10.0.0.3</hostname><hostnames><hostname>st2</hostname></hostnames>"
        "<connected>1</connected><stateStr>Peer in Cluster</stateStr></peer>"
        "<peer><hostname>localhost</hostname><connected>1</connected></peer>"
        "</peerStatus></cliOutput>"
    )
    peers = parse_peers(root)
    assert peers["10.0.0.3"] == peers["st2"] == (True, "Peer in Cluster")
    assert peers["localhost"] == (True, "")


def test_round_size() -> None:
    assert round_size(1) == 16 * MIB
    assert round_size(64 * MIB) == 64 * MIB
    assert round_size(64 * MIB + 1) == 65 * MIB


def test_options_from_profile() -> None:
    xfs = options_from_profile("xfs", {"mkfsOptions": ["-i", "maxpct=5"], "mountOptions": ["noatime"]})
    assert xfs.mkfs_options == ("-i", "maxpct=5") and xfs.mount_options == ("noatime",)
    assert options_from_profile("xfs", None).mount_options == ("nodev", "nosuid")
    gluster = options_from_profile("gluster", {"volumeOptions": {"b": "2", "a": "1"}})
    assert gluster.volume_options == (("a", "1"), ("b", "2")) and gluster.mount_options == ("nodev", "nosuid")
    assert options_from_profile("raw", {"mountOptions": []}).mount_options == ()
    with pytest.raises(StateError):
        options_from_profile("lustre", {})
