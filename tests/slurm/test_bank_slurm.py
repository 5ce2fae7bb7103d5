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
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.cli.quickstart_cmd import Quickstart
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


@pytest.fixture(autouse=True)
def no_jobs_left(qs: QuickStart) -> Iterator[None]:
    """Each test starts with no jobs of the job user's: a pending one would count against the next
    test's balance, however this one ended."""
    yield
    qs.cluster.run_slurm(["scancel", "-u", qs.cluster.job_user], timeout=30)
    wait_for(
        lambda: (
            not qs.cluster.run_slurm(["squeue", "-h", "-u", qs.cluster.job_user], timeout=10).stdout.strip()
        ),
        60,
        0.5,
        message="the job user's jobs to be gone",
    )


def balance(bank: httpx.Client) -> dict[str, Any]:
    r = bank.get(f"{BANK}/accounts/{ACCOUNT}/balance")
    assert r.status_code == 200, r.text
    return dict(r.json())


def set_available(bank: httpx.Client, amount: Decimal) -> None:
    """Adjust the account so that exactly ``amount`` is available (nothing is held meanwhile); the
    gateway's copy follows within its refresh (``fund`` waits for it)."""
    now = Decimal(balance(bank)["available"])
    if now != amount:
        r = bank.post(
            f"{BANK}/accounts/{ACCOUNT}/adjustments",
            json={"amount": str(amount - now), "reason": "test setup"},
        )
        assert r.status_code == 200, r.text


def fund(qs: QuickStart, bank: httpx.Client, amount: Decimal) -> None:
    set_available(bank, amount)
    wait_for(lambda: gateway_sees(qs, amount), 30, 0.5, message=f"the gateway to see {amount} SU")


def gateway_sees(qs: QuickStart, available: Decimal) -> bool:
    """Whether the gateway's copy of the bank and of the queue (refreshed every 2 s) shows the test card,
    ``available`` and no pending jobs: a probe too dear for any account is refused with all three in
    the message."""
    probe = submit_job(qs, "#SBATCH --time=100000\nsleep 1\n")
    if probe.returncode == 0:  # the gateway had no copy yet and let it through: cancel it
        qs.cluster.run_slurm(["scancel", probe.stdout.strip().split(";")[0]], timeout=10)
        return False
    return (
        f"has {available:.2f} SU available, of which 0.00 SU may still be spent" in probe.stderr
        and "test-per-cpu-second" in probe.stderr
    )


def job_lines(bank: httpx.Client, job: str) -> list[dict[str, Any]]:
    items = bank.get(f"{BANK}/accounts/{ACCOUNT}/statement").json()["items"]
    return [line for line in items if str(line["job_id"]) == job]


def sacct(qs: QuickStart, job: str, *fields: str) -> dict[str, str]:
    [row] = qs.cluster.sacct([job], fields)
    return row


def test_a_job_within_budget_is_held_at_start_and_charged_what_it_used(
    qs: QuickStart, bank: httpx.Client
) -> None:
    fund(qs, bank, Decimal(1000))
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


def test_a_running_jobs_longer_time_limit_is_held_for_and_refused_beyond_the_balance(
    qs: QuickStart, bank: httpx.Client
) -> None:
    fund(qs, bank, Decimal(1000))
    job = run_job(qs, "#SBATCH --time=5 -n1\nsleep 600\n")
    wait_running(qs, job)
    wait_for(lambda: balance(bank)["held"] == "300.00", 30, 0.5, message="the hold at start")
    longer = qs.cluster.run_slurm(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], timeout=10)
    assert longer.returncode == 0, longer.stderr
    raised = wait_for(
        lambda: [x for x in job_lines(bank, job) if x["kind"] == "hold" and x["amount"] == "300.00"][1:],
        30,
        0.5,
        message="the hold raised by 5 more minutes",
    )
    run = bank.get(f"{BANK}/runs/{raised[0]['run']}").json()
    assert run["held"] == "600.00" and run["details"]["timeLimit"] == 10
    assert balance(bank)["held"] == "600.00"
    limit = qs.cluster.job_info(job)["TimeLimit"]
    # 30 minutes would cost 1,200.00 SU more, where 400.00 are left: refused, the limit stays.
    refused = qs.cluster.run_slurm(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], timeout=10)
    assert refused.returncode != 0 and "accounting/QOS policy" in refused.stderr
    assert qs.cluster.job_info(job)["TimeLimit"] == limit
    assert balance(bank)["held"] == "600.00"
    # Its end charges what it used and lets the whole raised hold go.
    assert qs.cluster.run_slurm(["scancel", job], timeout=10).returncode == 0
    wait_for(lambda: balance(bank)["held"] == "0.00", 60, 0.5, message="the hold released at the end")
    [charge] = [x for x in job_lines(bank, job) if x["kind"] == "charge"]
    assert Decimal(balance(bank)["available"]) == Decimal(1000) - Decimal(charge["amount"])


