"""The seed's banking API (/mybrc-rest), BankAccounts in kubectl and the bank's metrics, on a real server.

The calls are the ones slurm-banking-plugins make, in their order: the submit plugin asks
``can_submit_job``, the start plugin POSTs the job with its estimate (on every node, so more than
once), the completion plugin PUTs the actual amount. They authenticate with ``Authorization: Token``
and a token from ``slurmlink kubeconfig --token``. Balances are then read with the real kubectl and
from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import pwd
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slurmlink.auth.kubeconfig import load_kubeconfig
from support.kubectl import kubectl_132, run_kubectl
from support.server import ServerProcess
from support.unix_users import ensure_unix_user

SEED = "/mybrc-rest"
BANK = "/bank/v1"
ALICE, BOB = "slbank-alice", "slbank-bob"
SUBMITTED = "2021-03-17T10:00:00+00:00"
SUBMITTED_EPOCH = 1_615_975_200

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def uids() -> dict[str, str]:
    return {login: str(ensure_unix_user(login).pw_uid) for login in (ALICE, BOB)}


@pytest.fixture(scope="module")
def kubeconfigs(server: ServerProcess, uids: dict[str, str]) -> dict[str, Path]:
    return {
        "admin": server.kubeconfig,
        "accountant": server.issue_kubeconfig("treasurer", "accountant", token=True),
        "wlm": server.issue_kubeconfig("slurm", "workload-manager", token=True),
        "viewer": server.issue_kubeconfig("auditor", "viewer", token=True),
        ALICE: server.issue_kubeconfig(ALICE, "user"),
        "alice-token": server.issue_kubeconfig(
            ALICE, "user", token=True, out=server.state_dir.parent / "alice-token.kubeconfig"
        ),
    }


def _token(path: Path) -> str:
    token = load_kubeconfig(path).token
    assert token, f"{path} has no token"
    return token


@pytest.fixture(scope="module")
def seed(server: ServerProcess, kubeconfigs: dict[str, Path]) -> Iterator[httpx.Client]:
    """What the seed's plugins are: an HTTP client with ``Authorization: Token`` (the accountant's)."""
    client = _seed_client(server, f"Token {_token(kubeconfigs['accountant'])}")
    yield client
    client.close()


def _seed_client(server: ServerProcess, authorization: str | None) -> httpx.Client:
    headers = {"Authorization": authorization} if authorization else {}
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    return httpx.Client(base_url=server.url + SEED, verify=ctx, headers=headers, timeout=30.0)


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    client = server.client()
    yield client
    client.close()


def account(admin: httpx.Client, name: str, grant: str, *, members: tuple[str, ...] = ()) -> None:
    r = admin.post(f"{BANK}/accounts", json={"name": name})
    assert r.status_code == 200, r.text
    r = admin.post(f"{BANK}/accounts/{name}/grants", json={"amount": grant})
    assert r.status_code == 200, r.text
    for user in members:
        assert admin.put(f"{BANK}/accounts/{name}/users/{user}", json={}).status_code == 200


def balance(admin: httpx.Client, name: str) -> tuple[str, str, str]:
    b = admin.get(f"{BANK}/accounts/{name}/balance").json()
    return b["available"], b["held"], b["spent"]


def can_submit(seed: httpx.Client, cost: str, uid: str, acct: str) -> httpx.Response:
    return seed.get(f"/can_submit_job/{cost}/{uid}/{acct}/")


def started(job: int, uid: str, acct: str, amount: str, **extra: Any) -> dict[str, Any]:
    """The Job the seed's SPANK plugin POSTs when a job starts (its estimate)."""
    return {
        "jobslurmid": str(job),
        "userid": uid,
        "accountid": acct,
        "amount": amount,
        "jobstatus": "RUNNING",
        "partition": "savio2",
        "qos": "savio_normal",
        "submitdate": SUBMITTED,
        "startdate": "2021-03-17T10:05:00+00:00",
        "num_cpus": 4,
        "num_req_nodes": 1,
        "num_alloc_nodes": 1,
        "nodes": [{"name": "n0001.savio2"}],
        **extra,
    }


def ended(job: int, uid: str, acct: str, amount: str, status: str = "COMPLETED") -> dict[str, Any]:
    """The Job the seed's completion plugin PUTs (actual amount, end date, times)."""
    return started(
        job,
        uid,
        acct,
        amount,
        jobstatus=status,
        enddate="2021-03-17T11:05:00+00:00",
        raw_time=1.0,
        cpu_time=4.0,
    )


