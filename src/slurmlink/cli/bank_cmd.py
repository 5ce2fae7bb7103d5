"""``slurmlink bank ...`` (accounts, grants, balances, statements, refunds, transfers) and
``slurmlink balance`` (what a user runs on a login node).

Every command talks to the bank's REST API (``/bank/v1``) with the kubeconfig's credentials, so the
server decides who may do what. Writes send an ``Idempotency-Key`` (``--idempotency-key``, or a new
one per invocation, printed so a retry after a lost answer can reuse it). ``--json`` prints the
API's answer for scripts; without it, tables.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as url_quote

import click

from slurmlink.cli.resources_cmd import kubeconfig_options, run_with_client

if TYPE_CHECKING:
    from slurmlink.client.http import HttpClient

PREFIX = "/bank/v1"


def _path(*parts: str) -> str:
    return PREFIX + "".join("/" + url_quote(part, safe=":") for part in parts)


def _request(
    kubeconfig: Path | None,
    context: str | None,
    method: str,
    path: str,
    body: Any = None,
    *,
    params: dict[str, str] | None = None,
    key: str | None = None,
) -> Any:
    headers = {"Idempotency-Key": key} if key else None

    async def call(client: HttpClient) -> Any:
        return await client.call(method, path, body, params=params, headers=headers)

    return run_with_client(kubeconfig, context, call)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    from rich.table import Table

    from slurmlink.cli.output import Out, cell

    table = Table(box=None, title=title, title_justify="left", pad_edge=False)
    for header in headers:
        numeric = header in ("AMOUNT", "AVAILABLE", "HELD", "SPENT", "GRANTED", "CHARGED", "AFTER", "CAP")
        table.add_column(header, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    Out().print(table)


def _new_key(given: str | None) -> str:
    return given or uuid.uuid4().hex


def _key_option(func: Any) -> Any:
    return click.option(
        "--idempotency-key",
        "key",
        metavar="KEY",
        help="Make the request safe to repeat: the same key returns the first answer (default: a new key).",
    )(func)


def _json_option(func: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")(func)


@click.group()
def bank() -> None:
    """Service units per Slurm account: accounts, grants, balances, statements, refunds."""


# ---- accounts ----------------------------------------------------------------------------------


@bank.group()
def account() -> None:
    """Create, list and change bank accounts (one per Slurm account)."""


@account.command("create")
@click.argument("name")
@click.option("--parent", help="Parent account (for reporting).")
@click.option("--overdraft-limit", default="0", show_default=True, help="How far below 0 the account may go.")
@click.option("--description", default="", help="Free text shown with the account.")
@click.option(
    "--slurm/--no-slurm",
    "with_slurm",
    default=True,
    show_default=True,
    help="Also create the Slurm account with sacctmgr when it does not exist.",
)
@_json_option
@kubeconfig_options
def account_create(
    name: str,
    parent: str | None,
    overdraft_limit: str,
    description: str,
    with_slurm: bool,
    as_json: bool,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Create the bank account NAME (and, with --slurm, the Slurm account of that name)."""
    body = {"name": name, "parent": parent, "overdraftLimit": overdraft_limit, "description": description}
    created = _request(kubeconfig, context, "POST", _path("accounts"), body)
    note = ""
    if with_slurm:
        from slurmlink.slurm import sacctmgr

        note = sacctmgr.ensure_account(name, parent=parent, description=description)
    if as_json:
        _emit_json({**created, "slurm": note})
        return
    click.echo(f"bank account {created['name']} created on cluster {created['cluster']}")
    if note:
        click.echo(note)


@account.command("list")
@_json_option
@kubeconfig_options
def account_list(as_json: bool, kubeconfig: Path | None, context: str | None) -> None:
    """The accounts the caller may read, with their balances."""
    items = _request(kubeconfig, context, "GET", _path("accounts"))["items"]
    balances = [_request(kubeconfig, context, "GET", _path("accounts", a["name"], "balance")) for a in items]
    if as_json:
        _emit_json({"items": [{**a, "balance": b} for a, b in zip(items, balances, strict=True)]})
        return
    _table(
        ["ACCOUNT", "STATUS", "AVAILABLE", "HELD", "SPENT", "GRANTED", "USERS"],
        [
            [
                a["name"],
                a["status"],
                b["available"],
                b["held"],
                b["spent"],
                b["granted"],
                ",".join(a["users"]),
            ]
            for a, b in zip(items, balances, strict=True)
        ],
    )


