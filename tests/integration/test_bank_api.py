"""The bank's REST API and CLI against a real server: roles, idempotency, errors where users look.

An accountant grants with ``slurmlink bank``; the workload manager's credentials hold and settle
runs over ``/bank/v1``; an HPC user (a real Unix account with a ``user`` kubeconfig) sees the
accounts they belong to and only their own jobs' lines; a viewer reads but cannot grant.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.server import ServerProcess
from support.unix_users import ensure_unix_user

BANK = "/bank/v1"
ALICE, BOB = "slbank-alice", "slbank-bob"


def cli(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"slurmlink {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def creds(server: ServerProcess) -> dict[str, Path]:
    ensure_unix_user(ALICE)
    ensure_unix_user(BOB)
    return {
        "admin": server.kubeconfig,
        "accountant": server.issue_kubeconfig("treasurer", "accountant"),
        "wlm": server.issue_kubeconfig("slurm", "workload-manager", token=True),
        "viewer": server.issue_kubeconfig("auditor", "viewer"),
        ALICE: server.issue_kubeconfig(ALICE, "user"),
        BOB: server.issue_kubeconfig(BOB, "user", token=True),
    }


@pytest.fixture(scope="module")
def http(server: ServerProcess, creds: dict[str, Path]) -> Iterator[dict[str, httpx.Client]]:
    clients = {who: server.client(path) for who, path in creds.items()}
    yield clients
    for client in clients.values():
        client.close()


def run_of(job: int) -> str:
    return f"cluster:{job}:0:{1_733_000_000 + job}"


def hold(c: httpx.Client, job: int, account: str, user: str, amount: str) -> httpx.Response:
    body = {"account": account, "user": user, "amount": amount}
    return c.post(f"{BANK}/runs/{run_of(job)}/hold", json=body)


def settle(c: httpx.Client, job: int, account: str, user: str, amount: str, **extra: Any) -> httpx.Response:
    body = {"account": account, "user": user, "amount": amount, **extra}
    return c.post(f"{BANK}/runs/{run_of(job)}/settle", json=body)


def test_an_accountant_grants_the_hooks_hold_and_settle_and_the_statement_shows_it(
    creds: dict[str, Path], http: dict[str, httpx.Client]
) -> None:
    accountant = creds["accountant"]
    made = json.loads(cli(accountant, "bank", "account", "create", "optics", "--no-slurm", "--json").stdout)
    assert made["name"] == "optics" and made["status"] == "active"
    again = cli(creds["accountant"], "bank", "account", "create", "optics", "--no-slurm", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    out = cli(accountant, "bank", "grant", "optics", "250.00", "--idempotency-key", "award-17").stdout
    assert "granted 250.00 SU to optics" in out and "award-17" in out
    replay = cli(accountant, "bank", "grant", "optics", "250.00", "--idempotency-key", "award-17").stdout
    assert "already done with this key" in replay
    cli(creds["accountant"], "bank", "account", "add-user", "optics", ALICE)

    wlm = http["wlm"]
    r = hold(wlm, 101, "optics", ALICE, "40.00")
    assert r.status_code == 200, r.text
    assert r.json()["held"] == "40.00"
    inputs = {"cpus": 8, "hours": "2.5", "price": "1.00"}
    r = settle(wlm, 101, "optics", ALICE, "20.00", rateCardVersion="rc-7", inputs=inputs)
    assert r.status_code == 200 and r.json()["charged"] == "20.00", r.text

    balance = json.loads(cli(creds["viewer"], "bank", "balance", "optics", "--json").stdout)
    assert (balance["available"], balance["held"], balance["spent"]) == ("230.00", "0.00", "20.00")
    lines = json.loads(cli(creds["accountant"], "bank", "statement", "optics", "--json").stdout)
    assert [(x["kind"], x["amount"], x["job_id"]) for x in lines] == [
        ("grant", "250.00", None),
        ("hold", "40.00", 101),
        ("charge", "20.00", 101),
    ]
    assert lines[-1]["rate_card_version"] == "rc-7" and lines[-1]["inputs"] == inputs
    table = cli(creds["accountant"], "bank", "statement", "optics").stdout
    assert "charge" in table and "rc-7" in table and "101" in table


def test_refusals_carry_the_numbers_and_retries_are_answered_once(
    creds: dict[str, Path], http: dict[str, httpx.Client]
) -> None:
    cli(creds["accountant"], "bank", "account", "create", "tiny", "--no-slurm")
    cli(creds["accountant"], "bank", "grant", "tiny", "5")
    wlm = http["wlm"]
    r = hold(wlm, 201, "tiny", BOB, "9.00")
    assert r.status_code == 402
    assert r.json()["reason"] == "InsufficientFunds"
    assert "tiny has 5.00 SU available" in r.json()["message"] and "needs 9.00" in r.json()["message"]
    first = hold(wlm, 202, "tiny", BOB, "2.00").json()
    second = hold(wlm, 202, "tiny", BOB, "2.00").json()
    assert second["replayed"] and second["transaction"] == first["transaction"]
    conflict = hold(wlm, 202, "tiny", BOB, "3.00")
    assert conflict.status_code == 409 and "first one stands" in conflict.json()["message"]
    bad = wlm.post(f"{BANK}/runs/12345/hold", json={"account": "tiny", "user": BOB, "amount": "1"})
    assert bad.status_code == 400 and "CLUSTER:JOBID:RESTARTCOUNT:SUBMITTIME" in bad.json()["message"]
    floaty = wlm.post(f"{BANK}/runs/{run_of(203)}/hold", json={"account": "tiny", "user": BOB, "amount": 1.5})
    assert floaty.status_code == 400 and "decimal string" in floaty.json()["message"]
    missing = hold(wlm, 204, "nosuch", BOB, "1")
    assert missing.status_code == 404 and "slurmlink bank account create nosuch" in missing.json()["message"]
    unknown = cli(creds["accountant"], "bank", "balance", "nosuch", check=False)
    assert unknown.returncode == 1 and "Error from server (NotFound)" in unknown.stderr


def test_a_user_sees_their_accounts_and_their_own_lines_only(
    creds: dict[str, Path], http: dict[str, httpx.Client]
) -> None:
    cli(creds["accountant"], "bank", "account", "create", "shared", "--no-slurm")
    cli(creds["accountant"], "bank", "account", "create", "secret", "--no-slurm")
    cli(creds["accountant"], "bank", "grant", "shared", "100")
    cli(creds["accountant"], "bank", "grant", "secret", "100")
    cli(creds["accountant"], "bank", "account", "add-user", "shared", ALICE)
    cli(creds["accountant"], "bank", "account", "add-user", "shared", BOB, "--cap", "30")
    wlm = http["wlm"]
    for job, user in ((301, ALICE), (302, BOB)):
        assert hold(wlm, job, "shared", user, "10").status_code == 200
        assert settle(wlm, job, "shared", user, "4").status_code == 200
    assert hold(wlm, 303, "shared", BOB, "27").status_code == 402  # bob's cap: 4 used + 27 > 30

    mine = json.loads(cli(creds[BOB], "balance", "--json").stdout)
    assert [b["account"] for b in mine] == ["shared", "tiny"]  # tiny: his job held units there
    bob_lines = json.loads(cli(creds[BOB], "bank", "statement", "shared", "--json").stdout)
    assert {x["job_id"] for x in bob_lines} == {302} and {x["user"] for x in bob_lines} == {BOB}
    alice = http[ALICE]
    assert {x["job_id"] for x in alice.get(f"{BANK}/accounts/shared/statement").json()["items"]} == {301}
    assert alice.get(f"{BANK}/accounts/secret/statement").status_code == 404
    assert alice.get(f"{BANK}/accounts/secret/balance").status_code == 404
    assert [a["name"] for a in alice.get(f"{BANK}/accounts").json()["items"]] == ["optics", "shared"]
    assert alice.get(f"{BANK}/runs/{run_of(302)}").status_code == 404  # bob's run
    assert alice.get(f"{BANK}/runs/{run_of(301)}").json()["charged"] == "4.00"
    # Writes are for their roles only.
    for who in (ALICE, "viewer", "wlm"):
        r = http[who].post(f"{BANK}/accounts/shared/grants", json={"amount": "1000"})
        assert r.status_code == 403, (who, r.text)
    assert http[ALICE].post(f"{BANK}/runs/{run_of(309)}/hold", json={}).status_code == 403
    denied = cli(creds["viewer"], "bank", "grant", "shared", "5", check=False)
    assert denied.returncode == 1 and "Forbidden" in denied.stderr
    assert http["viewer"].get(f"{BANK}/accounts/secret/statement").status_code == 200


def test_the_openapi_document_lists_the_bank_and_the_ledger_verifies(
    http: dict[str, httpx.Client], creds: dict[str, Path]
) -> None:
    index = http["viewer"].get("/openapi/v3").json()["paths"]
    assert "bank/v1" in index
    doc = http["viewer"].get(index["bank/v1"]["serverRelativeURL"]).json()
    grants = doc["paths"][f"{BANK}/accounts/{{account}}/grants"]["post"]
    assert grants["x-slurmlink-roles"] == ["accountant", "admin"]
    assert "sound" in cli(creds["accountant"], "bank", "verify").stdout
    assert http["viewer"].get(f"{BANK}/verify").status_code == 403


SEED_CARD = Path(__file__).parents[1] / "unit" / "data" / "bank-config.toml.example"


def test_the_seeds_bank_config_prices_a_script_as_the_seed_did(
    creds: dict[str, Path], tmp_path: Path
) -> None:
    accountant = creds["accountant"]
    first = cli(accountant, "bank", "ratecard", "import", str(SEED_CARD)).stdout
    assert "imported; it is now the current one" in first
    assert "already known" in cli(accountant, "bank", "ratecard", "import", str(SEED_CARD)).stdout
    [card] = json.loads(cli(creds["viewer"], "bank", "ratecard", "list", "--json").stdout)
    assert card["current"] and card["version"].startswith("seed-")

    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH -p savio2_gpu\n#SBATCH --ntasks=4 --time=90\n#SBATCH -A optics\nhostname\n"
    )
    priced = json.loads(cli(creds[ALICE], "bank", "quote", str(script), "--json").stdout)
    # The seed's formula: 2.67 SU per CPU-hour x 4 CPUs x 1.5 h = 16.02.
    assert priced["amount"] == "16.02" and priced["partition"] == "savio2_gpu"
    assert priced["rateCardVersion"] == card["version"] and priced["account"] == "optics"
    assert priced["fits"] is True  # alice belongs to optics
    # Options after the script override its #SBATCH lines, as in sbatch; an array counts per task.
    shown = cli(
        creds[ALICE], "bank", "quote", str(script), "-p", "debug", "-t", "20", "-n", "3", "--array=1-10"
    ).stdout
    assert "estimate: 5.00 SU (10 array tasks at 0.50)" in shown
    # No time limit anywhere (the seed's file knows no partition defaults): refused, not priced at 0.
    script.write_text("#!/bin/bash\n#SBATCH -p savio2 -n 2\nhostname\n")
    untimed = cli(creds[ALICE], "bank", "quote", str(script), check=False)
    assert untimed.returncode == 1 and "time" in untimed.stderr.lower()
    unknown = cli(creds[ALICE], "bank", "quote", str(script), "-p", "nosuch", "-t", "10", check=False)
    assert unknown.returncode == 1 and "nosuch" in unknown.stderr
