"""slurm.conf and the files next to it (burst_buffer.lua/.conf), rendered for one dev cluster.

Rendering is deterministic, so ``up`` can tell what changed and skip a reconfigure (which delays the
next burst buffer job's stage-in by 10+ s) when nothing did.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from slurmlink.slurm.devcluster import slurmdbd
from slurmlink.slurm.devcluster.errors import DevClusterError
from slurmlink.slurm.devcluster.layout import CONTROLLER_NAME, Layout, Network
from slurmlink.slurm.devcluster.partitions import PartitionSpec, node_features, partition_lines
from slurmlink.slurm.slurmconf import line_keys, pairs

# Keys whose change a running slurmctld/slurmd cannot pick up with "scontrol reconfigure".
RESTART_KEYS = frozenset(
    {
        "clustername",
        "slurmctldport",
        "slurmdport",
        "authinfo",
        "authtype",
        "statesavelocation",
        "burstbuffertype",
        # job_submit plugins are loaded when slurmctld starts.
        "jobsubmitplugins",
        # Slurm 22.05 adds or removes nodes only on a restart; the rest are read at start-up.
        "nodename",
        "slurmctldhost",
        "slurmdpidfile",
        "slurmdlogfile",
        "slurmdspooldir",
        # Accounting on or off: slurmctld loads its storage plugin, slurmd its gather plugin, at start-up.
        "accountingstoragetype",
        "accountingstoragehost",
        "accountingstorageport",
        "accountingstoragepass",
        "accountingstorageenforce",
        "jobacctgathertype",
    }
)


@dataclass(frozen=True)
class BurstBufferSetup:
    """A burst buffer plugin: the ``burst_buffer.lua`` (lua only) and ``burst_buffer.conf`` texts.

    Both are written next to slurm.conf because the plugin finds them with ``get_extra_conf_path()``.
    ``programs`` are executables written there too (name, text): the datawarp plugin's GetSysState and
    GetSysStatus.
    """

    lua_source: str | None
    conf_text: str
    plugin_type: str = "burst_buffer/lua"
    programs: tuple[tuple[str, str], ...] = ()


_PLACEHOLDER_LUA = """\
-- Placeholder burst_buffer.lua written by "slurmlink dev-cluster up": every callback succeeds and does
-- nothing, so #DW jobs run through the burst_buffer/lua plugin until slurmlink's own plugin is installed.
local function ok() return slurm.SUCCESS end
slurm_bb_job_process = ok
slurm_bb_setup = ok
slurm_bb_data_in = ok
slurm_bb_test_data_in = ok
slurm_bb_real_size = ok
slurm_bb_paths = ok
slurm_bb_pre_run = ok
slurm_bb_post_run = ok
slurm_bb_data_out = ok
slurm_bb_test_data_out = ok
slurm_bb_job_teardown = ok
function slurm_bb_get_status(...) return slurm.SUCCESS, "slurmlink dev-cluster placeholder burst buffer" end
"""
_NO_POOLS_LUA = "function slurm_bb_pools() return slurm.SUCCESS end\n"

_DEFAULT_BB_CONF = """\
# Jobs request burst buffers with "#DW ..." lines. Short timeouts keep a hung callback from stalling tests.
Directive=DW
StageInTimeout=30
StageOutTimeout=30
OtherTimeout=30
# Without it a failed stage-out leaves the job in STAGE_OUT forever.
Flags=TeardownFailure
"""


def placeholder_burst_buffer(pool_capacity: int | None = None) -> BurstBufferSetup:
    """A do-nothing burst_buffer/lua plugin, so ``#DW`` jobs work before the real plugin is installed.

    With ``pool_capacity`` it offers one pool, ``testpool``: jobs that ask for ``capacity=N pool=testpool``
    then start right after stage-in instead of waiting for the next scheduler pass (tests use that).
    """
    pools = _NO_POOLS_LUA
    if pool_capacity is not None:
        listing = f'{{"pools":[{{"id":"testpool","quantity":{int(pool_capacity)},"granularity":1}}]}}'
        pools = f"function slurm_bb_pools() return slurm.SUCCESS, '{listing}' end\n"
    return BurstBufferSetup(lua_source=_PLACEHOLDER_LUA + pools, conf_text=_DEFAULT_BB_CONF)


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise DevClusterError("MemTotal missing from /proc/meminfo")


#: Reported instead of ``nodename`` when NodeName lines differ only in their Features: a reconfigure
#: applies node features (tried on 22.05: added and removed ones show in ``scontrol show node``).
NODE_FEATURES_KEY = "nodename:features"


def _without_features(line: str) -> str:
    return " ".join(f"{key}={value}" for key, value in pairs(line) if key.lower() != "features")


def changed_keys(old: str, new: str) -> set[str]:
    """Config keys whose lines differ between two slurm.conf texts."""

    def lines_by_key(text: str, strip_features: bool = False) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for line in text.splitlines():
            for key in line_keys(line):
                value = _without_features(line) if strip_features and key == "nodename" else line.strip()
                out.setdefault(key, set()).add(value)
        return out

    before, after = lines_by_key(old), lines_by_key(new)
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    if "nodename" in changed and (
        lines_by_key(old, True).get("nodename") == lines_by_key(new, True).get("nodename")
    ):
        changed = (changed - {"nodename"}) | {NODE_FEATURES_KEY}
    return changed


class SlurmConfig(Layout):
    """Renders and writes this cluster's config files.

    Needs ``cluster_name``, the two ports and the ``network`` (the nodes' addresses): slurmctld is reached
    at the bridge's address, each compute node at its own, all on the same SlurmdPort. With ``accounting``
    slurmdbd is reached there too, on ``dbd_port``.
    """

    cluster_name: str
    ctld_port: int
    slurmd_port: int
    network: Network | None
    accounting: bool
    dbd_port: int
    accounting_enforce: tuple[str, ...]
    partitions: tuple[PartitionSpec, ...]

    def _base_conf_lines(
        self, burst_buffer: BurstBufferSetup | None, partition_default_time: int | None = None
    ) -> list[str]:
        if self.network is None:
            raise DevClusterError("the cluster has no network yet, so its nodes have no addresses")
        cpus = os.cpu_count() or 1
        memory = max(_memory_mib() - 1024, 256)
        sd = self.state_dir
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={CONTROLLER_NAME}({self.network.controller_address})",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={sd / 'state'}",
            f"SlurmdSpoolDir={sd / 'spool'}/slurmd.%n",
            f"SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}",
            # One slurmd per compute node: %n is the node's name (as slurmd -N gives it).
            f"SlurmdPidFile={self.run_dir}/slurmd.%n.pid",
            f"SlurmctldLogFile={self.slurmctld_log}",
            f"SlurmdLogFile={self.log_dir}/slurmd.%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups and no systemd: /proc based tracking, no task binding; accounting daemons only with
            # accounting (its lines replace the two below).
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            # Defaults (sched_min_interval=2s, batch_sched_delay=3s, 60 s main / 30 s backfill passes) add
            # seconds to every job; short intervals make test jobs start within about a second.
            "SchedulerParameters=sched_min_interval=100000,batch_sched_delay=0,sched_interval=2,bf_interval=2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            # Completed jobs stay visible to "scontrol show job" for 5 minutes.
            "MinJobAge=300",
            # sbatch refuses a job beyond its partition's limits (MaxNodes, MaxTime, memory) instead of
            # queueing it forever (Slurm's default, NO); with several partitions, beyond all of them.
            "EnforcePartLimits=ANY",
        ]
        if burst_buffer is not None:
            lines += [f"BurstBufferType={burst_buffer.plugin_type}", "DebugFlags=BurstBuffer"]
        # Compute nodes only: storage nodes run no slurmd. Each node sees the whole host, so each may
        # claim all of its CPUs and memory.
        compute = [node for node in self.node_layout(self.network) if node.is_compute]
        names = [node.name for node in compute]
        features = node_features(self.partitions, names)
        for node in compute:
            extra = f"Features={','.join(features[node.name])} " if node.name in features else ""
            lines.append(
                f"NodeName={node.name} NodeAddr={node.address} NodeHostname={node.name} CPUs={cpus} "
                f"RealMemory={memory} {extra}State=UNKNOWN"
            )
        lines += partition_lines(self.partitions, names, partition_default_time)
        if self.accounting:
            accounting = slurmdbd.slurm_conf_lines(
                self.network.controller_address, self.dbd_port, self.munge_socket, self.accounting_enforce
            )
            replaced = set().union(*map(line_keys, accounting))
            lines = [line for line in lines if not line_keys(line) & replaced] + accounting
        return lines

    def render_slurm_conf(
        self,
        burst_buffer: BurstBufferSetup | None,
        extra_lines: Iterable[str] = (),
        partition_default_time: int | None = None,
    ) -> str:
        """The slurm.conf text; an extra line replaces the default line with the same key (an extra
        ``PartitionName`` line replaces all of the cluster's partitions).

        ``partition_default_time`` (minutes) is the DefaultTime of partitions whose spec sets none.
        """
        extra = [line.strip() for line in extra_lines if line.strip()]
        overridden = set().union(*map(line_keys, extra))
        base = self._base_conf_lines(burst_buffer, partition_default_time)
        lines = [line for line in base if not line_keys(line) & overridden]
        header = "# Generated by slurmlink dev-cluster; rewritten on every 'up'.\n"
        return header + "\n".join([*lines, *extra]) + "\n"

    def render_config(
        self,
        burst_buffer: BurstBufferSetup | None,
        *,
        extra_lines: Iterable[str] = (),
        extra_files: Mapping[str, str] | None = None,
        partition_default_time: int | None = None,
    ) -> set[str]:
        """Write slurm.conf (and the burst buffer files, and ``extra_files``) into ``state_dir/etc``.

        ``extra_files`` maps file names to contents, for plugins that read files next to slurm.conf
        (``job_submit.lua`` for ``JobSubmitPlugins=lua``). Returns the config keys that changed in a way
        that needs a reconfigure ("*" for a changed .conf file), so an unchanged ``up`` skips it.
        """
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        self.etc_dir.chmod(0o755)
        changed: set[str] = set()
        old_conf = self.slurm_conf.read_text() if self.slurm_conf.exists() else ""
        new_conf = self.render_slurm_conf(burst_buffer, extra_lines, partition_default_time)
        if old_conf != new_conf:
            changed |= changed_keys(old_conf, new_conf)
            self._write(self.slurm_conf, new_conf)
        files: dict[str, str | None] = {
            "burst_buffer.lua": burst_buffer.lua_source if burst_buffer else None,
            "burst_buffer.conf": burst_buffer.conf_text if burst_buffer else None,
        }
        files.update(extra_files or {})
        programs = dict(burst_buffer.programs) if burst_buffer else {}
        files.update(programs)
        for name, content in files.items():
            if "/" in name or name in ("", ".", "..", "slurm.conf"):
                raise DevClusterError(f"invalid extra config file name {name!r}")
            path = self.etc_dir / name
            old = path.read_text() if path.exists() else None
            if old == content:
                continue
            if content is None:
                path.unlink()
            else:
                executable = name in programs or content.startswith("#!")
                self._write(path, content, 0o755 if executable else 0o644)
            # Lua scripts are re-read by the plugins on every call; .conf files need a reconfigure.
            if name.endswith(".conf"):
                changed.add("*")
        return changed

    @staticmethod
    def _write(path: Path, content: str, mode: int = 0o644) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        tmp.chmod(mode)
        tmp.replace(path)