@account.command("show")
@click.argument("name")
@_json_option
@kubeconfig_options
def account_show(name: str, as_json: bool, kubeconfig: Path | None, context: str | None) -> None:
    """One account: settings, balance, allocations."""
    info = _request(kubeconfig, context, "GET", _path("accounts", name))
    balance = _request(kubeconfig, context, "GET", _path("accounts", name, "balance"))
    allocations = _request(kubeconfig, context, "GET", _path("accounts", name, "allocations"))["items"]
    if as_json:
        _emit_json({**info, "balance": balance, "allocations": allocations})
        return
    click.echo(f"Account:    {info['name']} (cluster {info['cluster']})")
    click.echo(f"Status:     {info['status']}")
    if info.get("parent"):
        click.echo(f"Parent:     {info['parent']}")
    click.echo(f"Available:  {balance['available']}   held {balance['held']}   spent {balance['spent']}")
    click.echo(f"Overdraft:  {info['overdraftLimit']}")
    users = ", ".join(
        f"{u} (cap {info['userCaps'][u]})" if u in info["userCaps"] else u for u in info["users"]
    )
    click.echo(f"Users:      {users or '-'}")
    if allocations:
        _table(
            ["ID", "KIND", "AMOUNT", "AVAILABLE", "HELD", "SPENT", "STARTS", "ENDS", "STATE"],
            [
                [
                    a["id"],
                    a["kind"],
                    a["amount"],
                    a["available"],
                    a["held"],
                    a["spent"],
                    a["startsAt"][:10],
                    (a["endsAt"] or "")[:10],
                    a["state"],
                ]
                for a in allocations
            ],
            title="Allocations",
        )


@account.command("set")
@click.argument("name")
@click.option("--overdraft-limit", help="How far below 0 the account may go.")
@click.option(
    "--status", type=click.Choice(["active", "locked"]), help="A locked account starts no new jobs."
)
@kubeconfig_options
def account_set(
    name: str, overdraft_limit: str | None, status: str | None, kubeconfig: Path | None, context: str | None
) -> None:
    """Change an account's overdraft limit or status."""
    body: dict[str, Any] = {}
    if overdraft_limit is not None:
        body["overdraftLimit"] = overdraft_limit
    if status is not None:
        body["status"] = status
    if not body:
        raise click.UsageError("give --overdraft-limit or --status")
    info = _request(kubeconfig, context, "PATCH", _path("accounts", name), body)
    click.echo(
        f"bank account {info['name']}: status {info['status']}, overdraft limit {info['overdraftLimit']}"
    )


@account.command("add-user")
@click.argument("name")
@click.argument("user")
@click.option("--cap", help="The most USER may hold and spend in this account.")
@kubeconfig_options
def account_add_user(
    name: str, user: str, cap: str | None, kubeconfig: Path | None, context: str | None
) -> None:
    """Let USER see account NAME (and optionally cap what they may use of it)."""
    body = {"cap": cap} if cap is not None else {}
    _request(kubeconfig, context, "PUT", _path("accounts", name, "users", user), body)
    click.echo(f"{user} is a user of bank account {name}" + (f" (cap {cap})" if cap else ""))


@account.command("remove-user")
@click.argument("name")
@click.argument("user")
@kubeconfig_options
def account_remove_user(name: str, user: str, kubeconfig: Path | None, context: str | None) -> None:
    """USER no longer belongs to account NAME (their past charges stay on it)."""
    _request(kubeconfig, context, "DELETE", _path("accounts", name, "users", user))
    click.echo(f"{user} removed from bank account {name}")


# ---- money -------------------------------------------------------------------------------------


