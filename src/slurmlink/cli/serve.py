"""``slurmlink serve``."""

from __future__ import annotations

from pathlib import Path

import click

from slurmlink import config as config_mod


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLURMLINK_CONFIG",
    help="TOML file with a [serve] table (default: $SLURMLINK_CONFIG or /etc/slurmlink/config.toml).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SLURMLINK_STATE_DIR",
    help="Where the database, CA and kubeconfigs live (default ~/.local/state/slurmlink).",
)
@click.option(
    "--listen", envvar="SLURMLINK_LISTEN", help="HOST:PORT to serve HTTPS on (default 127.0.0.1:8443)."
)
@click.option(
    "--extra-listen",
    "extra_listen",
    multiple=True,
    metavar="HOST:PORT",
    help="Also serve on this address (repeatable), e.g. a bridge where a cluster's nodes reach the "
    "host; its host goes into the server certificate. Kubeconfigs name --listen's address.",
)
@click.option(
    "--store",
    envvar="SLURMLINK_STORE",
    help="Database URL: sqlite:///PATH (default, in the state dir) or postgresql://USER@HOST/DB.",
)
@click.option(
    "--host", "hosts", multiple=True, help="Extra DNS name or IP for the server certificate (repeatable)."
)
@click.option(
    "--no-test-driver", is_flag=True, default=None, help="Do not run the test driver nor install its rules."
)
@click.option(
    "--no-controllers",
    is_flag=True,
    default=None,
    help="Serve the API only; run controllers elsewhere with `slurmlink controller`.",
)
@click.option(
    "--node-heartbeat-timeout",
    type=click.FloatRange(min=0.1),
    envvar="SLURMLINK_NODE_HEARTBEAT_TIMEOUT",
    help="Seconds without a heartbeat from a storage node's agent before its Storage is marked "
    "Offline (default 40).",
)
@click.option(
    "--cluster-name",
    envvar="SLURMLINK_CLUSTER_NAME",
    help="The Slurm cluster (slurm.conf ClusterName) whose accounts the bank keeps (default 'cluster').",
)
@click.option(
    "--bridge/--no-bridge",
    default=None,
    envvar="SLURMLINK_BRIDGE",
    help="Run the job bridge: SlurmJobs are submitted with sbatch as their owners and followed, and "
    "the cluster's partitions are published (default off; needs Slurm's client commands).",
)
@click.option(
    "--slurm-conf",
    type=click.Path(dir_okay=False),
    envvar="SLURM_CONF",
    help="slurm.conf of the cluster the bridge drives (default $SLURM_CONF).",
)
@click.option(
    "--bridge-root",
    type=click.Path(file_okay=False),
    envvar="SLURMLINK_BRIDGE_ROOT",
    help="Where job directories are made, on a file system the compute nodes share "
    "(default STATE_DIR/bridge/jobs).",
)
@click.option(
    "--partition-config",
    type=click.Path(dir_okay=False, exists=True),
    envvar="SLURMLINK_PARTITION_CONFIG",
    help="The admin's partition overrides (TOML; docs/job-bridge.md).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), envvar="SLURMLINK_LOG_LEVEL"
)
@click.option("--log-format", type=click.Choice(["json", "console"]), envvar="SLURMLINK_LOG_FORMAT")
@click.option(
    "--insecure-http",
    is_flag=True,
    default=None,
    help="DEVELOPMENT ONLY: plain HTTP and no authentication (everyone is admin).",
)
@click.option(
    "--nice",
    type=click.IntRange(0, 19),
    envvar="SLURMLINK_NICE",
    help="Lower the CPU priority by this much (0-19; default 0). Next to slurmctld, 10 keeps "
    "submissions fast during stage-in waves.",
)
def serve(
    config_file: Path | None,
    state_dir: Path | None,
    listen: str | None,
    extra_listen: tuple[str, ...],
    store: str | None,
    hosts: tuple[str, ...],
    no_test_driver: bool | None,
    no_controllers: bool | None,
    node_heartbeat_timeout: float | None,
    cluster_name: str | None,
    bridge: bool | None,
    slurm_conf: str | None,
    bridge_root: str | None,
    partition_config: str | None,
    log_level: str | None,
    log_format: str | None,
    insecure_http: bool | None,
    nice: int | None,
) -> None:
    """Run the API server with its controllers on the embedded store (or PostgreSQL).

    On first start it creates its CA and server certificate in the state directory and writes
    STATE_DIR/admin.kubeconfig; /readyz answers "ok" once the controllers have synced.
    """
    path = config_file or Path("/etc/slurmlink/config.toml")
    try:
        file_values = config_mod.load_file(path)
        cfg = config_mod.build(
            file_values,
            {
                "state_dir": state_dir,
                "listen": listen,
                "extra_listen": list(extra_listen) or None,
                "store": store,
                "hosts": list(hosts) or None,
                "test_driver": False if no_test_driver else None,
                "controllers": False if no_controllers else None,
                "log_level": log_level,
                "log_format": log_format,
                "insecure_http": True if insecure_http else None,
                "nice": nice,
                "node_heartbeat_timeout": node_heartbeat_timeout,
                "cluster_name": cluster_name,
                "bridge": bridge,
                "slurm_conf": slurm_conf,
                "bridge_root": bridge_root,
                "partition_config": partition_config,
            },
        )
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    from slurmlink import logs

    logs.setup(cfg.log_level, cfg.log_format)
    from slurmlink.server import serve as run_server

    run_server(cfg)
