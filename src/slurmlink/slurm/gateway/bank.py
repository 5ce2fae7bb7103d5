"""The bank's Slurm hooks in the gateway: the submit check, the hold at start, the charge at the end.

``bank_submit`` runs in the front for job_submit.lua while slurmctld holds its job lock, so it answers
from memory: ``BankView`` keeps a copy of every account's balance and the current rate card, refreshed
every ``refresh`` seconds from the bank's ``/bank/v1/snapshot``. ``bank_prolog`` and ``bank_epilog`` run
in the worker for PrologSlurmctld and EpilogSlurmctld (``python3 -m slurmlink.slurm.bank_hook``), outside
slurmctld's locks: they read the job from slurmctld, price it with the same rate card and formula, and
hold or settle it through the bank's API, keyed by the job run, so a hook run twice changes nothing.

A settle the bank cannot take now is written to the spool and sent again until it is taken; the bank's
reconciler settles from Slurm's accounting whatever was lost even so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from slurmlink import jsonutil
from slurmlink.bank.estimate import Charge, CostError, JobRequest, RunUsage, charge, from_job_desc, quote
from slurmlink.bank.ratecard import RateCard, RateCardError
from slurmlink.bank.runs import RunKey
from slurmlink.bank.tres import parse_tres
from slurmlink.client.base import Client
from slurmlink.resources.errors import ApiError
from slurmlink.slurm.accounting import ended_runs
from slurmlink.slurm.commands import SlurmCommandError, SlurmCommands
from slurmlink.slurm.gateway.banksettings import ALLOW, HOLD_JOB, BankSettings
from slurmlink.slurm.gateway.operations import Fields, GatewayError
from slurmlink.slurm.jobrecord import JobRecord, parse_job_line

log = logging.getLogger(__name__)

BANK = "/bank/v1"
#: The prolog's field for the ``squeue`` line of the job's start, which only the gateway's front sets
#: (it removes one that came from the caller).
STARTED_FIELD = "started"
#: How long an acceptance may stay out of slurm.jobs before it stops counting, and the width of the
#: acceptance tokens (microseconds since the epoch, so they grow across gateway restarts too).
RECENT_SECONDS = 60.0
TOKEN_DIGITS = 16
#: job_submit.lua's stamp in an accepted job's AdminComment: ``<STAMP><per task>:<token>``.
STAMP = "slurmlink-bank:estimate="
#: Slurm's NO_VAL sentinels arrive as numbers in text.
_NUMERIC_FIELDS = frozenset(
    {
        "user_id",
        "num_tasks",
        "cpus_per_task",
        "min_cpus",
        "min_nodes",
        "ntasks_per_node",
        "time_limit",
        "shared",
        "min_mem_per_node",
        "min_mem_per_cpu",
    }
)
_HELD_REASON = "slurmlink-bank:"


@dataclasses.dataclass
class ReconcileReport:
    seen: int = 0
    settled: int = 0
    already: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.seen} ended runs in accounting: {self.settled} settled now, {self.already} before"
        return text + (
            f"; {len(self.problems)} could not be: {'; '.join(self.problems[:5])}" if self.problems else ""
        )


@dataclasses.dataclass(frozen=True)
class PendingJobs:
    """What the account's pending jobs may still spend, from one ``squeue``: each accepted job carries
    its per-task estimate and its acceptance token in its AdminComment (which users cannot change)."""

    by_account: dict[str, Decimal]
    by_job: dict[int, tuple[str, Decimal]]
    #: The newest acceptance token among the jobs slurmctld showed.
    newest_token: str

    @classmethod
    def from_jobs(cls, jobs: Iterable[JobRecord]) -> PendingJobs:
        by_account: dict[str, Decimal] = {}
        by_job: dict[int, tuple[str, Decimal]] = {}
        newest = ""
        for job in jobs:
            stamp = _stamp(job.admin_comment)
            if stamp is None:
                continue
            per_task, token = stamp
            newest = max(newest, token)
            if job.state == "PENDING":
                amount = per_task * max(job.pending_tasks, 1)
                by_account[job.account] = by_account.get(job.account, Decimal(0)) + amount
                by_job[job.job_id] = (job.account, amount)
        return cls(by_account, by_job, newest)


def _stamp(comment: str) -> tuple[Decimal, str] | None:
    """(per-task estimate, acceptance token) from job_submit.lua's AdminComment stamp."""
    for word in comment.split():
        if word.startswith(STAMP):
            per_task, _, token = word[len(STAMP) :].partition(":")
            try:
                return Decimal(per_task), token if token.isdigit() else ""
            except ArithmeticError:
                return None
    return None