def test_the_seeds_call_sequence_holds_then_settles_once(
    seed: httpx.Client, admin: httpx.Client, uids: dict[str, str]
) -> None:
    uid = uids[ALICE]
    account(admin, "fc_optics", "100")

    ok = can_submit(seed, "40.00", uid, "fc_optics")
    assert ok.status_code == 200
    assert ok.json() == {"success": True, "message": "A job with job_cost 40.00 can be submitted."}
    no = can_submit(seed, "150.00", uid, "fc_optics").json()
    assert no["success"] is False and "available balance 100.00" in no["message"]

    r = seed.post("/jobs/", json=started(4242, uid, "fc_optics", "40"))
    assert r.status_code == 201, r.text
    echoed = r.json()
    assert echoed["amount"] == "40.00" and echoed["jobslurmid"] == "4242"
    assert echoed["submitdate"] == "2021-03-17T10:00:00Z" and echoed["nodes"] == [{"name": "n0001.savio2"}]
    assert balance(admin, "fc_optics") == ("60.00", "40.00", "0.00")
    # The hold counts: what was enough before is not now.
    assert can_submit(seed, "70.00", uid, "fc_optics").json()["success"] is False
    # The start plugin runs on every node: the same POST again changes nothing.
    assert seed.post("/jobs/", json=started(4242, uid, "fc_optics", "40.00")).status_code == 201
    clash = seed.post("/jobs/", json=started(4242, uid, "fc_optics", "41.00"))
    assert clash.status_code == 400 and "already exists" in clash.json()["jobslurmid"][0]
    assert balance(admin, "fc_optics") == ("60.00", "40.00", "0.00")
    # A status of a job still running updates nothing.
    running = seed.put("/jobs/4242/", json=ended(4242, uid, "fc_optics", "1.00", status="RUNNING"))
    assert running.status_code == 200 and running.json()["jobstatus"] == "RUNNING"
    assert balance(admin, "fc_optics") == ("60.00", "40.00", "0.00")

    r = seed.put("/jobs/4242/", json=ended(4242, uid, "fc_optics", "12.34"))
    assert r.status_code == 200, r.text
    assert r.json()["amount"] == "12.34" and r.json()["jobstatus"] == "COMPLETED"
    assert balance(admin, "fc_optics") == ("87.66", "0.00", "12.34")
    # The completion plugin's retry is a replay; another amount for the same run is refused.
    assert seed.put("/jobs/4242/", json=ended(4242, uid, "fc_optics", "12.34")).status_code == 200
    other = seed.put("/jobs/4242/", json=ended(4242, uid, "fc_optics", "20.00"))
    assert other.status_code == 400 and "already settled" in other.json()["non_field_errors"][0]
    assert balance(admin, "fc_optics") == ("87.66", "0.00", "12.34")
    # A job whose start never reached the bank is charged when it ends.
    assert seed.put("/jobs/4243/", json=ended(4243, uid, "fc_optics", "2.00")).status_code == 200
    assert balance(admin, "fc_optics") == ("85.66", "0.00", "14.34")

    lines = admin.get(f"{BANK}/accounts/fc_optics/statement").json()["items"]
    assert [(x["kind"], x["amount"], x["job_id"]) for x in lines] == [
        ("grant", "100.00", None),
        ("hold", "40.00", 4242),
        ("charge", "12.34", 4242),
        ("charge", "2.00", 4243),
    ]
    charge = lines[2]
    assert charge["source"] == "mybrc" and charge["user"] == ALICE
    assert charge["inputs"]["source"] == "slurm-banking-plugins" and charge["inputs"]["num_cpus"] == 4
    assert charge["run"] == f"cluster:4242:0:{SUBMITTED_EPOCH}"

    listed = seed.get("/jobs/").json()
    jobs = {j["jobslurmid"]: j for j in listed["results"]}
    assert jobs["4242"]["amount"] == "12.34" and jobs["4242"]["jobstatus"] == "COMPLETED"
    assert jobs["4242"]["userid"] == uid and jobs["4242"]["accountid"] == "fc_optics"
    assert listed["count"] >= 2 and listed["previous"] is None
    assert admin.get(f"{BANK}/verify").json() == {"sound": True, "problems": []}


def test_a_job_the_account_cannot_cover_is_refused_and_never_overdraws(
    seed: httpx.Client, admin: httpx.Client, uids: dict[str, str]
) -> None:
    uid = uids[BOB]
    account(admin, "fc_small", "10")
    r = seed.post("/jobs/", json=started(5001, uid, "fc_small", "25.00"))
    assert r.status_code == 400
    [message] = r.json()["non_field_errors"]
    assert "fc_small has 10.00 SU available" in message and "needs 25.00" in message
    assert balance(admin, "fc_small") == ("10.00", "0.00", "0.00")
    # The seed's start plugin ignores the refusal, so the job runs; at its end the account is charged
    # what it covers and the rest is recorded on the run, not taken from thin air.
    assert seed.put("/jobs/5001/", json=ended(5001, uid, "fc_small", "25.00")).status_code == 200
    assert balance(admin, "fc_small") == ("0.00", "0.00", "10.00")
    run = admin.get(f"{BANK}/runs/cluster:5001:0:{SUBMITTED_EPOCH}").json()
    assert (run["charged"], run["unbilled"]) == ("10.00", "15.00")
    assert can_submit(seed, "0.01", uid, "fc_small").json()["success"] is False