def test_a_job_over_budget_is_rejected_at_sbatch_with_balance_and_estimate(
    qs: QuickStart, bank: httpx.Client
) -> None:
    fund(qs, bank, Decimal(1000))
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
    # A pending job's longer time limit is priced again: refused when it no longer fits.
    limit = qs.cluster.job_info(job)["TimeLimit"]  # Slurm's DefaultTime (the card priced its own)
    longer = qs.cluster.run_slurm(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], timeout=10)
    assert longer.returncode != 0 and "accounting/QOS policy" in longer.stderr
    assert qs.cluster.job_info(job)["TimeLimit"] == limit
    shorter = qs.cluster.run_slurm(["scontrol", "update", f"JobId={job}", "TimeLimit=2"], timeout=10)
    assert shorter.returncode == 0, shorter.stderr
    assert "estimate=120.00" in qs.cluster.job_info(job)["AdminComment"]
    qs.cluster.run_slurm(["scancel", job], timeout=10)
    # An array is priced per task.
    array = submit_job(qs, "#SBATCH --time=5 --array=1-4\nsleep 1\n")
    assert array.returncode != 0 and "may cost 1200.00 SU (4 array tasks at 300.00 SU)" in array.stderr


def test_what_pending_jobs_may_spend_counts_against_the_balance(qs: QuickStart, bank: httpx.Client) -> None:
    fund(qs, bank, Decimal(1000))
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
    fund(qs, bank, Decimal(1000))
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
    fund(qs, bank, Decimal(1000))
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