@bank.command()
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("amount")
@click.option("--starts", help="When the allocation becomes usable (ISO 8601; default now).")
@click.option("--ends", help="When it expires (ISO 8601; default never).")
@click.option("--priority", type=int, default=0, show_default=True, help="Draw order among equal end dates.")
@click.option("--reference", default="", help="Where the grant comes from (proposal, award id).")
@click.option(
    "--rollover",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="Percent of what is left at --ends that moves into a new allocation of the same length.",
)
@_key_option
@_json_option
@kubeconfig_options
def grant(
    account_name: str,
    amount: str,
    starts: str | None,
    ends: str | None,
    priority: int,
    reference: str,
    rollover: int,
    key: str | None,
    as_json: bool,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Grant AMOUNT service units to ACCOUNT (a new allocation)."""
    body = {
        "amount": amount,
        "startsAt": starts,
        "endsAt": ends,
        "priority": priority,
        "reference": reference,
        "rolloverPercent": rollover,
    }
    key = _new_key(key)
    result = _request(kubeconfig, context, "POST", _path("accounts", account_name, "grants"), body, key=key)
    if as_json:
        _emit_json(result)
        return
    again = " (already done with this key)" if result.get("replayed") else ""
    click.echo(
        f"granted {result['amount']} SU to {account_name}{again}: available {result['available']} "
        f"[idempotency key {key}]"
    )


@bank.command()
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("amount")
@click.option("--reason", required=True, help="Why (kept in the statement).")
@_key_option
@kubeconfig_options
def adjust(
    account_name: str, amount: str, reason: str, key: str | None, kubeconfig: Path | None, context: str | None
) -> None:
    """Correct ACCOUNT's balance by AMOUNT (negative to take units away)."""
    key = _new_key(key)
    body = {"amount": amount, "reason": reason}
    result = _request(
        kubeconfig, context, "POST", _path("accounts", account_name, "adjustments"), body, key=key
    )
    after = result["available"]
    click.echo(f"adjusted {account_name} by {result['amount']}: available {after} [idempotency key {key}]")


@bank.command()
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@click.argument("amount")
@click.option("--reason", default="", help="Why (kept in both statements).")
@click.option("--ends", help="When the moved units expire (default: as where they came from).")
@_key_option
@kubeconfig_options
def transfer(
    source: str,
    target: str,
    amount: str,
    reason: str,
    ends: str | None,
    key: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Move AMOUNT available service units from account FROM to account TO."""
    key = _new_key(key)
    body = {"from": source, "to": target, "amount": amount, "reason": reason, "endsAt": ends}
    result = _request(kubeconfig, context, "POST", _path("transfers"), body, key=key)
    click.echo(f"moved {result['amount']} SU from {source} to {target} [idempotency key {key}]")


@bank.command()
@click.argument("run")
@click.option("--account", "account_name", required=True, help="The account the run was charged to.")
@click.option("--reason", required=True, help="Why (e.g. NODE_FAIL).")
@click.option("--amount", help="How much (default: all the run was charged, net).")
@_key_option
@kubeconfig_options
def refund(
    run: str,
    account_name: str,
    reason: str,
    amount: str | None,
    key: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Refund a job run (RUN is CLUSTER:JOBID:RESTARTCOUNT:SUBMITTIME, as `bank runs` lists it)."""
    body: dict[str, Any] = {"account": account_name, "reason": reason}
    if amount is not None:
        body["amount"] = amount
    result = _request(kubeconfig, context, "POST", _path("runs", run, "refunds"), body, key=key)
    click.echo(
        f"refunded {result['refunded']} SU of run {run} to {account_name}: available {result['available']}"
    )


# ---- reading -----------------------------------------------------------------------------------


@bank.command()
@click.argument("account_name", metavar="ACCOUNT")
@_json_option
@kubeconfig_options
def balance(account_name: str, as_json: bool, kubeconfig: Path | None, context: str | None) -> None:
    """ACCOUNT's balance: available, held by running jobs, spent, granted."""
    b = _request(kubeconfig, context, "GET", _path("accounts", account_name, "balance"))
    if as_json:
        _emit_json(b)
        return
    _table(
        ["ACCOUNT", "STATUS", "AVAILABLE", "HELD", "SPENT", "GRANTED"],
        [[b["account"], b["status"], b["available"], b["held"], b["spent"], b["granted"]]],
    )


@bank.command()
@click.argument("account_name", metavar="ACCOUNT")
@click.option("--since", help="Only lines from this time on (ISO 8601).")
@click.option("--limit", type=int, default=1000, show_default=True)
@_json_option
@kubeconfig_options
def statement(
    account_name: str,
    since: str | None,
    limit: int,
    as_json: bool,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """ACCOUNT's transactions, oldest first: grants, holds, charges, refunds, with the job of each."""
    params = {"limit": str(limit), **({"since": since} if since else {})}
    items = _request(kubeconfig, context, "GET", _path("accounts", account_name, "statement"), params=params)[
        "items"
    ]
    if as_json:
        _emit_json(items)
        return
    _table(
        ["TIME", "KIND", "AMOUNT", "AFTER", "JOB", "USER", "RATES", "BY"],
        [
            [
                line["at"][:19].replace("T", " "),
                line["kind"],
                line["amount"],
                line["available_after"],
                line["job_id"] or "",
                line["user"] or "",
                line["rate_card_version"] or "",
                line["actor"],
            ]
            for line in items
        ],
    )


@bank.command()
@click.option("--account", "account_name", help="Only this account's runs.")
@click.option("--state", type=click.Choice(["held", "settled", "released"]), help="Only runs in this state.")
@_json_option
@kubeconfig_options
def runs(
    account_name: str | None, state: str | None, as_json: bool, kubeconfig: Path | None, context: str | None
) -> None:
    """Job runs the bank knows: what each holds, was charged and refunded."""
    params = {k: v for k, v in (("account", account_name), ("state", state)) if v}
    items = _request(kubeconfig, context, "GET", _path("runs"), params=params)["items"]
    if as_json:
        _emit_json(items)
        return
    _table(
        ["RUN", "ACCOUNT", "USER", "STATE", "HELD", "CHARGED", "REFUNDED"],
        [
            [r["run"], r["account"], r["user"], r["state"], r["held"], r["charged"], r["refunded"]]
            for r in items
        ],
    )


@bank.command()
@kubeconfig_options
def verify(kubeconfig: Path | None, context: str | None) -> None:
    """Check the ledger's invariants over everything it holds; exit 1 if any is broken."""
    result = _request(kubeconfig, context, "GET", _path("verify"))
    if result["sound"]:
        click.echo(
            "the ledger is sound: every transaction sums to zero, no bucket disagrees with its entries"
        )
        return
    for problem in result["problems"]:
        click.echo(problem, err=True)
    raise SystemExit(1)


@bank.command()
@kubeconfig_options
def expire(kubeconfig: Path | None, context: str | None) -> None:
    """Close the allocations past their end now (the server also does this periodically)."""
    items = _request(kubeconfig, context, "POST", _path("expiry"))["items"]
    for item in items:
        click.echo(f"allocation {item['allocation']} of {item['account']}: {item['expired']} SU expired")
    if not items:
        click.echo("no allocation was due")


@click.command("balance")
@_json_option
@kubeconfig_options
def user_balance(as_json: bool, kubeconfig: Path | None, context: str | None) -> None:
    """Your accounts: available, held by your running jobs, spent, and what your pending jobs may still
    cost (their estimates, from squeue, when Slurm's commands are here)."""
    items = _request(kubeconfig, context, "GET", _path("accounts"))["items"]
    balances = [_request(kubeconfig, context, "GET", _path("accounts", a["name"], "balance")) for a in items]
    pending = _my_pending_estimates()
    for b in balances:
        b["pendingJobs"] = str(pending.get(b["account"], "0.00")) if pending is not None else None
    if as_json:
        _emit_json(balances)
        return
    if not balances:
        click.echo("you belong to no bank account yet; ask your allocation manager")
        return
    _table(
        ["ACCOUNT", "STATUS", "AVAILABLE", "HELD", "SPENT", "PENDING JOBS"],
        [
            [b["account"], b["status"], b["available"], b["held"], b["spent"], b["pendingJobs"] or "-"]
            for b in balances
        ],
    )


def _my_pending_estimates() -> dict[str, Any] | None:
    """Account -> what the caller's pending jobs may cost (job_submit.lua's estimates); None without
    Slurm's commands or an answer from slurmctld."""
    import shutil
    import subprocess
    from decimal import Decimal

    from slurmlink.slurm.jobrecord import parse_squeue_jobs

    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        done = subprocess.run(
            [squeue, "--json", "--me", "--states=PENDING"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        jobs = parse_squeue_jobs(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    if jobs is None:
        return None
    totals: dict[str, Decimal] = {}
    for job in jobs:
        for word in job.admin_comment.split():
            if word.startswith("slurmlink-bank:estimate="):
                amount = Decimal(word.split("=", 1)[1])
                totals[job.account] = totals.get(job.account, Decimal(0)) + amount
    return {account: f"{amount:.2f}" for account, amount in totals.items()}


# ---- rate cards and quotes ---------------------------------------------------------------------


@bank.group()
def ratecard() -> None:
    """Import and read the versioned rate cards charges are priced with."""


@ratecard.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--current/--not-current", default=True, show_default=True, help="Price new quotes and charges with it."
)
@kubeconfig_options
def ratecard_import(file: Path, current: bool, kubeconfig: Path | None, context: str | None) -> None:
    """Import FILE: slurmlink's rate-card TOML, or the seed's bank-config.toml ([PartitionPrice])."""
    body = {"toml": file.read_text(), "name": str(file), "current": current}
    result = _request(kubeconfig, context, "POST", _path("ratecards"), body)
    state = "imported" if result["new"] else "already known"
    click.echo(f"rate card {result['version']} {state}" + ("; it is now the current one" if current else ""))


@ratecard.command("list")
@_json_option
@kubeconfig_options
def ratecard_list(as_json: bool, kubeconfig: Path | None, context: str | None) -> None:
    """The rate cards imported so far; the current one is marked."""
    items = _request(kubeconfig, context, "GET", _path("ratecards"))["items"]
    if as_json:
        _emit_json(items)
        return
    _table(
        ["VERSION", "CURRENT", "IMPORTED", "BY"],
        [[c["version"], "*" if c["current"] else "", c["importedAt"][:19], c["importedBy"]] for c in items],
    )


@ratecard.command("show")
@click.argument("version", default="current")
@kubeconfig_options
def ratecard_show(version: str, kubeconfig: Path | None, context: str | None) -> None:
    """One rate card (the current one by default), as JSON."""
    _emit_json(_request(kubeconfig, context, "GET", _path("ratecards", version)))


@bank.command(context_settings={"ignore_unknown_options": True})
@click.argument("script", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("sbatch_options", nargs=-1, type=click.UNPROCESSED)
@click.option("--rate-card", "version", help="Price with this rate-card version (default: the current one).")
@_json_option
@kubeconfig_options
def quote(
    script: Path,
    sbatch_options: tuple[str, ...],
    version: str | None,
    as_json: bool,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """What SCRIPT may cost (its #SBATCH lines; sbatch options after it override them, as in sbatch).

    Example: slurmlink bank quote job.sh -p gpu -t 2:00:00
    """
    from slurmlink.bank import sbatch
    from slurmlink.bank.errors import BankError

    try:
        fields = sbatch.job_fields([*sbatch.directives(script.read_text()), *sbatch_options])
    except BankError as exc:
        raise click.ClickException(str(exc)) from exc
    body: dict[str, Any] = {"job": fields}
    if version:
        body["rateCardVersion"] = version
    result = _request(kubeconfig, context, "POST", _path("quote"), body)
    if as_json:
        _emit_json(result)
        return
    tasks = f" ({result['tasks']} array tasks at {result['perTask']})" if result["tasks"] > 1 else ""
    click.echo(f"estimate: {result['amount']} SU{tasks} on partition {result['partition']}")
    click.echo(f"rate card: {result['rateCardVersion']}")
    if "available" in result:
        verdict = "fits" if result["fits"] else "does NOT fit"
        click.echo(f"account {result['account']}: {result['available']} SU available; this job {verdict}")


@bank.command()
@click.option(
    "--hours",
    type=click.FloatRange(min=0.01),
    default=48.0,
    show_default=True,
    help="Look at runs that ended this many hours back.",
)
@click.option("--job", "jobs", type=int, multiple=True, help="Only this job id (repeatable).")
@click.option(
    "--slurm-conf",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="slurm.conf of the cluster (default: $SLURM_CONF, else /etc/slurm/slurm.conf).",
)
@_json_option
@kubeconfig_options
def reconcile(
    hours: float,
    jobs: tuple[int, ...],
    slurm_conf: Path | None,
    as_json: bool,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Settle from Slurm's accounting (sacct -D) every run the bank has not charged.

    Runs on a host with Slurm's commands and needs accounting storage (slurmdbd). Each run is settled
    once, by its key: running it again, or next to the gateway's own periodic reconciliation, changes
    nothing.
    """
    import asyncio
    import os

    from slurmlink.cli.resources_cmd import CliError, error_text, open_client
    from slurmlink.resources.errors import ApiError
    from slurmlink.slurm.commands import SlurmCommandError, SlurmCommands
    from slurmlink.slurm.gateway.bank import BankHooks, ReconcileReport
    from slurmlink.slurm.gateway.banksettings import BankSettings

    conf = slurm_conf or Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))

    async def run() -> ReconcileReport:
        client = open_client(kubeconfig, context)
        try:
            hooks = BankHooks(client, SlurmCommands(conf, timeout=300), BankSettings(reconcile_interval=0))
            return await hooks.reconcile(int(hours * 3600), jobs)
        finally:
            await client.aclose()

    try:
        report = asyncio.run(run())
    except ApiError as exc:
        raise CliError(error_text(exc)) from exc
    except SlurmCommandError as exc:
        raise CliError(f"error: {exc} (the reconciler needs Slurm's accounting storage, slurmdbd)") from exc
    if as_json:
        _emit_json(
            {
                "seen": report.seen,
                "settled": report.settled,
                "already": report.already,
                "problems": report.problems,
            }
        )
    else:
        click.echo(report.summary())
    if report.problems:
        raise SystemExit(1)


@bank.command("import-accounts")
@click.option("--cluster", help="Only this cluster's associations (default: every cluster slurmdbd has).")
@kubeconfig_options
def import_accounts(cluster: str | None, kubeconfig: Path | None, context: str | None) -> None:
    """Create a bank account for every Slurm account (sacctmgr's associations), with its users as
    members and its parent; accounts that exist are kept (their users are added). Grants are yours to make."""
    from slurmlink.cli.resources_cmd import CliError
    from slurmlink.slurm import sacctmgr

    try:
        found = sacctmgr.associations(cluster)
    except sacctmgr.SacctmgrError as exc:
        raise click.ClickException(str(exc)) from exc
    parents = {a.account: a.parent for a in found if not a.user}
    users: dict[str, set[str]] = {}
    for assoc in found:
        users.setdefault(assoc.account, set())
        if assoc.user:
            users[assoc.account].add(assoc.user)
    existing = {a["name"] for a in _request(kubeconfig, context, "GET", _path("accounts"))["items"]}
    created = 0
    for account in _parents_first(parents):
        if account == "root":
            continue  # Slurm's own root account holds no units
        if account not in existing:
            parent = parents.get(account)
            body = {"name": account, "parent": parent if parent and parent != "root" else None}
            try:
                _request(kubeconfig, context, "POST", _path("accounts"), body)
            except CliError as exc:
                raise click.ClickException(f"account {account}: {exc.message}") from exc
            created += 1
        for user in sorted(users.get(account, ())):
            _request(kubeconfig, context, "PUT", _path("accounts", account, "users", user), {})
    kept = len([a for a in parents if a != "root"]) - created
    click.echo(f"{created} bank accounts created, {kept} existed already")


def _parents_first(parents: dict[str, str]) -> list[str]:
    """Accounts ordered so that each comes after its parent."""
    ordered: list[str] = []
    placed: set[str] = set()

    def place(name: str, depth: int = 0) -> None:
        if name in placed or depth > 100:
            return
        parent = parents.get(name)
        if parent and parent in parents:
            place(parent, depth + 1)
        placed.add(name)
        ordered.append(name)

    for name in sorted(parents):
        place(name)
    return ordered