class BankView:
    """The bank's balances and current rate card, and the pending jobs' estimates, as of the last
    refresh (front process): what the submit check decides with, without a network call."""

    def __init__(self, client: Client, settings: BankSettings, slurm: SlurmCommands | None = None) -> None:
        self.client = client
        self.settings = settings
        self.slurm = slurm
        self.snapshot: dict[str, Any] | None = None
        self.card: RateCard | None = None
        self.fetched_at = 0.0
        self.problem: str | None = "the bank's balances have not been read yet"
        self.pending = PendingJobs({}, {}, "")
        self._tasks: list[asyncio.Task[None]] = []
        #: account -> (wall time, token, amount) of the jobs accepted lately, oldest first: what the
        #: last squeue may not show yet (see bank_submit).
        self.accepted: dict[str, collections.deque[tuple[float, str, Decimal]]] = {}
        self._last_token = 0

    def exposure(self, account: str, modified_job: int | None = None) -> Decimal:
        """What the account's pending jobs may still spend: those slurmctld showed at the last poll
        (less ``modified_job``, whose new estimate is being checked), plus those accepted since."""
        pending = self.pending.by_account.get(account, Decimal(0))
        if modified_job is not None and modified_job in self.pending.by_job:
            pending -= self.pending.by_job[modified_job][1]
        return pending + self.unseen(account, self.pending.newest_token)

    def unseen(self, account: str, seen_token: str) -> Decimal:
        """What the account's jobs accepted after ``seen_token`` (the newest slurmctld showed) may cost;
        acceptances older than RECENT_SECONDS no longer count (Slurm refused them after job_submit,
        or they started and ended between two polls)."""
        recent = self.accepted.get(account)
        if not recent:
            return Decimal(0)
        horizon = time.time() - RECENT_SECONDS
        while recent and (recent[0][0] < horizon or recent[0][1] <= seen_token):
            recent.popleft()
        return sum((amount for _, token, amount in recent if token > seen_token), Decimal(0))

    def spendable(
        self, account: str, entry: dict[str, Any], modified_job: int | None = None
    ) -> tuple[Decimal, Decimal]:
        """The account's available units (from its snapshot ``entry``) and what its pending jobs may
        still spend (``exposure``, to the cent): what a new cost is checked against."""
        return Decimal(entry["available"]), self.exposure(account, modified_job).quantize(Decimal("0.01"))

    def record(self, account: str, amount: Decimal) -> str:
        """Remember an acceptance; its token, which job_submit.lua stamps on the job."""
        self._last_token = max(time.time_ns() // 1000, self._last_token + 1)
        token = f"{self._last_token:0{TOKEN_DIGITS}d}"
        self.accepted.setdefault(account, collections.deque()).append((time.time(), token, amount))
        return token

    async def refresh(self) -> None:
        try:
            snapshot = await self.client.call("GET", f"{BANK}/snapshot")
        except ApiError as exc:
            self.problem = f"cannot read the bank's balances: {exc.message}"
            log.warning("%s", self.problem)
            return
        card_data = snapshot.get("rateCard")
        card = self.card
        if card_data is None:
            card = None
        elif card is None or card.version != card_data.get("version"):
            try:
                card = RateCard.from_json(
                    jsonutil.dumps_str(card_data), source="the bank's current rate card"
                )
            except RateCardError as exc:
                self.problem = str(exc)
                return
        self.snapshot, self.card, self.fetched_at, self.problem = snapshot, card, time.monotonic(), None

    async def poll_pending(self) -> None:
        """One squeue (pending and running jobs, all users) for the pending jobs' estimates."""
        if self.slurm is None:
            return
        try:
            jobs = await self.slurm.queued_jobs()
        except SlurmCommandError as exc:
            log.warning("cannot read the queue for the bank's submit check: %s", exc)
            return
        self.pending = PendingJobs.from_jobs(jobs)

    async def run_forever(self) -> None:
        while True:
            await asyncio.gather(self.refresh(), self.poll_pending())
            await asyncio.sleep(self.settings.refresh)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.run_forever(), name="bank-view"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def current(self) -> tuple[dict[str, Any], RateCard]:
        """The snapshot and card to decide with; GatewayError(503) when there is none fit to use."""
        if self.snapshot is None:
            raise GatewayError(f"slurmlink bank: {self.problem}", 503)
        age = time.monotonic() - self.fetched_at
        if age > self.settings.stale_after:
            raise GatewayError(
                f"slurmlink bank: the copy of the bank's balances is {age:.0f} s old ({self.problem})", 503
            )
        if self.card is None:
            raise GatewayError(
                "slurmlink bank: no rate card has been imported (slurmlink bank ratecard import FILE)", 503
            )
        return self.snapshot, self.card


def job_request(fields: Fields) -> JobRequest:
    """The submission's fields as job_submit.lua sent them (numbers as text, NO_VAL included)."""
    desc: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _NUMERIC_FIELDS:
            with contextlib.suppress(ValueError):
                desc[name] = int(value)
        else:
            desc[name] = value
    return from_job_desc(desc)


async def bank_submit(view: BankView, fields: Fields) -> str:
    """``accept <per task> <total>``, or a GatewayError whose message sbatch shows the user."""
    snapshot, card = view.current()
    request = job_request(fields)
    try:
        priced = quote(card, request)
    except CostError as exc:
        raise GatewayError(f"slurmlink bank: {exc}", 400) from exc
    account = request.account or ""
    if not account:
        raise GatewayError(
            "slurmlink bank: the job names no account (sbatch --account=NAME) and you have no default one",
            400,
        )
    entry = (snapshot.get("accounts") or {}).get(account)
    if entry is None:
        raise GatewayError(
            f"slurmlink bank: account {account} has no service units (it has no bank account); ask your "
            "allocation manager to create one, or submit with another --account",
            404,
        )
    if entry.get("status") != "active":
        raise GatewayError(
            f"slurmlink bank: account {account} is {entry.get('status')}; no new jobs may be charged to it. "
            "Ask your allocation manager",
            402,
        )
    modified = fields.get("modify_job", "")
    available, pending = view.spendable(account, entry, int(modified) if modified.isdigit() else None)
    left = available - pending
    if priced.amount > left:
        tasks = f" ({priced.tasks} array tasks at {priced.per_task} SU)" if priced.tasks > 1 else ""
        raise GatewayError(
            f"slurmlink bank: job rejected: it may cost {priced.amount} SU{tasks} on partition "
            f"{priced.partition} (rate card {priced.rate_card_version}), but account {account} has "
            f"{available} SU available, of which {pending} SU may still be spent by its pending jobs "
            f"({entry.get('held')} SU are held by its running jobs). Ask your allocation manager for more "
            "service units, or ask for less time or fewer CPUs ('slurmlink bank quote SCRIPT' prices a "
            "script before you submit it)",
            402,
        )
    if modified:  # a changed pending job: known to slurmctld already
        return f"accept {priced.per_task} {priced.amount}"
    return f"accept {priced.per_task} {priced.amount} {view.record(account, priced.amount)}"


async def bank_extend(view: BankView, fields: Fields) -> str:
    """A running job's time limit raised (job_submit.lua's ``slurm_job_modify``, job lock held):
    ``accept <extra>`` when its account can cover what the job may now cost more, from memory as
    ``bank_submit`` decides, or a GatewayError saying why not. The run's hold is then raised by the
    worker (``BankHooks.raise_hold``); the ledger refuses there too if the balance changed meanwhile.
    """
    snapshot, card = view.current()
    request = job_request(fields)
    try:
        longer = quote(card, request)
        before = quote(card, job_request({**fields, "time_limit": fields.get("old_time_limit", "")}))
    except CostError as exc:
        raise GatewayError(f"slurmlink bank: {exc}", 400) from exc
    extra = longer.amount - before.amount
    if extra <= 0:
        return "accept 0"
    account = request.account or ""
    job = fields.get("job_id", "?")
    entry = (snapshot.get("accounts") or {}).get(account)
    if entry is None or entry.get("status") != "active":
        state = "has no bank account" if entry is None else f"is {entry.get('status')}"
        raise GatewayError(
            f"slurmlink bank: job {job}'s time limit cannot be raised: account {account} {state}", 402
        )
    available, pending = view.spendable(account, entry)
    if extra > available - pending:
        raise GatewayError(
            f"slurmlink bank: job {job}'s time limit cannot be raised to {fields.get('time_limit')} "
            f"minutes: the job may then cost {extra} SU more (rate card {longer.rate_card_version}), "
            f"but account {account} has {available} SU available, of which {pending} SU may still be "
            "spent by its pending jobs; grant the account more service units first",
            402,
        )
    return f"accept {extra}"


def run_key(job: JobRecord, cluster: str) -> RunKey:
    return RunKey(cluster or job.cluster, job.job_id, job.restart_count, job.submit_time)


def settle_request(
    card: RateCard,
    *,
    account: str,
    user: str,
    partition: str,
    qos: str,
    tres: str,
    elapsed: int,
    state: str,
) -> tuple[Charge, dict[str, Any]]:
    """What a run that ended in ``state`` after ``elapsed`` seconds on ``tres`` costs, and the settle
    request for it (the epilog's and the reconciler's: one formula, one shape)."""
    usage = RunUsage(
        partition=partition,
        qos=qos or None,
        tres=parse_tres(tres),
        elapsed_s=elapsed,
        end_state=state,
        account=account or None,
    )
    priced = charge(card, usage)
    body = {
        "account": account,
        "user": user,
        "amount": str(priced.amount),
        "rateCardVersion": priced.rate_card_version,
        "inputs": {**priced.inputs, "policy": priced.policy, "endState": state, "elapsedSeconds": elapsed},
        "details": {"partition": partition, "qos": qos, "tres": tres, "state": state},
    }
    return priced, body


def most_for(card: RateCard, job: JobRecord, minutes: int) -> Charge:
    """What the job may cost at most if it runs ``minutes`` on its allocation (what is held for it)."""
    return charge(card, usage_of(job, elapsed=minutes * 60, end_state="COMPLETED"))


def usage_of(job: JobRecord, *, elapsed: int, end_state: str) -> RunUsage:
    return RunUsage(
        partition=job.partition,
        qos=job.qos or None,
        tres=parse_tres(job.tres_alloc),
        elapsed_s=elapsed,
        end_state=end_state,
        account=job.account or None,
    )


class BankHooks:
    """PrologSlurmctld's hold and EpilogSlurmctld's settle (worker process)."""

    def __init__(self, client: Client, slurm: SlurmCommands, settings: BankSettings) -> None:
        self.client = client
        self.slurm = slurm
        self.settings = settings
        self._card: RateCard | None = None
        self._task: asyncio.Task[None] | None = None
        self._after: set[asyncio.Task[None]] = set()

    async def _rate_card(self) -> RateCard:
        data = await self.client.call("GET", f"{BANK}/ratecards/current")
        if self._card is None or self._card.version != data.get("version"):
            self._card = RateCard.from_json(jsonutil.dumps_str(data), source="the bank's current rate card")
        return self._card

    async def _job(self, fields: Fields) -> JobRecord:
        """The job from slurmctld, by a lookup of it alone (with its time used, without the admin
        comment, which the hooks do not need)."""
        job_id = fields.get("job_id", "")
        try:
            job = await self.slurm.job_alone(job_id)
        except (SlurmCommandError, ValueError) as exc:
            raise GatewayError(
                f"slurmlink bank: cannot read job {job_id} from slurmctld: {exc}", 503
            ) from exc
        if job is None:
            raise GatewayError(f"slurmlink bank: slurmctld does not know job {job_id}", 404)
        return job

    async def _started(self, fields: Fields) -> JobRecord | None:
        """The job as read when slurmctld started it, if that read was of this run; else None. The
        gateway's front reads it (:meth:`SlurmCommands.note_start`) and passes the line along
        (:data:`STARTED_FIELD`); a gateway without a front has its own read."""
        job_id = fields.get("job_id", "")
        line = fields.get(STARTED_FIELD, "")
        try:
            job = parse_job_line(line) if line else await self.slurm.started_job(job_id)
        except ValueError:
            return None
        restart = fields.get("restart", "")
        if job is None or str(job.job_id) != job_id:
            return None
        if restart.isdigit() and int(restart) != job.restart_count:
            return None
        return job

    async def prolog(self, fields: Fields) -> str:
        """Hold what the job may cost for its time limit on its allocation; the run's key makes it once.
        (slurmctld waits for this before it runs the script: a burst-buffer job's start was read
        already, at ``paths``.)"""
        job = await self._started(fields) or await self._job(fields)
        key = run_key(job, fields.get("cluster", ""))
        try:
            card = await self._rate_card()
            limit = job.time_limit
            if limit is None:
                rate = card.partition(job.partition)
                limit = rate.max_time if rate is not None and rate.max_time else None
            if limit is None:
                raise GatewayError(
                    f"slurmlink bank: job {job.job_id} has no time limit and partition {job.partition} has "
                    "no max_time on the rate card: its cost cannot be bounded",
                    400,
                )
            priced = most_for(card, job, limit)
            body = {
                "account": job.account,
                "user": job.user,
                "amount": str(priced.amount),
                "details": {
                    "partition": job.partition,
                    "qos": job.qos,
                    "tres": job.tres_alloc,
                    "timeLimit": limit,
                },
            }
            await self.client.call("POST", f"{BANK}/runs/{key.text}/hold", body)
        except ApiError as exc:
            return self._hold_failed(job, exc)
        except CostError as exc:
            raise GatewayError(f"slurmlink bank: job {job.job_id}: {exc}", 400) from exc
        return f"held {priced.amount} SU for run {key.text}"

    async def raise_hold(self, fields: Fields) -> str:
        """Raise the run's hold to what the job may cost for its new time limit (``fields["time_limit"]``,
        minutes; slurmctld may not show it yet) on its allocation."""
        job = await self._job(fields)
        try:
            limit = int(fields.get("time_limit", ""))
        except ValueError as exc:
            raise GatewayError(f"slurmlink bank: no new time limit for job {job.job_id}", 400) from exc
        key = await self._held_key(job, fields.get("cluster", ""), job.restart_count)
        try:
            card = await self._rate_card()
            priced = most_for(card, job, limit)
            body = {"account": job.account, "amount": str(priced.amount), "details": {"timeLimit": limit}}
            answer = await self.client.call("PATCH", f"{BANK}/runs/{key.text}/hold", body)
        except ApiError as exc:
            # Slurm has raised the limit already; the run's charge at its end goes as far as the
            # account does and records the rest as unbilled.
            log.warning("raising the hold of job %s to %s minutes: %s", job.job_id, limit, exc.message)
            raise GatewayError(f"slurmlink bank: {exc.message}", exc.code or 503) from exc
        except CostError as exc:
            raise GatewayError(f"slurmlink bank: job {job.job_id}: {exc}", 400) from exc
        return f"hold of run {key.text} raised by {answer.get('raised', '0')} SU to {priced.amount} SU"

    def _hold_failed(self, job: JobRecord, exc: ApiError) -> str:
        if exc.code == 402:  # the account cannot cover it
            if self.settings.on_insufficient_at_start == HOLD_JOB:
                task = asyncio.create_task(self._hold_when_pending(job.job_id, exc.message))
                self._after.add(task)
                task.add_done_callback(self._after.discard)
            raise GatewayError(exc.message, 402)
        unreachable = exc.code in (502, 503, 504) or exc.reason == "ServiceUnavailable"
        if unreachable and self.settings.on_unreachable_at_start == ALLOW:
            log.warning(
                "bank unreachable at the start of job %s (%s): letting it run", job.job_id, exc.message
            )
            return f"bank unreachable ({exc.message}); the job runs, its run is settled later"
        raise GatewayError(f"slurmlink bank: {exc.message}", exc.code or 503)

    async def _hold_when_pending(self, job_id: int, reason: str, timeout: float = 120.0) -> None:
        """After Slurm requeued the job (the prolog failed), hold it with the bank's reason, so it does
        not start and fail again every few minutes; the reason is in ``scontrol show job``'s AdminComment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(SlurmCommandError, ValueError):
                job = await self.slurm.job_record(str(job_id), run_time=False)
                if job is None:
                    return
                if job.state == "PENDING":
                    # Kept: job_submit.lua's estimate tag, so the job still counts as pending.
                    tag = " ".join(
                        w for w in job.admin_comment.split() if w.startswith("slurmlink-bank:estimate=")
                    )
                    comment = f"{tag} {_HELD_REASON} not started: {reason}".strip()[:1000]
                    # The reason first: whoever sees the job held sees why.
                    await self.slurm.run("scontrol", "update", f"JobId={job_id}", f"AdminComment={comment}")
                    await self.slurm.run("scontrol", "hold", str(job_id))
                    return
            await asyncio.sleep(0.5)

    async def _held_key(self, job: JobRecord, cluster: str, restart: int) -> RunKey:
        """The key the run was held under (the prolog read the job then); else one made from now."""
        runs = await self.client.call("GET", f"{BANK}/runs", params={"jobId": str(job.job_id)})
        for run in runs.get("items") or []:
            with contextlib.suppress(Exception):
                key = RunKey.parse(run["run"])
                if key.restart_count == restart and (not cluster or key.cluster == cluster):
                    return key
        return RunKey(cluster or job.cluster, job.job_id, restart, job.submit_time)

    async def epilog(self, fields: Fields) -> str:
        """Charge what the run used (its RunTime on its allocation, per the card's end-state policy).

        slurmctld runs EpilogSlurmctld while the job is still COMPLETING, which hides how it ended (the
        card charges a TIMEOUT and refunds a NODE_FAIL): the charge is then made in the background once
        the job's state is final, and the hook returns at once.
        """
        job = await self._job(fields)
        if job.state == "COMPLETING":
            task = asyncio.create_task(self._settle_when_final(dict(fields)))
            self._after.add(task)
            task.add_done_callback(self._after.discard)
            return f"job {job.job_id} is completing; it is charged once its end state is known"
        return await self._settle(job, fields)

    async def _settle_when_final(self, fields: dict[str, str], timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                job = await self._job(fields)
            except GatewayError as exc:
                log.warning("charging job %s: %s", fields.get("job_id"), exc.message)
                continue
            if job.state != "COMPLETING":
                try:
                    log.info("%s", await self._settle(job, fields))
                except GatewayError as exc:
                    log.warning("charging job %s failed: %s", job.job_id, exc.message)
                return
        log.warning(
            "job %s stayed COMPLETING for %.0f s; the reconciler charges it", fields.get("job_id"), timeout
        )

    async def _settle(self, job: JobRecord, fields: Fields, *, spool: bool = True) -> str:
        """Charge the run; what the bank cannot take now is spooled (``spool``) or raised as the
        ApiError (the spool's own retry, which must keep its entry)."""
        restart = int(fields["restart"]) if fields.get("restart", "").isdigit() else job.restart_count
        if restart != job.restart_count or job.state in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
            # Requeued: slurmctld now describes the next run. Slurm's accounting keeps this one's
            # numbers; the reconciler settles it from there.
            return f"job {job.job_id} run {restart} was requeued; the reconciler settles it from accounting"
        try:
            key = await self._held_key(job, fields.get("cluster", ""), restart)
        except ApiError:
            key = run_key(job, fields.get("cluster", ""))
        elapsed = job.run_seconds
        if elapsed is None:
            elapsed = max(job.end_time - job.start_time, 0) if job.start_time else 0
        state = fields.get("state") or job.state
        try:
            card = await self._rate_card()
        except ApiError as exc:
            if not spool:
                raise
            return self._spool(key, {"job": job.job_id, "pending": "rate card", "fields": dict(fields)}, exc)
        try:
            priced, body = settle_request(
                card,
                account=job.account,
                user=job.user,
                partition=job.partition,
                qos=job.qos,
                tres=job.tres_alloc,
                elapsed=elapsed,
                state=state,
            )
        except CostError as exc:
            raise GatewayError(f"slurmlink bank: job {job.job_id}: {exc}", 400) from exc
        try:
            await self.client.call("POST", f"{BANK}/runs/{key.text}/settle", body)
        except ApiError as exc:
            if exc.code == 409:  # settled before with other numbers (reconciler): the first stands
                return f"run {key.text} was settled before"
            if not spool:
                raise
            return self._spool(key, body, exc)
        return f"charged {priced.amount} SU for run {key.text} ({state}, {elapsed} s)"

    # ---- reconciler: settles from Slurm's accounting ----------------------------------------------

    async def reconcile(self, seconds_back: int, job_ids: Iterable[int] = ()) -> ReconcileReport:
        """Settle every run that ended in the window and that the bank has not charged: runs whose
        epilog was lost, requeued runs, runs that ended while the bank was down. Idempotent: each run is
        settled by its key, once."""
        report = ReconcileReport()
        runs = await ended_runs(self.slurm, seconds_back, job_ids)
        report.seen = len(runs)
        if not runs:
            return report
        card = await self._rate_card()
        known: dict[tuple[int, int], dict[str, Any]] = {}
        # Runs the bank touched in the window (a run that ended in it was held or settled after its
        # start, so a little before the window is enough).
        since = dt.datetime.fromtimestamp(time.time() - seconds_back - 7 * 24 * 3600, dt.UTC)
        listed = await self.client.call("GET", f"{BANK}/runs", params={"updatedSince": since.isoformat()})
        for item in listed["items"]:
            with contextlib.suppress(Exception):
                key = RunKey.parse(item["run"])
                known[(key.job_id, key.restart_count)] = item
        for run in runs:
            bank_run = known.get((run.job_id, run.restart_count))
            if bank_run is not None and bank_run["state"] == "settled":
                report.already += 1
                continue
            key = (
                RunKey.parse(bank_run["run"])
                if bank_run is not None
                else RunKey(run.cluster, run.job_id, run.restart_count, run.submit_time)
            )
            try:
                _priced, body = settle_request(
                    card,
                    account=run.account,
                    user=run.user,
                    partition=run.partition,
                    qos=run.qos,
                    tres=run.tres_alloc,
                    elapsed=run.elapsed,
                    state=run.state,
                )
            except CostError as exc:
                report.problems.append(f"run {key.text}: {exc}")
                continue
            body["inputs"]["source"] = "sacct"
            try:
                answer = await self.client.call("POST", f"{BANK}/runs/{key.text}/settle", body)
            except ApiError as exc:
                if exc.code == 409:
                    report.already += 1
                else:
                    report.problems.append(f"run {key.text}: {exc.message}")
                continue
            if answer.get("replayed"):
                report.already += 1
            else:
                report.settled += 1
        return report

    async def reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                report = await self.reconcile(self.settings.reconcile_window)
            except (ApiError, SlurmCommandError, RateCardError) as exc:
                log.warning("bank reconcile: %s", exc)
                continue
            except Exception:
                log.exception("bank reconcile failed")
                continue
            if report.settled or report.problems:
                log.info("bank reconcile: %s", report.summary())

    # ---- spool: settles the bank could not take -------------------------------------------------

    def _spool(self, key: RunKey, body: dict[str, Any], exc: ApiError) -> str:
        directory = self.settings.spool_dir
        if directory is None:
            raise GatewayError(f"slurmlink bank: cannot settle run {key.text}: {exc.message}", 503)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{key.text.replace(':', '_')}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(jsonutil.dumps({"run": key.text, "body": body}))
        tmp.replace(path)
        log.warning("bank unreachable at the end of run %s (%s): spooled to %s", key.text, exc.message, path)
        return f"bank unreachable ({exc.message}); the charge of run {key.text} is spooled and sent later"

    async def send_spooled(self) -> int:
        """Send what the spool holds; returns how many were taken."""
        directory = self.settings.spool_dir
        if directory is None or not directory.is_dir():
            return 0
        taken = 0
        for path in sorted(directory.glob("*.json")):
            try:
                entry = jsonutil.loads(path.read_bytes())
                body = entry["body"]
                if "amount" not in body:  # the rate card was not readable: price it now
                    fields = {k: str(v) for k, v in (entry["body"].get("fields") or {}).items()}
                    job = await self._job(fields)
                    if job.state == "COMPLETING":
                        continue  # its end state is not known yet: next round
                    log.info("spooled: %s", await self._settle(job, fields, spool=False))
                else:
                    await self.client.call("POST", f"{BANK}/runs/{entry['run']}/settle", body)
            except ApiError as exc:
                if exc.code != 409:
                    continue
            except (GatewayError, OSError, ValueError, KeyError) as exc:
                log.warning("spooled settle %s: %s", path.name, exc)
                continue
            path.unlink(missing_ok=True)
            taken += 1
        return taken

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.spool_retry)
            try:
                await self.send_spooled()
            except Exception:
                log.exception("sending spooled settles failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self.run_forever(), name="bank-spool")
        if self.settings.reconcile_interval > 0:
            task = asyncio.create_task(self.reconcile_forever(), name="bank-reconcile")
            self._after.add(task)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._after) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