def reconcile(qs: QuickStart, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", "bank", "reconcile", "--json", "--hours", "1", *args],
        env={**os.environ, "SLURM_CONF": str(qs.cluster.slurm_conf), "KUBECONFIG": str(qs.admin)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def wait_running(qs: QuickStart, job: str) -> None:
    wait_for(
        lambda: (qs.cluster.job_info(job) or {}).get("JobState") == "RUNNING",
        60,
        0.2,
        message=f"job {job} to run",
    )


def test_a_requeued_run_is_charged_once_from_accounting(qs: QuickStart, bank: httpx.Client) -> None:
    fund(qs, bank, Decimal(1000))
    job = run_job(qs, "#SBATCH --time=5\nsleep 60\n")
    wait_running(qs, job)
    assert qs.cluster.run_slurm(["scontrol", "requeuehold", job], timeout=10).returncode == 0
    # Its epilog leaves the requeued run to the reconciler (slurmctld now describes the next run).
    wait_for(lambda: sacct(qs, job, "State").get("State") == "REQUEUED", 60, 0.5, message="sacct's REQUEUED")
    first = reconcile(qs, "--job", job)
    assert first["settled"] == 1 and first["problems"] == []
    [charge] = [x for x in job_lines(bank, job) if x["kind"] == "charge"]
    assert charge["run"].split(":")[2] == "0" and charge["inputs"]["endState"] == "REQUEUED"
    assert charge["inputs"]["source"] == "sacct"
    elapsed = int(qs.cluster.sacct([job], ("ElapsedRaw",), duplicates=True)[0]["ElapsedRaw"])
    assert Decimal(charge["amount"]) == Decimal(elapsed)
    assert balance(bank)["held"] == "0.00"
    again = reconcile(qs, "--job", job)
    assert (again["settled"], again["already"]) == (0, 1)
    assert len([x for x in job_lines(bank, job) if x["kind"] == "charge"]) == 1
    qs.cluster.run_slurm(["scancel", job], timeout=10)


def test_a_run_ended_by_a_node_failure_is_refunded_per_policy(qs: QuickStart, bank: httpx.Client) -> None:
    fund(qs, bank, Decimal(1000))
    job = run_job(qs, "#SBATCH --time=5 --no-requeue\nsleep 120\n")
    wait_running(qs, job)
    node = qs.cluster.job_info(job)["NodeList"]
    down = ["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=bank-test"]
    assert qs.cluster.run_slurm(down, timeout=10).returncode == 0
    try:
        qs.cluster.wait_for_job(job, ("NODE_FAIL",), timeout=60)
        lines = wait_for(lambda: [x for x in job_lines(bank, job) if x["kind"] == "charge"], 60, 0.5)
        [charge] = lines
        assert charge["amount"] == "0.00" and charge["inputs"]["policy"] == "refund"
        assert charge["inputs"]["endState"] == "NODE_FAIL"
        assert balance(bank)["available"] == "1000.00"
    finally:
        resume = ["scontrol", "update", f"NodeName={node}", "State=RESUME"]
        qs.cluster.run_slurm(resume, timeout=10)
        wait_for(lambda: (qs.cluster.node_states() or {}).get(node, "").startswith("idle"), 60, 0.5)


def test_with_the_bank_down_jobs_run_and_are_charged_once_when_it_is_back(
    qs: QuickStart, bank: httpx.Client
) -> None:
    fund(qs, bank, Decimal(1000))
    quickstart = [sys.executable, "-m", "slurmlink.cli.main", "quickstart"]
    pid = Quickstart(qs.dir).server_pid()
    assert pid is not None
    os.kill(pid, 15)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, 0.2, message="the server to stop")
    slowest = 0.0
    try:
        job = run_job(qs, "#SBATCH --time=5\nsleep 2\n")  # checked against the gateway's copy
        for _ in range(40):  # squeue answers at once throughout, bank or no bank
            started = time.monotonic()
            assert qs.cluster.run_slurm(["squeue"], timeout=10).returncode == 0
            slowest = max(slowest, time.monotonic() - started)
            if (qs.cluster.job_info(job) or {}).get("JobState") == "COMPLETED":
                break
            time.sleep(0.25)
        qs.cluster.wait_for_job(job, ("COMPLETED",), timeout=60)
        wait_for(lambda: list((qs.dir / "bank-spool").glob("*.json")), 30, 0.5, message="the spooled charge")
    finally:
        up = subprocess.run(
            [*quickstart, "up", *qs.where], capture_output=True, text=True, timeout=300, check=False
        )
        assert up.returncode == 0, up.stderr
    assert slowest < 1.0, f"squeue took {slowest:.2f} s with the bank down"
    # The gateway sends the spool again every 5 s; the reconciler finds it settled.
    lines = wait_for(
        lambda: [x for x in job_lines(bank, job) if x["kind"] == "charge"],
        120,
        0.5,
        message="the spooled charge",
    )
    assert len(lines) == 1 and not list((qs.dir / "bank-spool").glob("*.json"))
    assert all(x["kind"] != "hold" for x in job_lines(bank, job))  # the bank was down at its start
    later = reconcile(qs, "--job", job)
    assert (later["settled"], later["already"]) == (0, 1)
    assert len([x for x in job_lines(bank, job) if x["kind"] == "charge"]) == 1


def test_accounts_are_imported_from_slurms_associations(qs: QuickStart, bank: httpx.Client) -> None:
    assert qs.cluster.sacctmgr(["add", "account", "optics", "Description=lenses"]).returncode == 0
    add_user = ["add", "user", qs.cluster.job_user, "account=optics"]
    assert qs.cluster.sacctmgr(add_user).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", "bank", "import-accounts"],
        env={**os.environ, "SLURM_CONF": str(qs.cluster.slurm_conf), "KUBECONFIG": str(qs.admin)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 bank accounts created" in done.stdout
    optics = bank.get(f"{BANK}/accounts/optics").json()
    assert qs.cluster.job_user in optics["users"] and optics["status"] == "active"
    assert bank.get(f"{BANK}/accounts/optics/balance").json()["available"] == "0.00"


def test_the_ledger_stays_sound(bank: httpx.Client) -> None:
    verdict = bank.get(f"{BANK}/verify").json()
    assert verdict == {"sound": True, "problems": []}
    runs = bank.get(f"{BANK}/runs").json()["items"]
    assert runs and all(r["state"] in ("settled", "released") for r in runs), json.dumps(runs, indent=1)
