"""Settings of the burst buffer gateway (``slurmlink slurm gateway``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slurmlink.slurm.gateway.banksettings import BankSettings

#: Namespace of the Workflows when the kubeconfig's context names none (upstream's tests use ``slurm``).
DEFAULT_NAMESPACE = "slurm"
#: DWS recommends a WLM waits about 30 s on a TransientCondition before giving up on the state.
DEFAULT_TRANSIENT_GRACE = 30.0
DEFAULT_API_TIMEOUT = 60.0
DEFAULT_SWEEP_INTERVAL = 60.0
DEFAULT_SWEEP_MIN_AGE = 120.0
#: Label upstream's plugin puts on every Workflow it creates; the sweeper only looks at these.
ORIGIN_LABEL = "origin"
ORIGIN_VALUE = "burst_buffer.lua"
#: Annotation identifying the job run a Workflow belongs to, so a Workflow left over from an earlier job
#: with the same id (e.g. after Slurm's state was wiped) is recognised as stale.
JOB_RUN_ANNOTATION = "slurmlink.io/job-run"
WLM_ID = "slurm"
#: Setups worked on at once (``pacing``): enough to keep the storage nodes busy and stay ahead of
#: the jobs Slurm starts, few enough that the first ones finish in about a setup's own time.
DEFAULT_SETUPS_AT_ONCE = 8


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs; the CLI fills it from options."""

    socket_path: Path
    namespace: str = DEFAULT_NAMESPACE
    slurm_conf: Path | None = None
    transient_grace: float = DEFAULT_TRANSIENT_GRACE
    api_timeout: float = DEFAULT_API_TIMEOUT
    #: How long setup waits for burst-buffer capacity held by other jobs to be freed.
    placement_wait: float = 240.0
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    sweep_min_age: float = DEFAULT_SWEEP_MIN_AGE
    #: DWDirectiveRules live here (the API server's system namespace).
    rules_namespace: str = "dws-system"
    #: The bank's hooks (job_submit.lua, PrologSlurmctld, EpilogSlurmctld); None: not served.
    bank: BankSettings | None = None
    #: Setups worked on at once, the others waiting in Slurm's order (``pacing``); 0: no limit.
    setups_at_once: int = DEFAULT_SETUPS_AT_ONCE


#: Where the gateway listens and burst_buffer.lua connects, unless configured otherwise.
DEFAULT_SOCKET_PATH = Path("/run/slurmlink/slurm-bb.sock")
