"""The bank's ledger on SQLite and a real PostgreSQL: holds, settles, refunds, idempotency, races.

The race test is the issue's: 500 job runs submitted at once against one account whose balance
covers 100 of their estimates; each run that gets a hold is settled (some twice, as at-least-once
hooks do). Afterwards the books must prove themselves: no account ever below its limit (each
transaction checks it; the audit checks it again over everything), entries of every transaction
summing to zero, one charge per run, and the balance equal to grants minus charges to the cent.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import sqlalchemy as sa

from slurmlink.bank import schema
from slurmlink.bank.errors import IdempotencyConflict, InsufficientFunds, InvalidRequest, NotFound
from slurmlink.bank.ledger import OVERDRAFT, Actor, Ledger
from slurmlink.bank.runs import RunKey
from slurmlink.store.sql import SqlStore

CLUSTER = "testcluster"
ADMIN = Actor("admin", "cli")
HOOK = Actor("slurm", "hook")
D = Decimal


@pytest.fixture
def ledger(store: SqlStore) -> Ledger:
    return Ledger(store, CLUSTER)


def run(job: int, restart: int = 0) -> RunKey:
    return RunKey(CLUSTER, job, restart, 1_733_300_000 + job)


def funded(ledger: Ledger, name: str, amount: str, **kwargs: object) -> None:
    ledger.create_account(name, **kwargs)  # type: ignore[arg-type]
    ledger.grant(name, D(amount), key=f"grant-{name}", actor=ADMIN)


def test_a_job_is_held_at_start_and_charged_its_actual_cost_at_end(ledger: Ledger) -> None:
    funded(ledger, "physics", "100.00")
    held = ledger.hold(run(7), "physics", "alice", D("30.00"), actor=HOOK)
    assert held["state"] == "held" and held["available"] == "70.00" and held["held"] == "30.00"
    b = ledger.balance("physics")
    assert (b.available, b.held, b.spent, b.granted) == (D("70.00"), D("30.00"), D(0), D("100.00"))

    inputs = {"cpus": 4, "hours": "1.5", "price": "2.00"}
    settled = ledger.settle(
        run(7), "physics", "alice", D("12.00"), actor=HOOK, rate_card_version="rc-1", inputs=inputs
    )
    assert (settled["charged"], settled["released"], settled["unbilled"]) == ("12.00", "30.00", "0.00")
    b = ledger.balance("physics")
    assert (b.available, b.held, b.spent) == (D("88.00"), D(0), D("12.00"))

    lines = ledger.statement("physics")
    assert [(line["kind"], line["amount"], line["available_after"]) for line in lines] == [
        ("grant", "100.00", "100.00"),
        ("hold", "30.00", "70.00"),
        ("charge", "12.00", "88.00"),
    ]
    charge = lines[-1]
    assert charge["job_id"] == 7 and charge["user"] == "alice" and charge["run"] == run(7).text
    assert charge["rate_card_version"] == "rc-1" and charge["inputs"] == inputs
    assert ledger.run(run(7))["state"] == "settled"  # type: ignore[index]
    assert ledger.verify() == []


def test_every_hook_call_twice_changes_nothing_the_second_time(ledger: Ledger) -> None:
    funded(ledger, "chem", "50")
    first = ledger.hold(run(1), "chem", "bob", D(20), actor=HOOK)
    again = ledger.hold(run(1), "chem", "bob", D(20), actor=HOOK)
    assert again["replayed"] and again["transaction"] == first["transaction"]
    ledger.settle(run(1), "chem", "bob", D(5), actor=HOOK)
    twice = ledger.settle(run(1), "chem", "bob", D(5), actor=HOOK)
    assert twice["replayed"]
    ledger.release(run(1), "chem", actor=HOOK)  # after the settle: nothing to release
    assert ledger.release(run(1), "chem", actor=HOOK)["replayed"]
    b = ledger.balance("chem")
    assert (b.available, b.held, b.spent) == (D(45), D(0), D(5))
    # The same key with a different request: refused, the first stands.
    with pytest.raises(IdempotencyConflict, match="used before for a different request"):
        ledger.settle(run(1), "chem", "bob", D(6), actor=HOOK)
    assert ledger.balance("chem").spent == D(5)
    assert len(ledger.statement("chem")) == 4  # grant, hold, charge, release
    assert ledger.verify() == []


def test_a_hold_the_account_cannot_cover_is_refused_with_the_numbers_and_writes_nothing(
    ledger: Ledger,
) -> None:
    funded(ledger, "bio", "10.00")
    ledger.hold(run(1), "bio", "carol", D("7.50"), actor=HOOK)
    with pytest.raises(InsufficientFunds) as refused:
        ledger.hold(run(2), "bio", "carol", D("3.00"), actor=HOOK)
    message = str(refused.value)
    assert "bio has 2.50 SU available" in message and "7.50 held" in message and "needs 3.00" in message
    assert "slurmlink bank grant" in message
    assert (refused.value.available, refused.value.requested) == (D("2.50"), D("3.00"))
    assert ledger.run(run(2)) is None
    assert [line["kind"] for line in ledger.statement("bio")] == ["grant", "hold"]
    # Allowed into an overdraft only when the account has a limit and the caller asks for it.
    ledger.update_account("bio", overdraft=D(1))
    ledger.hold(run(3), "bio", "carol", D("3.00"), actor=HOOK, policy=OVERDRAFT)
    assert ledger.balance("bio").available == D("-0.50")
    with pytest.raises(InsufficientFunds):
        ledger.hold(run(4), "bio", "carol", D("0.60"), actor=HOOK, policy=OVERDRAFT)
    assert ledger.verify() == []


def test_a_charge_beyond_what_the_account_has_is_recorded_as_unbilled_not_overdrawn(ledger: Ledger) -> None:
    funded(ledger, "geo", "10")
    ledger.hold(run(1), "geo", "dan", D(4), actor=HOOK)
    ledger.hold(run(2), "geo", "dan", D(6), actor=HOOK)
    # The time limit was raised: run 1 used 9 where 4 were held; only 4 are left to take.
    settled = ledger.settle(run(1), "geo", "dan", D(9), actor=HOOK)
    assert (settled["charged"], settled["unbilled"]) == ("4.00", "5.00")
    assert ledger.run(run(1))["unbilled"] == "5.00"  # type: ignore[index]
    b = ledger.balance("geo")
    assert (b.available, b.held, b.spent) == (D(0), D(6), D(4))
    assert ledger.verify() == []


def test_a_running_jobs_hold_is_raised_for_its_longer_time_limit_once_and_only_if_covered(
    ledger: Ledger,
) -> None:
    funded(ledger, "astro", "100")
    ledger.grant(
        "astro",
        D(20),
        key="grant-astro-2",
        actor=ADMIN,
        ends_at=dt.datetime(2999, 1, 1, tzinfo=dt.UTC),
    )
    ledger.hold(run(1), "astro", "erin", D(30), actor=HOOK)
    raised = ledger.raise_hold(run(1), "astro", D(75), actor=HOOK, details={"timeLimit": 15})
    assert (raised["state"], raised["held"], raised["raised"]) == ("held", "75.00", "45.00")
    assert ledger.raise_hold(run(1), "astro", D(75), actor=HOOK)["replayed"]
    assert ledger.raise_hold(run(1), "astro", D(60), actor=HOOK)["raised"] == "0"  # held for more already
    b = ledger.balance("astro")
    assert (b.available, b.held) == (D(45), D(75))
    assert ledger.run(run(1))["held"] == "75.00"  # type: ignore[index]
    # More than the account has: refused with the numbers; the hold stays as it was.
    with pytest.raises(InsufficientFunds, match=r"astro has 45\.00 SU available") as refused:
        ledger.raise_hold(run(1), "astro", D(130), actor=HOOK)
    assert refused.value.requested == D(55)
    assert ledger.balance("astro").held == D(75)
    # The settle releases the whole raised hold, from every allocation it was drawn on.
    settled = ledger.settle(run(1), "astro", "erin", D(50), actor=HOOK)
    assert (settled["charged"], settled["released"]) == ("50.00", "75.00")
    b = ledger.balance("astro")
    assert (b.available, b.held, b.spent) == (D(70), D(0), D(50))
    # A run no longer held is left alone.
    after = ledger.raise_hold(run(1), "astro", D(90), actor=HOOK)
    assert (after["state"], after["raised"]) == ("settled", "0")
    assert ledger.balance("astro").available == D(70)
    kinds = [(line["kind"], line["amount"]) for line in ledger.statement("astro") if line["job_id"] == 1]
    assert kinds == [
        ("hold", "30.00"),
        ("hold", "45.00"),
        ("hold", "0.00"),
        ("charge", "50.00"),
        ("hold", "0.00"),
    ]
    assert ledger.verify() == []


def test_requeued_runs_are_held_and_charged_separately_and_a_failed_run_is_refunded(ledger: Ledger) -> None:
    funded(ledger, "astro", "100")
    ledger.hold(run(5, 0), "astro", "eve", D(10), actor=HOOK)
    ledger.settle(run(5, 0), "astro", "eve", D(3), actor=HOOK)  # NODE_FAIL after 3 SU
    ledger.hold(run(5, 1), "astro", "eve", D(10), actor=HOOK)  # the requeued run
    ledger.settle(run(5, 1), "astro", "eve", D(8), actor=HOOK)
    refund = ledger.refund(run(5, 0), "astro", actor=ADMIN, reason="NODE_FAIL")
    assert refund["refunded"] == "3.00"
    assert ledger.refund(run(5, 0), "astro", actor=ADMIN, reason="NODE_FAIL")["replayed"]
    with pytest.raises(InvalidRequest, match=r"charged 0\.00 net; cannot refund"):
        ledger.refund(run(5, 0), "astro", actor=ADMIN, reason="again", amount=D(1))
    b = ledger.balance("astro")
    assert (b.available, b.spent) == (D(92), D(8))
    assert [r["charged"] for r in ledger.runs(account="astro")] == ["3.00", "8.00"]
    assert ledger.verify() == []


def test_grants_draw_earliest_ending_first_and_expire_into_the_expired_bucket(ledger: Ledger) -> None:
    now = dt.datetime.now(dt.UTC)
    ledger.create_account("lab")
    ledger.grant("lab", D(10), key="g-late", actor=ADMIN, ends_at=now + dt.timedelta(days=60))
    ledger.grant("lab", D(10), key="g-soon", actor=ADMIN, ends_at=now + dt.timedelta(days=1))
    held = ledger.hold(run(1), "lab", "fay", D(12), actor=HOOK)
    soon, late = sorted(ledger.allocations("lab"), key=lambda a: a["endsAt"])
    assert held["split"] == {str(soon["id"]): "10.00", str(late["id"]): "2.00"}
    ledger.settle(run(1), "lab", "fay", D(12), actor=HOOK)
    ledger.hold(run(2), "lab", "fay", D(1), actor=HOOK)

    later = now + dt.timedelta(days=2)  # the first allocation has ended
    ledger.expire_due(actor=ADMIN, now=later)
    states = {a["id"]: a["state"] for a in ledger.allocations("lab")}
    assert states == {late["id"]: "active"}  # closed allocations are history (the statement)
    assert ledger.balance("lab", now=later).available == D(7)  # 10 + 10 - 12 - 1 held
    months = now + dt.timedelta(days=61)
    assert ledger.expire_due(actor=ADMIN, now=months) == []  # run 2 still holds units: closing
    assert {a["state"] for a in ledger.allocations("lab")} == {"closing"}
    ledger.release(run(2), "lab", actor=HOOK)
    [expired] = ledger.expire_due(actor=ADMIN, now=months)
    assert expired["expired"] == "8.00"
    assert ledger.allocations("lab") == []
    assert ledger.verify() == []


def test_transfers_adjustments_caps_and_errors(ledger: Ledger) -> None:
    funded(ledger, "a1", "40")
    ledger.create_account("a2")
    moved = ledger.transfer("a1", "a2", D(15), key="t1", actor=ADMIN, reason="shared project")
    assert moved["amount"] == "15.00"
    assert (ledger.balance("a1").available, ledger.balance("a2").available) == (D(25), D(15))
    with pytest.raises(InsufficientFunds):
        ledger.transfer("a1", "a2", D(26), key="t2", actor=ADMIN)
    ledger.adjust("a2", D("-5"), key="adj1", actor=ADMIN, reason="double grant")
    ledger.adjust("a2", D("1.25"), key="adj2", actor=ADMIN, reason="goodwill")
    assert ledger.balance("a2").available == D("11.25")

    ledger.set_user_cap("a1", "greg", D(5))
    ledger.hold(run(1), "a1", "greg", D(4), actor=HOOK)
    with pytest.raises(InsufficientFunds, match=r"user greg may use 5\.00 SU of account a1"):
        ledger.hold(run(2), "a1", "greg", D(2), actor=HOOK)
    ledger.hold(run(3), "a1", "hana", D(2), actor=HOOK)  # others are not capped

    with pytest.raises(NotFound, match="slurmlink bank account create nope"):
        ledger.hold(run(9), "nope", "x", D(1), actor=HOOK)
    with pytest.raises(InvalidRequest, match="more than four decimal places"):
        ledger.grant("a1", D("0.00001"), key="tiny", actor=ADMIN)
    with pytest.raises(InvalidRequest, match="must be a decimal string"):
        ledger.grant("a1", 1.5, key="float", actor=ADMIN)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="CLUSTER:JOBID:RESTARTCOUNT:SUBMITTIME"):
        RunKey.parse("12345")
    assert ledger.verify() == []


def test_500_concurrent_runs_against_an_account_that_covers_100_never_overdraw_it(
    ledger: Ledger, store: SqlStore
) -> None:
    estimate, runs, threads = D(10), 500, 16
    funded(ledger, "race", str(estimate * 100))
    rng = random.Random(42)
    actual = {job: D(rng.randrange(0, 1001)) / 100 for job in range(1, runs + 1)}  # 0.00 .. 10.00
    held: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def life(job: int) -> None:
        try:
            ledger.hold(run(job), "race", f"u{job % 7}", estimate, actor=HOOK)
        except InsufficientFunds:
            with lock:
                refused.append(job)
            return
        with lock:
            held.append(job)
        ledger.settle(run(job), "race", f"u{job % 7}", actual[job], actor=HOOK)
        if job % 5 == 0:  # a hook that fired twice
            assert ledger.settle(run(job), "race", f"u{job % 7}", actual[job], actor=HOOK)["replayed"]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(life, range(1, runs + 1)))

    assert len(held) + len(refused) == runs
    assert len(held) >= 100  # settles free units for later holds
    assert ledger.verify() == []
    b = ledger.balance("race")
    charged = sum(actual[job] for job in held)
    assert b.held == 0 and b.spent == charged
    assert b.available == estimate * 100 - charged  # to the cent
    t = schema.transactions
    with store.engine.connect() as conn:
        per_run = dict(
            conn.execute(
                sa.select(t.c.run_key, sa.func.count()).where(t.c.kind == "charge").group_by(t.c.run_key)
            ).all()
        )
    assert sorted(per_run) == sorted(run(job).text for job in held)
    assert set(per_run.values()) == {1}
    assert {r["state"] for r in ledger.runs(account="race")} == {"settled"}


def test_an_allocation_rolls_part_of_what_is_left_into_a_new_one(ledger: Ledger) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = now - dt.timedelta(days=10), now + dt.timedelta(days=10)
    ledger.create_account("roll")
    ledger.grant("roll", D(100), key="half", actor=ADMIN, starts_at=start, ends_at=end, rollover_percent=25)
    with pytest.raises(InvalidRequest, match="percentage from 0 to 100"):
        ledger.grant("roll", D(1), key="bad", actor=ADMIN, ends_at=end, rollover_percent=150)
    ledger.hold(run(1), "roll", "ann", D(20), actor=HOOK)
    ledger.settle(run(1), "roll", "ann", D(20), actor=HOOK)
    [expired] = ledger.expire_due(actor=ADMIN, now=end + dt.timedelta(seconds=1))
    assert (expired["expired"], expired["rolledOver"]) == ("60.00", "20.00")  # 25% of the 80 left
    [successor] = ledger.allocations("roll")
    assert successor["kind"] == "rollover" and successor["available"] == "20.00"
    assert successor["startsAt"] == end.isoformat()
    assert successor["endsAt"] == (end + dt.timedelta(days=20)).isoformat()  # as long again
    assert ledger.balance("roll", now=end + dt.timedelta(days=1)).available == D(20)
    assert ledger.verify() == []