def test_malformed_costs_and_unknown_users_or_accounts_are_answered_as_the_seed_expects(
    seed: httpx.Client, admin: httpx.Client, uids: dict[str, str]
) -> None:
    uid = uids[ALICE]
    account(admin, "fc_capped", "100")
    for cost, words in (
        ("12.345", "greater than 2 decimal places"),
        ("-1", "not nonnegative"),
        ("abc", "not a decimal number"),
        ("123456789012", "greater than 11 digits"),
    ):
        r = can_submit(seed, cost, uid, "fc_capped")
        assert r.status_code == 400, cost
        assert r.json()["success"] is False and words in r.json()["message"], r.json()
    nobody = next(str(n) for n in range(54321, 64000) if not _uid_exists(n))
    r = can_submit(seed, "1.00", nobody, "fc_capped")
    assert r.status_code == 200 and r.json() == {
        "success": False,
        "message": f"No user exists with user_id {nobody}.",
    }
    r = can_submit(seed, "1.00", uid, "fc_nosuch")
    assert r.status_code == 200 and r.json()["success"] is False
    assert r.json()["message"] == "No account exists with account_id fc_nosuch."
    # A per-user cap inside the account counts as the seed's user allocation did.
    assert admin.put(f"{BANK}/accounts/fc_capped/users/{BOB}", json={"cap": "5"}).status_code == 200
    capped = can_submit(seed, "6.00", uids[BOB], "fc_capped").json()
    assert capped["success"] is False and "cap 5.00" in capped["message"]
    assert can_submit(seed, "6.00", uid, "fc_capped").json()["success"] is True

    bad = seed.post("/jobs/", json={"jobslurmid": "x1", "accountid": "fc_capped", "amount": "1.234"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"jobslurmid", "userid", "amount"}
    assert bad.json()["userid"] == ["This field is required."]
    missing = seed.post("/jobs/", json=started(6001, uid, "fc_nosuch", "1.00"))
    assert missing.status_code == 400 and missing.json() == {
        "accountid": ["Object with name=fc_nosuch does not exist."]
    }
    garbled = seed.post("/jobs/", content=b"{not json")
    assert garbled.status_code == 400 and garbled.json()["detail"].startswith("JSON parse error")
    assert seed.get("/jobs/?page=999").json() == {"detail": "Invalid page."}
    assert seed.get("/jobs/?page=999").status_code == 404


def _uid_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_token_scheme_and_roles(
    server: ServerProcess, kubeconfigs: dict[str, Path], uids: dict[str, str], admin: httpx.Client
) -> None:
    account(admin, "fc_auth", "5")
    path = f"/can_submit_job/1.00/{uids[ALICE]}/fc_auth/"
    cases = [
        (None, 401),
        ("Token not-a-token", 401),
        (f"Token {_token(kubeconfigs['viewer'])}", 403),
        (f"Token {_token(kubeconfigs['alice-token'])}", 403),
        (f"Token {_token(kubeconfigs['wlm'])}", 200),
        (f"Token {_token(kubeconfigs['accountant'])}", 200),
        (f"Bearer {_token(kubeconfigs['accountant'])}", 200),
    ]
    for authorization, code in cases:
        with _seed_client(server, authorization) as client:
            r = client.get(path)
            assert r.status_code == code, (authorization, r.text)
            if code == 401:
                assert r.json()["reason"] == "Unauthorized"
            if code == 403:
                assert client.post("/jobs/", json={}).status_code == 403
    assert admin.get(SEED + path).json()["success"] is True  # the admin's client certificate
    index = admin.get("/openapi/v3").json()["paths"]
    doc = admin.get(index["mybrc-rest"]["serverRelativeURL"]).json()
    assert doc["paths"][f"{SEED}/jobs/"]["post"]["x-slurmlink-roles"] == [
        "accountant",
        "admin",
        "workload-manager",
    ]


def test_twenty_concurrent_starts_on_an_account_covering_five(
    server: ServerProcess, kubeconfigs: dict[str, Path], uids: dict[str, str], admin: httpx.Client
) -> None:
    account(admin, "fc_race", "50")
    authorization = f"Token {_token(kubeconfigs['wlm'])}"

    async def race() -> list[int]:
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        async with httpx.AsyncClient(
            base_url=server.url + SEED, verify=ctx, headers={"Authorization": authorization}, timeout=60
        ) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/jobs/", json=started(7000 + i, uids[BOB], "fc_race", "10.00"))
                    for i in range(20)
                )
            )
        return [a.status_code for a in answers]

    codes = asyncio.run(race())
    assert sorted(codes) == [201] * 5 + [400] * 15
    assert balance(admin, "fc_race") == ("0.00", "50.00", "0.00")
    assert admin.get(f"{BANK}/verify").json() == {"sound": True, "problems": []}


