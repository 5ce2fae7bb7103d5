"""The bank's Slurm hooks on a real Slurm with accounting storage (the quick start, bank on).

job_submit.lua checks each sbatch against the account's balance minus what its pending jobs may still
spend; PrologSlurmctld holds the run's maximum cost, EpilogSlurmctld charges what it used (checked
against sacct's ElapsedRaw); a job whose account cannot cover it at start is requeued and held with the
bank's reason; each hook run again changes nothing. A test rate card prices one CPU-second at 1 SU, so
seconds of run time show as whole units.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from support.quickstart import QuickStart, finish_job, run_job, running_quickstart, submit_job
from support.waiting import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

BANK = "/bank/v1"
ACCOUNT = "default"
PER_CPU_SECOND_CARD = """\
version = "test-per-cpu-second"
formula = "cpu_hours"

[partition.debug]
price = "3600"
default = true
default_time = 5
max_time = "1-00:00:00"
"""


@pytest.fixture(scope="module")
def qs() -> Iterator[QuickStart]:
    with running_quickstart(
        "bank", compute_nodes=1, storage_nodes=1, accounting=True, extra_args=("--bank",)
    ) as q:
        yield q


@pytest.fixture(scope="module")
def bank(qs: QuickStart) -> Iterator[httpx.Client]:
    client = qs.client()
    r = client.post(f"{BANK}/ratecards", json={"toml": PER_CPU_SECOND_CARD})
    assert r.status_code == 200, r.text
    set_available(client, Decimal(1000))
    wait_for(lambda: gateway_sees(qs, Decimal(1000)), 30, message="the gateway's copy of the bank")
    yield client
    client.close()


def balance(bank: httpx.Client) -> dict[str, Any]:
    r = bank.get(f"{BANK}/accounts/{ACCOUNT}/balance")
    assert r.status_code == 200, r.text
    return dict(r.json())


def set_available(bank: httpx.Client, amount: Decimal) -> None:
    """Adjust the account so that exactly ``amount`` is available (nothing is held meanwhile)."""
    now = Decimal(balance(bank)["available"])
    if now != amount:
        r = bank.post(
            f"{BANK}/accounts/{ACCOUNT}/adjustments",
            json={"amount": str(amount - now), "reason": "test setup"},
        )
        assert r.status_code == 200, r.text


def gateway_sees(qs: QuickStart, available: Decimal) -> bool:
    """Whether the gateway's copy of the bank (refreshed every 2 s) shows the test card and ``available``:
    a probe too dear for any account is refused with both in the message."""
    probe = submit_job(qs, "#SBATCH --time=100000\nsleep 1\n")
    if probe.returncode == 0:  # the gateway had no copy yet and let it through: cancel it
        qs.cluster.run_slurm(["scancel", probe.stdout.strip().split(";")[0]], timeout=10)
        return False
    return f"has {available:.2f} SU available" in probe.stderr and "test-per-cpu-second" in probe.stderr


def job_lines(bank: httpx.Client, job: str) -> list[dict[str, Any]]:
    items = bank.get(f"{BANK}/accounts/{ACCOUNT}/statement").json()["items"]
    return [line for line in items if str(line["job_id"]) == job]


def sacct(qs: QuickStart, job: str, *fields: str) -> dict[str, str]:
    [row] = qs.cluster.sacct([job], fields)
    return row


def test_a_job_within_budget_is_held_at_start_and_charged_what_it_used(
    qs: QuickStart, bank: httpx.Client
) -> None:
    set_available(bank, Decimal(1000))
    before = balance(bank)
    job = run_job(qs, "#SBATCH --time=5 -n1\nsleep 3\n")
    finish_job(qs, job)
    lines = wait_for(
        lambda: [x for x in job_lines(bank, job) if x["kind"] == "charge"] and job_lines(bank, job), 30
    )
    assert [x["kind"] for x in lines] == ["hold", "charge"]
    hold, charge = lines
    assert hold["amount"] == "300.00"  # 5 minutes x 1 CPU x 1 SU per CPU-second
    elapsed = int(sacct(qs, job, "ElapsedRaw", "AllocTRES")["ElapsedRaw"])
    assert Decimal(charge["amount"]) == Decimal(elapsed)  # what it used, to the second
    assert 3 <= elapsed <= 30
    assert charge["rate_card_version"] == "test-per-cpu-second"
    assert charge["inputs"]["elapsedSeconds"] == elapsed and charge["inputs"]["endState"] == "COMPLETED"
    after = balance(bank)
    assert Decimal(after["available"]) == Decimal(before["available"]) - Decimal(elapsed)
    assert after["held"] == "0.00"
    comment = qs.cluster.job_info(job)["AdminComment"]
    assert "slurmlink-bank:estimate=300.00" in comment


def test_a_job_over_budget_is_rejected_at_sbatch_with_balance_and_estimate(
    qs: QuickStart, bank: httpx.Client
) -> None:
    set_available(bank, Decimal(1000))
    wait_for(lambda: gateway_sees(qs, Decimal(1000)), 20)
    refused = submit_job(qs, "#SBATCH --time=20\nsleep 1\n")
    assert refused.returncode != 0
    assert (
        "may cost 1200.00 SU" in refused.stderr
        and f"account {ACCOUNT} has 1000.00 SU available" in refused.stderr
    )
    assert "accounting/QOS policy" in refused.stderr  # Slurm's own line follows the bank's
    # No --time: priced at the partition's default (the card's default_time, Slurm's DefaultTime).
    quoted = submit_job(qs, "sleep 1\n", "--hold")
    assert quoted.returncode == 0, quoted.stderr
    job = quoted.stdout.strip().split(";")[0]
    assert "estimate=300.00" in qs.cluster.job_info(job)["AdminComment"]
    qs.cluster.run_slurm(["scancel", job], timeout=10)


def test_what_pending_jobs_may_spend_counts_against_the_balance(qs: QuickStart, bank: httpx.Client) -> None:
    set_available(bank, Decimal(1000))
    wait_for(lambda: gateway_sees(qs, Decimal(1000)), 20)
    held = [run_job(qs, "sleep 1\n", "--hold", "--time=8") for _ in range(2)]  # 480 + 480 pending
    refused = submit_job(qs, "sleep 1\n", "--hold", "--time=1")  # 60 > 1000 - 960
    assert refused.returncode != 0 and "960.00 SU may still be spent by its pending jobs" in refused.stderr
    qs.cluster.run_slurm(["scancel", held[0]], timeout=10)

    def accepted() -> str | None:
        # slurm.jobs is refreshed when slurmctld's job table changes, to the second: a submission in
        # the second of the cancel may still count the cancelled job.
        done = submit_job(qs, "sleep 1\n", "--hold", "--time=1")
        return done.stdout.strip().split(";")[0] if done.returncode == 0 else None

    job = wait_for(accepted, 10, interval=0.5, message="the cancelled job to stop counting")
    qs.cluster.run_slurm(["scancel", held[1], job], timeout=10)


def test_each_hook_run_again_changes_nothing(qs: QuickStart, bank: httpx.Client) -> None:
    set_available(bank, Decimal(1000))
    job = run_job(qs, "#SBATCH --time=2\nsleep 1\n")
    finish_job(qs, job)
    wait_for(lambda: any(x["kind"] == "charge" for x in job_lines(bank, job)), 30)
    before = (job_lines(bank, job), balance(bank))
    env = {
        **os.environ,
        "SLURM_CONF": str(qs.cluster.slurm_conf),
        "SLURM_JOB_ID": job,
        "SLURM_CLUSTER_NAME": qs.cluster.cluster_name,
        "SLURM_JOB_RESTART_COUNT": "0",
    }
    for hook in ("prolog", "epilog", "prolog", "epilog"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "slurmlink.slurm.bank_hook",
                "--socket",
                str(qs.cluster.gateway_socket),
                hook,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert (job_lines(bank, job), balance(bank)) == before


def test_a_job_its_account_cannot_cover_at_start_is_held_with_the_reason(
    qs: QuickStart, bank: httpx.Client
) -> None:
    set_available(bank, Decimal(1000))
    job = run_job(qs, "sleep 1\n", "--hold", "--time=10")  # 600 accepted at submission
    set_available(bank, Decimal(100))  # then the account shrinks
    qs.cluster.run_slurm(["scontrol", "release", job], timeout=10)

    def held_by_the_bank() -> dict[str, str] | None:
        info = qs.cluster.job_info(job) or {}
        held = info.get("Reason") == "JobHeldAdmin" and "not started" in info.get("AdminComment", "")
        return info if held else None

    info = wait_for(held_by_the_bank, 60)
    assert info["JobState"] == "PENDING"
    assert "not started" in info["AdminComment"] and "100.00 SU available" in info["AdminComment"]
    assert "needs 600.00 SU" in info["AdminComment"]
    # The job's user sees it too.
    shown = qs.cluster.run_as_job_user(["scontrol", "show", "job", job], timeout=10).stdout
    assert "not started" in shown and "100.00 SU available" in shown
    assert all(x["kind"] != "hold" or x["amount"] == "0.00" for x in job_lines(bank, job))
    assert balance(bank)["available"] == "100.00"  # nothing held, nothing charged
    qs.cluster.run_slurm(["scancel", job], timeout=10)


def test_the_ledger_stays_sound(bank: httpx.Client) -> None:
    verdict = bank.get(f"{BANK}/verify").json()
    assert verdict == {"sound": True, "problems": []}
    runs = bank.get(f"{BANK}/runs").json()["items"]
    assert runs and all(r["state"] in ("settled", "released") for r in runs), json.dumps(runs, indent=1)
