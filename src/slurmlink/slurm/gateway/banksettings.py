"""Settings of the gateway's bank hooks, and their policies (see docs/bank.md, "Failure policy")."""

from __future__ import annotations

import dataclasses
from pathlib import Path

#: Start-time policies when the account cannot cover the job's hold: hold the requeued job with the
#: bank's reason (default), or let Slurm requeue it and try again later.
HOLD_JOB, REQUEUE = "hold_job", "requeue"
#: Policies when the bank cannot be reached (start: let the job run and settle later, or requeue it).
ALLOW, DENY = "allow", "deny"


@dataclasses.dataclass(frozen=True)
class BankSettings:
    #: Seconds between reads of the bank's balances and rate card for the submit check.
    refresh: float = 2.0
    #: A copy older than this is not used: the submit check answers as if the bank were unreachable.
    stale_after: float = 120.0
    on_insufficient_at_start: str = HOLD_JOB
    on_unreachable_at_start: str = ALLOW
    #: Where settles the bank could not take wait to be sent again.
    spool_dir: Path | None = None
    spool_retry: float = 5.0
    #: Seconds between reconciliations from Slurm's accounting (0: none), and how far back each looks.
    reconcile_interval: float = 300.0
    reconcile_window: int = 2 * 24 * 3600
