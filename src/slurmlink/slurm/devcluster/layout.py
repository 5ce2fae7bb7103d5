"""Where a dev cluster keeps everything: one state directory, and the defaults it starts from."""

from __future__ import annotations

from pathlib import Path

#: Under /var/tmp, not the invoking user's home: the unprivileged job user must reach slurm.conf, the
#: munge socket and the spool directory, and root's home is private.
DEFAULT_STATE_DIR = Path("/var/tmp/slurmlink/dev-cluster")
DEFAULT_CTLD_PORT = 6917
DEFAULT_SLURMD_PORT = 6918
DEFAULT_JOB_USER = "slurmlink-job"
DEFAULT_JOB_UID = 23001
DEFAULT_CLUSTER_NAME = "slurmlink-dev"

NODE_NAME = "localhost"
PARTITION = "debug"
SETTINGS_FILE = "devcluster.json"
KUBECONFIG_REF_FILE = "kubeconfig.path"
#: What the running gateway was started with (argv, kubeconfig hash), to restart it when that changes.
GATEWAY_STATE_FILE = "gateway.json"
GATEWAY_SOCKET_NAME = "slurm-bb.sock"
PLUGIN_KUBECONFIG_NAME = "slurm-dws.kubeconfig"


class Layout:
    """The paths inside ``state_dir``: config, munge key and socket, logs, pid files, the gateway socket."""

    state_dir: Path

    @property
    def etc_dir(self) -> Path:
        return self.state_dir / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc_dir / "slurm.conf"

    @property
    def munge_dir(self) -> Path:
        return self.state_dir / "munge"

    @property
    def munge_key(self) -> Path:
        return self.munge_dir / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket.2"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def jobs_dir(self) -> Path:
        """World-writable (sticky) scratch dir for job scripts and outputs of the job user."""
        return self.state_dir / "jobs"

    @property
    def slurmctld_log(self) -> Path:
        return self.log_dir / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.log_dir / "slurmd.log"

    @property
    def gateway_socket(self) -> Path:
        """The Unix socket the plugin's burst_buffer.lua talks to."""
        return self.run_dir / GATEWAY_SOCKET_NAME

    @property
    def gateway_log(self) -> Path:
        return self.log_dir / "gateway.log"

    @property
    def plugin_kubeconfig(self) -> Path:
        """The plugin's (and gateway's) kubeconfig, as installed into etc/."""
        return self.etc_dir / PLUGIN_KUBECONFIG_NAME