def test_job_pages_link_as_django_rest_framework_does(
    seed: httpx.Client, admin: httpx.Client, uids: dict[str, str]
) -> None:
    account(admin, "fc_pages", "1000")
    for job in range(8000, 8101):
        r = seed.put(f"/jobs/{job}/", json=ended(job, uids[ALICE], "fc_pages", "0.01"))
        assert r.status_code == 200, r.text
    first = seed.get("/jobs/").json()
    assert first["count"] >= 101 and len(first["results"]) == 100 and first["previous"] is None
    assert first["next"] == f"{seed.base_url}jobs/?page=2"
    second = seed.get(first["next"]).json()
    assert second["previous"] == f"{seed.base_url}jobs/"
    assert len(second["results"]) == min(100, first["count"] - 100)


def test_kubectl_shows_bank_accounts_read_only(
    admin: httpx.Client, kubeconfigs: dict[str, Path], uids: dict[str, str]
) -> None:
    account(admin, "kv-mine", "300", members=(ALICE,))
    account(admin, "kv-other", "7")
    kubectl = kubectl_132()

    table = run_kubectl(kubectl, kubeconfigs["admin"], "get", "bankaccounts")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "AVAILABLE", "HELD", "SPENT", "STATUS", "AGE"]
    assert ["kv-mine", "300.00", "0.00", "0.00", "active"] in [row.split()[:5] for row in rows]

    shown = run_kubectl(kubectl, kubeconfigs["admin"], "get", "bankaccount", "kv-other", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    obj = json.loads(shown.stdout)
    assert obj["kind"] == "BankAccount" and obj["apiVersion"] == "bank.slurmlink.io/v1"
    assert obj["status"]["available"] == "7.00" and obj["status"]["granted"] == "7.00"
    assert obj["status"]["overdraftLimit"] == "0.00" and obj["status"]["users"] == []

    mine = run_kubectl(kubectl, kubeconfigs[ALICE], "get", "bankaccounts", "-o", "name")
    assert mine.returncode == 0, mine.stderr
    names = mine.stdout.split()
    assert "bankaccount.bank.slurmlink.io/kv-mine" in names
    assert "bankaccount.bank.slurmlink.io/kv-other" not in names
    hidden = run_kubectl(kubectl, kubeconfigs[ALICE], "get", "bankaccount", "kv-other")
    assert hidden.returncode != 0 and "Forbidden" in hidden.stderr

    refused = run_kubectl(kubectl, kubeconfigs["admin"], "delete", "bankaccount", "kv-other")
    assert refused.returncode != 0 and "slurmlink bank" in refused.stderr, refused.stderr
    watch = admin.get("/apis/bank.slurmlink.io/v1/bankaccounts?watch=1")
    assert watch.status_code == 405 and "cannot be watched" in watch.json()["message"]
    missing = admin.get("/apis/bank.slurmlink.io/v1/bankaccounts/nosuch")
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"


def _samples(admin: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = admin.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_show_balances_and_operations(
    seed: httpx.Client, admin: httpx.Client, uids: dict[str, str]
) -> None:
    before = _samples(admin)
    account(admin, "fc_metrics", "50")
    assert seed.post("/jobs/", json=started(9001, uids[ALICE], "fc_metrics", "30.00")).status_code == 201
    assert seed.post("/jobs/", json=started(9002, uids[ALICE], "fc_metrics", "30.00")).status_code == 400
    assert seed.put("/jobs/9001/", json=ended(9001, uids[ALICE], "fc_metrics", "12.50")).status_code == 200
    after = _samples(admin)

    labels = (("account", "fc_metrics"), ("cluster", "cluster"))
    assert after[("slurmlink_bank_available_units", labels)] == 37.5
    assert after[("slurmlink_bank_held_units", labels)] == 0
    assert after[("slurmlink_bank_spent_units", labels)] == 12.5

    def grew(kind: str, outcome: str) -> float:
        key = ("slurmlink_bank_operations_total", (("kind", kind), ("outcome", outcome)))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("grant", "ok") == 1
    assert grew("hold", "ok") == 1 and grew("hold", "insufficient_funds") == 1
    assert grew("settle", "ok") == 1
