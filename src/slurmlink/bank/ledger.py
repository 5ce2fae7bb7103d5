"""The bank's operations: grant, hold, settle, release, refund, transfer, adjust, expire.

Every mutation is one database transaction that locks the accounts it touches, looks its
idempotency key up first (a retry gets the stored result back; the same key with a different
request is refused), moves units between buckets and checks the invariants before it commits (see
``books``). The keys of the hooks' operations are derived from the job run (``hold:<run>``,
``settle:<run>``, ...), so Slurm's at-least-once hooks and the reconciler change the books once.

Held units are drawn from the account's drawable allocations, earliest-ending first; a settle
releases the run's hold and charges the actual cost from the same allocations first (so a job that
ran across an allocation's end is charged where its hold was). An account is never taken below its
overdraft limit (0 unless set): a hold that does not fit is refused; a charge that does not fit is
charged as far as it fits and the rest recorded on the run as ``unbilled``, for an accountant to see.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import sqlalchemy as sa

from slurmlink import jsonutil
from slurmlink.bank import audit, cards, money, observe, schema
from slurmlink.bank.books import ACTIVE, CLOSED, CLOSING, Account, Allocation, Books, aware, digest
from slurmlink.bank.errors import AlreadyExists, InsufficientFunds, InvalidRequest, NotFound
from slurmlink.bank.estimate import CostError, JobRequest, Quote, quote
from slurmlink.bank.ratecard import RateCard
from slurmlink.bank.runs import RunKey
from slurmlink.store.sql import SqlStore
from slurmlink.store.transaction import Transaction

T = TypeVar("T")

#: Run states: a hold is open; the run was charged; its hold was let go without a charge.
HELD, SETTLED, RELEASED = "held", "settled", "released"
#: Hold policies when an account cannot cover an estimate.
DENY, OVERDRAFT = "deny", "overdraft"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class Actor:
    """Who asks: the authenticated name, and by which way (api, cli, hook, reconciler)."""

    name: str
    source: str = "api"


@dataclass(frozen=True)
class Balance:
    account: str
    cluster: str
    status: str
    available: Decimal
    held: Decimal
    spent: Decimal
    granted: Decimal
    upcoming: Decimal
    overdraft: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "cluster": self.cluster,
            "status": self.status,
            "available": str(self.available),
            "held": str(self.held),
            "spent": str(self.spent),
            "granted": str(self.granted),
            "upcoming": str(self.upcoming),
            "overdraftLimit": str(self.overdraft),
        }


def check_name(name: str, what: str = "account") -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise InvalidRequest(
            f"{what} name {name!r} must be 1-64 letters, digits, '_', '-' or '.' (as Slurm names them)"
        )
    return name


class Ledger:
    """The bank's books on a store's database (SQLite or PostgreSQL), for one Slurm cluster."""

    def __init__(self, store: SqlStore, cluster: str) -> None:
        self.store = store
        self.cluster = check_name(cluster, "cluster")

    # ---- plumbing ----------------------------------------------------------------------------

    def _run(self, fn: Callable[[sa.Connection], T]) -> T:
        def work(tx: Transaction) -> T:
            return fn(tx.connection)

        return self.store.run_transaction(work)

    def _transact(
        self,
        names: list[str],
        key: str,
        payload: dict[str, Any],
        work: Callable[[Books, list[Account]], dict[str, Any]],
        *,
        now: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Lock ``names``, answer a retry from the stored result, else run ``work`` (which posts)."""
        request_digest = digest({"key": key, **payload})

        def fn(conn: sa.Connection) -> dict[str, Any]:
            books = Books(conn, now)
            books.key, books.request_digest = key, request_digest
            accounts = books.lock(self.cluster, names)
            stored = books.replay(key, request_digest)
            if stored is not None:
                return {**stored, "replayed": True}
            result = work(books, accounts)
            return {**result, "replayed": False}

        with observe.operation(payload["op"]) as outcome:
            result = self._run(fn)
            outcome.replayed = result["replayed"]
        return result

    # ---- accounts ----------------------------------------------------------------------------

    def create_account(
        self,
        name: str,
        *,
        parent: str | None = None,
        overdraft: Decimal = Decimal(0),
        description: str = "",
    ) -> dict[str, Any]:
        check_name(name)
        a = schema.accounts
        limit = money.to_units(money.parse(overdraft, what="overdraft limit"))

        def fn(conn: sa.Connection) -> dict[str, Any]:
            exists = conn.execute(
                sa.select(a.c.id).where(a.c.cluster == self.cluster, a.c.name == name)
            ).first()
            if exists is not None:
                raise AlreadyExists(f"bank account {name!r} already exists on cluster {self.cluster!r}")
            parent_id = None
            if parent is not None:
                parent_id = conn.execute(
                    sa.select(a.c.id).where(a.c.cluster == self.cluster, a.c.name == parent)
                ).scalar()
                if parent_id is None:
                    raise NotFound(f"parent account {parent!r} does not exist on cluster {self.cluster!r}")
            conn.execute(
                a.insert().values(
                    cluster=self.cluster,
                    name=name,
                    parent_id=parent_id,
                    status=ACTIVE,
                    overdraft=limit,
                    description=description,
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
            return self._account_json(conn, name)

        try:
            return self._run(fn)
        except sa.exc.IntegrityError:  # created meanwhile by another replica
            raise AlreadyExists(f"bank account {name!r} already exists on cluster {self.cluster!r}") from None

    def update_account(
        self, name: str, *, overdraft: Decimal | None = None, status: str | None = None
    ) -> dict[str, Any]:
        a = schema.accounts
        values: dict[str, Any] = {}
        if overdraft is not None:
            values["overdraft"] = money.to_units(money.parse(overdraft, what="overdraft limit"))
        if status is not None:
            if status not in (ACTIVE, "locked"):
                raise InvalidRequest(f"account status must be 'active' or 'locked', not {status!r}")
            values["status"] = status

        def fn(conn: sa.Connection) -> dict[str, Any]:
            Books(conn).lock(self.cluster, [name])
            if values:
                conn.execute(a.update().where(a.c.cluster == self.cluster, a.c.name == name).values(**values))
            return self._account_json(conn, name)

        return self._run(fn)

    def set_user_cap(self, account: str, user: str, cap: Decimal | None) -> dict[str, Any]:
        """Cap what ``user`` may hold and spend in ``account`` (None removes the cap)."""
        check_name(user, "user")
        caps = schema.user_caps

        def fn(conn: sa.Connection) -> dict[str, Any]:
            [acct] = Books(conn).lock(self.cluster, [account])
            where = (caps.c.account_id == acct.id, caps.c.user == user)
            conn.execute(caps.delete().where(*where))
            if cap is not None:
                units = money.to_units(money.parse(cap, what="user cap"))
                conn.execute(caps.insert().values(account_id=acct.id, user=user, cap=units))
                m = schema.members
                known = conn.execute(
                    sa.select(m.c.user).where(m.c.account_id == acct.id, m.c.user == user)
                ).first()
                if known is None:
                    conn.execute(m.insert().values(account_id=acct.id, user=user))
            return self._account_json(conn, account)

        return self._run(fn)

    def set_member(self, account: str, user: str, member: bool = True) -> dict[str, Any]:
        """Record that ``user`` may charge ``account`` (as a Slurm association says), or not."""
        check_name(user, "user")
        m = schema.members

        def fn(conn: sa.Connection) -> dict[str, Any]:
            [acct] = Books(conn).lock(self.cluster, [account])
            conn.execute(m.delete().where(m.c.account_id == acct.id, m.c.user == user))
            if member:
                conn.execute(m.insert().values(account_id=acct.id, user=user))
            return self._account_json(conn, account)

        return self._run(fn)

    def accounts_of(self, user: str) -> list[str]:
        """The accounts ``user`` belongs to (members, and those their jobs ran on)."""
        m, r, a = schema.members, schema.runs, schema.accounts

        def fn(conn: sa.Connection) -> list[str]:
            listed = sa.select(m.c.account_id).where(m.c.user == user)
            ran = sa.select(r.c.account_id).where(r.c.user == user)
            rows = conn.execute(
                sa.select(a.c.name)
                .where(a.c.cluster == self.cluster, a.c.id.in_(listed.union(ran)))
                .order_by(a.c.name)
            )
            return [name for (name,) in rows]

        return self._run(fn)

    def _account_json(self, conn: sa.Connection, name: str) -> dict[str, Any]:
        a, caps = schema.accounts, schema.user_caps
        parent = a.alias("parent")
        row = conn.execute(
            sa.select(a, parent.c.name.label("parent_name"))
            .select_from(a.outerjoin(parent, parent.c.id == a.c.parent_id))
            .where(a.c.cluster == self.cluster, a.c.name == name)
        ).first()
        if row is None:
            raise NotFound(f"bank account {name!r} does not exist on cluster {self.cluster!r}")
        user_caps = {
            r.user: money.text(r.cap)
            for r in conn.execute(sa.select(caps.c.user, caps.c.cap).where(caps.c.account_id == row.id))
        }
        m = schema.members
        users = sorted(conn.execute(sa.select(m.c.user).where(m.c.account_id == row.id)).scalars())
        return {
            "name": row.name,
            "cluster": row.cluster,
            "parent": row.parent_name,
            "status": row.status,
            "overdraftLimit": money.text(row.overdraft),
            "description": row.description,
            "users": users,
            "userCaps": user_caps,
            "createdAt": aware(row.created_at).isoformat(),  # type: ignore[union-attr]
        }

    def account(self, name: str) -> dict[str, Any]:
        return self._run(lambda conn: self._account_json(conn, name))

    def accounts(self) -> list[dict[str, Any]]:
        a = schema.accounts

        def fn(conn: sa.Connection) -> list[dict[str, Any]]:
            names = conn.execute(sa.select(a.c.name).where(a.c.cluster == self.cluster).order_by(a.c.name))
            return [self._account_json(conn, n) for (n,) in names]

        return self._run(fn)

    # ---- grants ------------------------------------------------------------------------------

    def grant(
        self,
        account: str,
        amount: Decimal,
        *,
        key: str,
        actor: Actor,
        starts_at: dt.datetime | None = None,
        ends_at: dt.datetime | None = None,
        priority: int = 0,
        reference: str = "",
        kind: str = "grant",
        rollover_percent: int = 0,
    ) -> dict[str, Any]:
        """A new allocation of ``amount`` for ``account``, drawable from ``starts_at`` to ``ends_at``;
        ``rollover_percent`` of what is left at its end moves into a new allocation of the same length."""
        units = money.to_units(money.parse(amount))
        if units == 0:
            raise InvalidRequest("a grant must be for more than 0 service units")
        if starts_at is not None and ends_at is not None and ends_at <= starts_at:
            raise InvalidRequest(
                f"the allocation ends ({ends_at.isoformat()}) before it starts ({starts_at.isoformat()})"
            )
        payload = {
            "op": "grant",
            "account": account,
            "amount": units,
            "starts": starts_at.isoformat() if starts_at else None,
            "ends": ends_at.isoformat() if ends_at else None,
            "priority": priority,
            "reference": reference,
            "rollover": rollover_percent,
        }
        if isinstance(rollover_percent, bool) or not 0 <= rollover_percent <= 100:
            raise InvalidRequest(f"rollover must be a percentage from 0 to 100, not {rollover_percent!r}")
        if rollover_percent and ends_at is None:
            raise InvalidRequest("a rollover needs an allocation that ends (give its end)")

        def work(books: Books, accounts: list[Account]) -> dict[str, Any]:
            [acct] = accounts
            alloc = books.add_allocation(
                acct,
                kind=kind,
                amount=units,
                starts_at=starts_at or books.now,
                ends_at=ends_at,
                priority=priority,
                reference=reference,
                rollover_percent=rollover_percent,
            )
            books.move(schema.EXTERNAL_BUCKET, alloc, ("external", "available"), units)
            return books.post(
                kind="grant",
                account=acct,
                amount=units,
                actor=actor.name,
                source=actor.source,
                reason=reference,
                result={"allocation": alloc.id, "amount": money.text(units)},
            )

        return self._transact([account], key, payload, work)

    # ---- runs: hold, settle, release, refund -------------------------------------------------

    def hold(
        self,
        run: RunKey,
        account: str,
        user: str,
        amount: Decimal,
        *,
        actor: Actor,
        policy: str = DENY,
        expires_at: dt.datetime | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Reserve ``amount`` for the run from the account's drawable allocations."""
        units = money.to_units(money.parse(amount))
        if policy not in (DENY, OVERDRAFT):
            raise InvalidRequest(f"hold policy must be {DENY!r} or {OVERDRAFT!r}, not {policy!r}")
        key = f"hold:{run.text}"
        payload = {"op": "hold", "account": account, "user": user, "amount": units}

        def work(books: Books, accounts: list[Account]) -> dict[str, Any]:
            [acct] = accounts
            existing = _run_row(books.conn, run)
            result: dict[str, Any] = {"run": run.text, "amount": money.text(units)}
            if existing is not None:  # settled or released before its hold arrived
                result.update(
                    state=existing.state, held="0", note=f"run already {existing.state}; nothing held"
                )
                return self._post_run(books, acct, "hold", run, 0, actor, result)
            if acct.status != ACTIVE:
                raise InsufficientFunds(
                    f"bank account {acct.name} is {acct.status}; no new jobs may start on it. "
                    "Ask the allocation manager to unlock it",
                    account=acct.name,
                    requested=money.from_units(units),
                    available=money.from_units(acct.available(books.now)),
                    held=money.from_units(acct.held()),
                )
            available = acct.available(books.now)
            room = available + (acct.overdraft if policy == OVERDRAFT else 0)
            if units > room:
                raise _insufficient(acct, units, available, books.now)
            self._check_user_cap(books, acct, user, units)
            split = _draw(books, acct, units, ("available", "held"))
            _insert_run(
                books,
                run,
                acct,
                user,
                state=HELD,
                held=units,
                hold_split=split,
                expires_at=expires_at,
                details=details,
            )
            result.update(
                state=HELD, held=money.text(units), split={str(k): money.text(v) for k, v in split.items()}
            )
            return self._post_run(books, acct, "hold", run, units, actor, result)

        return self._transact([account], key, payload, work)

    def raise_hold(
        self,
        run: RunKey,
        account: str,
        amount: Decimal,
        *,
        actor: Actor,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Raise a held run's hold to ``amount`` (its time limit was raised while it ran).

        The extra is drawn as a hold is and refused the same way when the account cannot cover it;
        a run held for as much already, or no longer held, is left as it is. Once per run and amount.
        """
        units = money.to_units(money.parse(amount))
        key = f"hold:{run.text}:{units}"
        payload = {"op": "raise_hold", "account": account, "amount": units}

        def work(books: Books, accounts: list[Account]) -> dict[str, Any]:
            [acct] = accounts
            row = _run_row(books.conn, run)
            result: dict[str, Any] = {"run": run.text, "amount": money.text(units), "raised": "0"}
            if row is None or row.state != HELD or row.account_id != acct.id:
                state = row.state if row is not None else "unknown"
                result.update(
                    state=state, note=f"no open hold of account {acct.name} for this run; nothing held"
                )
                return self._post_run(books, acct, "hold", run, 0, actor, result)
            extra = units - row.held
            if extra <= 0:
                result.update(state=HELD, held=money.text(row.held), note="held for as much already")
                return self._post_run(books, acct, "hold", run, 0, actor, result)
            available = acct.available(books.now)
            if acct.status != ACTIVE or extra > available:
                raise _insufficient(acct, extra, available if acct.status == ACTIVE else 0, books.now)
            self._check_user_cap(books, acct, row.user, extra)
            split = _split(row.hold_split)
            for alloc_id, take in _draw(books, acct, extra, ("available", "held")).items():
                split[alloc_id] = split.get(alloc_id, 0) + take
            _update_run(
                books,
                run,
                held=row.held + extra,
                hold_split=jsonutil.dumps_str({str(k): v for k, v in split.items()}),
                details=details,
            )
            result.update(state=HELD, held=money.text(row.held + extra), raised=money.text(extra))
            return self._post_run(books, acct, "hold", run, extra, actor, result)

        return self._transact([account], key, payload, work)

    def settle(
        self,
        run: RunKey,
        account: str,
        user: str,
        amount: Decimal,
        *,
        actor: Actor,
        rate_card_version: str | None = None,
        inputs: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Charge the run's actual cost and let the rest of its hold go, once per run."""
        units = money.to_units(money.parse(amount))
        key = f"settle:{run.text}"
        payload = {
            "op": "settle",
            "account": account,
            "user": user,
            "amount": units,
            "rates": rate_card_version,
        }

        def work(books: Books, accounts: list[Account]) -> dict[str, Any]:
            [acct] = accounts
            row = _run_row(books.conn, run)
            if row is not None and row.account_id != acct.id:
                raise InvalidRequest(f"run {run.text} was held on another account than {account!r}")
            hold_split = _split(row.hold_split) if row is not None else {}
            # Only an open hold is released; a released one's units are back in available already.
            released = _release(books, acct, hold_split) if row is not None and row.state == HELD else 0
            preferred = [acct.allocation(i) for i in hold_split if _known(acct, i)]
            charged, charge_split = _charge(books, acct, units, preferred)
            unbilled = units - charged
            if row is None:
                _insert_run(
                    books,
                    run,
                    acct,
                    user,
                    state=SETTLED,
                    held=0,
                    hold_split={},
                    expires_at=None,
                    details=details,
                )
            _update_run(
                books,
                run,
                state=SETTLED,
                held=0,
                charged=charged,
                unbilled=unbilled,
                charge_split=charge_split,
                details=details,
            )
            result = {
                "run": run.text,
                "state": SETTLED,
                "amount": money.text(units),
                "charged": money.text(charged),
                "released": money.text(released),
                "unbilled": money.text(unbilled),
            }
            return books.post(
                kind="charge",
                account=acct,
                amount=charged,
                actor=actor.name,
                source=actor.source,
                run_key=run.text,
                rate_card_version=rate_card_version,
                inputs=inputs,
                result=result,
            )

        return self._transact([account], key, payload, work)

    def release(self, run: RunKey, account: str, *, actor: Actor, reason: str = "") -> dict[str, Any]:
        """Let a run's hold go without a charge (it never ran, or the reconciler found it gone)."""
        key = f"release:{run.text}"
        payload = {"op": "release", "account": account}

        def work(books: Books, accounts: list[Account]) -> dict[str, Any]:
            [acct] = accounts
            row = _run_row(books.conn, run)
            result: dict[str, Any] = {"run": run.text}
            released = 0
            if row is not None and row.state == HELD:
                released = _release(books, acct, _split(row.hold_split))
                _update_run(books, run, state=RELEASED, held=0)
                result["state"] = RELEASED
            else:
                result["state"] = row.state if row is not None else "unknown"
                result["note"] = "no open hold for this run; nothing released"
            result["released"] = money.text(released)
            return books.post(
                kind="release",
                account=acct,
                amount=released,
                actor=actor.name,
                source=actor.source,
                reason=reason,
                run_key=run.text,
                result=result,
            )

        return self._transact([account], key, payload, work)

    def refund(
        self,
        run: RunKey,
        account: str,
        *,
        actor: Actor,
        reason: str,
        amount: Decimal | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Give back (part of) what a run was charged; at most what it was charged, net."""
        if not reason:
            raise InvalidRequest("a refund needs a reason (e.g. node failure)")
        units = money.to_units(money.parse(amount)) if amount is not None else None
        key = key or f"refund:{run.text}:{reason}"
        payload = {"op": "refund", "account": account, "amount": units, "reason": reason}

        def work(books: Books, accounts: list[Account]) -> dict[str, Any]:
            [acct] = accounts
            row = _run_row(books.conn, run)
            if row is None or row.state != SETTLED:
                raise InvalidRequest(f"run {run.text} has not been charged; there is nothing to refund")
            net = row.charged - row.refunded
            give = net if units is None else units
            if give > net:
                raise InvalidRequest(
                    f"run {run.text} was charged {money.text(net)} net; cannot refund {money.text(give)}"
                )
            split = _split(row.charge_split)
            refunded = _refund(books, acct, split, give)
            _update_run(books, run, refunded=row.refunded + refunded)
            result = {"run": run.text, "refunded": money.text(refunded), "reason": reason}
            return books.post(
                kind="refund",
                account=acct,
                amount=refunded,
                actor=actor.name,
                source=actor.source,
                reason=reason,
                run_key=run.text,
                result=result,
            )

        return self._transact([account], key, payload, work)

    # ---- transfers, adjustments, expiry ------------------------------------------------------

    def transfer(
        self,
        source: str,
        target: str,
        amount: Decimal,
        *,
        key: str,
        actor: Actor,
        reason: str = "",
        ends_at: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Move available units from ``source`` to a new allocation of ``target``."""
        if source == target:
            raise InvalidRequest("a transfer needs two different accounts")
        units = money.to_units(money.parse(amount))
        if units == 0:
            raise InvalidRequest("a transfer must be for more than 0 service units")
        payload = {"op": "transfer", "from": source, "to": target, "amount": units, "reason": reason}

        def work(books: Books, accounts: list[Account]) -> dict[str, Any]:
            src, dst = accounts
            available = src.available(books.now)
            if units > available:
                raise _insufficient(src, units, available, books.now)
            drawn = src.drawable(books.now)
            ends = ends_at or max((a.ends_at for a in drawn if a.ends_at), default=None)
            alloc = books.add_allocation(
                dst,
                kind="transfer",
                amount=units,
                starts_at=books.now,
                ends_at=ends,
                priority=0,
                reference=f"from {source}: {reason}".strip(": "),
            )
            left = units
            for a in drawn:
                take = min(max(a.balance("available"), 0), left)
                books.move(a, alloc, ("available", "available"), take)
                left -= take
            result = {"from": source, "to": target, "allocation": alloc.id, "amount": money.text(units)}
            return books.post(
                kind="transfer",
                account=src,
                amount=units,
                actor=actor.name,
                source=actor.source,
                reason=reason,
                result=result,
            )

        return self._transact([source, target], key, payload, work)

    def adjust(self, account: str, amount: Decimal, *, key: str, actor: Actor, reason: str) -> dict[str, Any]:
        """An accountant's correction: add (or with a negative amount, remove) available units."""
        if not reason:
            raise InvalidRequest("an adjustment needs a reason")
        units = money.to_units(money.parse(amount, allow_negative=True))
        if units == 0:
            raise InvalidRequest("an adjustment of 0 changes nothing")
        payload = {"op": "adjust", "account": account, "amount": units, "reason": reason}

        def work(books: Books, accounts: list[Account]) -> dict[str, Any]:
            [acct] = accounts
            drawable = acct.drawable(books.now)
            if units > 0:
                target = (
                    drawable[0]
                    if drawable
                    else books.add_allocation(
                        acct,
                        kind="adjustment",
                        amount=0,
                        starts_at=books.now,
                        ends_at=None,
                        priority=0,
                        reference=reason,
                    )
                )
                books.move(schema.ADJUSTMENTS_BUCKET, target, ("adjustments", "available"), units)
            else:
                available = acct.available(books.now)
                if -units > available + acct.overdraft:
                    raise _insufficient(acct, -units, available, books.now)
                left = -units
                for i, a in enumerate(drawable):
                    last = i == len(drawable) - 1
                    take = left if last else min(max(a.balance("available"), 0), left)
                    books.move(a, schema.ADJUSTMENTS_BUCKET, ("available", "adjustments"), take)
                    left -= take
            return books.post(
                kind="adjust",
                account=acct,
                amount=units,
                actor=actor.name,
                source=actor.source,
                reason=reason,
                result={"amount": money.text(units), "reason": reason},
            )

        return self._transact([account], key, payload, work)

    def expire_due(self, *, actor: Actor, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Close every allocation past its end: what is left available moves to ``expired``.

        An allocation with open holds waits in ``closing`` until they are settled or released.
        """
        al, a = schema.allocations, schema.accounts
        moment = now or dt.datetime.now(dt.UTC)

        def due(conn: sa.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                sa.select(al.c.id, a.c.name)
                .join(a, a.c.id == al.c.account_id)
                .where(a.c.cluster == self.cluster, al.c.state != CLOSED, al.c.ends_at.is_not(None))
                .order_by(al.c.id)
            )
            return [(row.id, row.name) for row in rows]

        done = []
        for alloc_id, name in self._run(due):
            with observe.operation("expire") as outcome:
                result = self._expire(alloc_id, name, actor, moment)
                outcome.skipped = result is None
            if result is not None:
                done.append(result)
        return done

    def _expire(self, alloc_id: int, name: str, actor: Actor, now: dt.datetime) -> dict[str, Any] | None:
        key = f"expire:{alloc_id}"
        payload = {"op": "expire", "allocation": alloc_id}
        request_digest = digest({"key": key, **payload})

        def fn(conn: sa.Connection) -> dict[str, Any] | None:
            books = Books(conn, now)
            [acct] = books.lock(self.cluster, [name])
            alloc = next((x for x in acct.allocations if x.id == alloc_id), None)
            if alloc is None or alloc.ends_at is None or alloc.ends_at > books.now:
                return None
            if alloc.balance("held") > 0:
                if alloc.state != CLOSING:
                    books.set_state(alloc, CLOSING)
                return None
            if books.replay(key, request_digest) is not None:
                return None
            left = alloc.balance("available")
            carried = left * alloc.rollover_percent // 100 if left > 0 else 0
            result: dict[str, Any] = {"allocation": alloc_id, "expired": money.text(left - carried)}
            if carried:
                successor = books.add_allocation(
                    acct,
                    kind="rollover",
                    amount=carried,
                    starts_at=alloc.ends_at,
                    ends_at=alloc.ends_at + (alloc.ends_at - alloc.starts_at),
                    priority=alloc.priority,
                    reference=f"{alloc.rollover_percent}% of what allocation {alloc_id} left",
                )
                books.move(alloc, successor, ("available", "available"), carried)
                result.update(rolledOver=money.text(carried), newAllocation=successor.id)
            books.move(alloc, schema.EXPIRED_BUCKET, ("available", "expired"), left - carried)
            books.set_state(alloc, CLOSED)
            return books.post(
                kind="expire",
                key=key,
                request_digest=request_digest,
                account=acct,
                amount=left - carried,
                actor=actor.name,
                source=actor.source,
                reason=f"allocation {alloc_id} ended {alloc.ends_at.isoformat()}",
                result=result,
            )

        return self._run(fn)

    # ---- reading -----------------------------------------------------------------------------

    def balance(self, account: str, *, now: dt.datetime | None = None) -> Balance:
        def fn(conn: sa.Connection) -> Balance:
            books = Books(conn, now)
            [acct] = _load(books, self.cluster, account)
            return _balance(books, acct)

        return self._run(fn)

    def balances(self, *, now: dt.datetime | None = None) -> list[Balance]:
        """Every account's balance, by name: two queries however many accounts there are, so a
        metrics scrape or a ``kubectl get bankaccounts`` stays cheap."""
        a = schema.accounts

        def fn(conn: sa.Connection) -> list[Balance]:
            books = Books(conn, now)
            rows = conn.execute(
                sa.select(a.c.id, a.c.cluster, a.c.name, a.c.status, a.c.overdraft)
                .where(a.c.cluster == self.cluster)
                .order_by(a.c.name)
            )
            accounts = [Account(r.id, r.cluster, r.name, r.status, r.overdraft) for r in rows]
            if accounts:
                books.load_allocations(accounts)
            return [_balance(books, acct) for acct in accounts]

        return self._run(fn)

    def user_usage(self, account: str, user: str) -> tuple[Decimal | None, Decimal]:
        """``user``'s cap in ``account`` (None when uncapped) and what their runs there hold or were
        charged, net of refunds: the two numbers a hold for them is checked against."""

        def fn(conn: sa.Connection) -> tuple[Decimal | None, Decimal]:
            [acct] = _load(Books(conn), self.cluster, account)
            cap = _cap(conn, acct.id, user)
            used = money.from_units(_used(conn, acct.id, user))
            return (money.from_units(cap) if cap is not None else None), used

        return self._run(fn)

    def allocations(self, account: str) -> list[dict[str, Any]]:
        def fn(conn: sa.Connection) -> list[dict[str, Any]]:
            books = Books(conn)
            [acct] = _load(books, self.cluster, account)
            return [
                {
                    "id": x.id,
                    "kind": x.kind,
                    "amount": money.text(x.amount),
                    "startsAt": x.starts_at.isoformat(),
                    "endsAt": x.ends_at.isoformat() if x.ends_at else None,
                    "priority": x.priority,
                    "state": x.state
                    if x.state != ACTIVE or x.drawable(books.now)
                    else ("pending" if x.starts_at > books.now else "ended"),
                    "reference": x.reference,
                    "available": money.text(x.balance("available")),
                    "held": money.text(x.balance("held")),
                    "spent": money.text(x.balance("spent")),
                }
                for x in acct.allocations
            ]

        return self._run(fn)

    def statement(
        self,
        account: str,
        *,
        since: dt.datetime | None = None,
        limit: int = 1000,
        user: str | None = None,
    ) -> list[dict[str, Any]]:
        """The account's transactions, oldest first, with the job each one was for."""
        t, r, a = schema.transactions, schema.runs, schema.accounts

        def fn(conn: sa.Connection) -> list[dict[str, Any]]:
            acct_id = conn.execute(
                sa.select(a.c.id).where(a.c.cluster == self.cluster, a.c.name == account)
            ).scalar()
            if acct_id is None:
                raise NotFound(f"bank account {account!r} does not exist on cluster {self.cluster!r}")
            query = (
                sa.select(t, r.c.job_id, r.c.user)
                .select_from(t.outerjoin(r, r.c.run_key == t.c.run_key))
                .where(t.c.account_id == acct_id)
                .order_by(t.c.id)
                .limit(limit)
            )
            if since is not None:
                query = query.where(t.c.created_at >= since)
            if user is not None:  # a user sees their own jobs' lines only
                query = query.where(r.c.user == user)
            return [_statement_line(row) for row in conn.execute(query)]

        return self._run(fn)

    def run(self, run: RunKey) -> dict[str, Any] | None:
        def fn(conn: sa.Connection) -> dict[str, Any] | None:
            row = _run_row(conn, run)
            return _run_json(conn, row) if row is not None else None

        return self._run(fn)

    def runs(
        self,
        *,
        account: str | None = None,
        state: str | None = None,
        user: str | None = None,
        job_id: int | None = None,
        updated_since: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        r, a = schema.runs, schema.accounts

        def fn(conn: sa.Connection) -> list[dict[str, Any]]:
            query = sa.select(r).join(a, a.c.id == r.c.account_id).where(r.c.cluster == self.cluster)
            if account is not None:
                query = query.where(a.c.name == account)
            if state is not None:
                query = query.where(r.c.state == state)
            if user is not None:
                query = query.where(r.c.user == user)
            if job_id is not None:
                query = query.where(r.c.job_id == job_id)
            if updated_since is not None:
                query = query.where(r.c.updated_at >= updated_since)
            return [_run_json(conn, row) for row in conn.execute(query.order_by(r.c.job_id, r.c.run_key))]

        return self._run(fn)

    def snapshot(self) -> dict[str, Any]:
        """Every account's balance and the current rate card, in one read: what the Slurm side caches
        to answer submissions without a network call while slurmctld holds its locks."""
        a = schema.accounts

        def fn(conn: sa.Connection) -> dict[str, Any]:
            books = Books(conn)
            rows = conn.execute(
                sa.select(a.c.id, a.c.cluster, a.c.name, a.c.status, a.c.overdraft).where(
                    a.c.cluster == self.cluster
                )
            )
            accounts = [Account(r.id, r.cluster, r.name, r.status, r.overdraft) for r in rows]
            if accounts:
                books.load_allocations(accounts)
            version = cards.current_version(conn)
            card = cards.load(conn, version).to_dict() if version else None
            return {
                "asOf": books.now.isoformat(),
                "cluster": self.cluster,
                "rateCard": card,
                "accounts": {
                    acct.name: {
                        "available": money.text(acct.available(books.now)),
                        "held": money.text(acct.held()),
                        "status": acct.status,
                        "overdraftLimit": money.text(acct.overdraft),
                    }
                    for acct in accounts
                },
            }

        return self._run(fn)

    # ---- rate cards and quotes ---------------------------------------------------------------

    def import_rate_card(self, card: RateCard, *, actor: Actor, make_current: bool = True) -> dict[str, Any]:
        return self._run(lambda conn: cards.store(conn, card, actor.name, make_current=make_current))

    def rate_card(self, version: str | None = None) -> RateCard:
        return self._run(lambda conn: cards.load(conn, version))

    def rate_cards(self) -> list[dict[str, Any]]:
        return self._run(cards.listing)

    def quote(self, request: JobRequest, version: str | None = None) -> Quote:
        """What ``request`` may cost under the current (or the named) rate card."""
        card = self.rate_card(version)
        try:
            return quote(card, request)
        except CostError as exc:
            raise InvalidRequest(str(exc)) from exc

    def verify(self) -> list[str]:
        """Every broken invariant in the whole ledger (see ``audit``); empty when sound."""
        return self._run(audit.problems)

    # ---- helpers -----------------------------------------------------------------------------

    def _post_run(
        self,
        books: Books,
        acct: Account,
        kind: str,
        run: RunKey,
        units: int,
        actor: Actor,
        result: dict[str, Any],
    ) -> dict[str, Any]:
        return books.post(
            kind=kind,
            account=acct,
            amount=units,
            actor=actor.name,
            source=actor.source,
            run_key=run.text,
            result=result,
        )

    def _check_user_cap(self, books: Books, acct: Account, user: str, units: int) -> None:
        cap = _cap(books.conn, acct.id, user)
        if cap is None:
            return
        used = _used(books.conn, acct.id, user)
        if used + units > cap:
            raise InsufficientFunds(
                f"user {user} may use {money.text(cap)} SU of account {acct.name} and has used or holds "
                f"{money.text(used)}; this job needs {money.text(units)}. Ask the account's manager to "
                "raise your cap",
                account=acct.name,
                requested=money.from_units(units),
                available=money.from_units(max(cap - used, 0)),
                held=money.from_units(acct.held()),
            )


# ---- module helpers (inside a transaction) ---------------------------------------------------------


def _balance(books: Books, acct: Account) -> Balance:
    drawable = acct.drawable(books.now)
    upcoming = [x for x in acct.allocations if x.state == ACTIVE and x.starts_at > books.now]
    return Balance(
        account=acct.name,
        cluster=acct.cluster,
        status=acct.status,
        available=money.from_units(acct.available(books.now)),
        held=money.from_units(acct.held()),
        spent=money.from_units(acct.spent(books.now)),
        granted=money.from_units(sum(x.amount for x in drawable)),
        upcoming=money.from_units(sum(x.balance("available") for x in upcoming)),
        overdraft=money.from_units(acct.overdraft),
    )


def _cap(conn: sa.Connection, account_id: int, user: str) -> int | None:
    """The user's cap in the account, in units (None: uncapped)."""
    caps = schema.user_caps
    return conn.execute(
        sa.select(caps.c.cap).where(caps.c.account_id == account_id, caps.c.user == user)
    ).scalar()


def _used(conn: sa.Connection, account_id: int, user: str) -> int:
    """What the user's runs in the account hold or were charged, net of refunds, in units."""
    r = schema.runs
    used: int = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(r.c.held + r.c.charged - r.c.refunded), 0)).where(
            r.c.account_id == account_id, r.c.user == user
        )
    ).scalar_one()
    return used


def _load(books: Books, cluster: str, name: str) -> list[Account]:
    """The account and its allocations, read without locking (balances, statements)."""
    a = schema.accounts
    row = books.conn.execute(
        sa.select(a.c.id, a.c.cluster, a.c.name, a.c.status, a.c.overdraft).where(
            a.c.cluster == cluster, a.c.name == name
        )
    ).first()
    if row is None:
        raise NotFound(
            f"bank account {name!r} does not exist on cluster {cluster!r}; "
            f"create it with: slurmlink bank account create {name}"
        )
    acct = Account(row.id, row.cluster, row.name, row.status, row.overdraft)
    books.accounts[acct.id] = acct
    books.load_allocations([acct])
    return [acct]


def _insufficient(acct: Account, units: int, available: int, now: dt.datetime) -> InsufficientFunds:
    held = acct.held()
    return InsufficientFunds(
        f"bank account {acct.name} has {money.text(available)} SU available "
        f"({money.text(held)} held by running jobs, {money.text(acct.spent(now))} spent); "
        f"this needs {money.text(units)} SU. Ask your allocation manager for more service units "
        "(slurmlink bank grant), or ask for less time or fewer CPUs",
        account=acct.name,
        requested=money.from_units(units),
        available=money.from_units(available),
        held=money.from_units(held),
    )


def _draw(books: Books, acct: Account, units: int, kinds: tuple[str, str]) -> dict[int, int]:
    """Move ``units`` out of the drawable allocations' ``kinds[0]`` in draw order; the last one
    takes what the others could not (into the overdraft the caller allowed)."""
    drawable = acct.drawable(books.now)
    if units and not drawable:
        raise InsufficientFunds(
            f"bank account {acct.name} has no allocation that can be drawn on now; ask your "
            "allocation manager for a grant (slurmlink bank grant)",
            account=acct.name,
            requested=money.from_units(units),
            available=money.from_units(0),
            held=money.from_units(acct.held()),
        )
    split: dict[int, int] = {}
    left = units
    for i, alloc in enumerate(drawable):
        if left == 0:
            break
        last = i == len(drawable) - 1
        take = left if last else min(max(alloc.balance(kinds[0]), 0), left)
        if take:
            books.move(alloc, alloc, kinds, take)
            split[alloc.id] = take
            left -= take
    return split


def _known(acct: Account, allocation_id: int) -> bool:
    return any(a.id == allocation_id for a in acct.allocations)


def _release(books: Books, acct: Account, split: dict[int, int]) -> int:
    released = 0
    for alloc_id, units in split.items():
        if not _known(acct, alloc_id):
            continue
        alloc = acct.allocation(alloc_id)
        take = min(units, alloc.balance("held"))
        books.move(alloc, alloc, ("held", "available"), take)
        released += take
    return released


def _charge(
    books: Books, acct: Account, units: int, preferred: list[Allocation]
) -> tuple[int, dict[int, int]]:
    """Charge as much of ``units`` as the account can cover; returns (charged, split)."""
    order: list[Allocation] = list(preferred)
    order += [a for a in acct.drawable(books.now) if a not in order]
    split: dict[int, int] = {}
    left = units
    for alloc in order:
        take = min(max(alloc.balance("available"), 0), left)
        if take:
            books.move(alloc, alloc, ("available", "spent"), take)
            split[alloc.id] = split.get(alloc.id, 0) + take
            left -= take
    if left and order:  # into the overdraft room, on the last allocation drawn
        open_allocs = [a for a in acct.allocations if a.state != CLOSED]
        room = sum(a.balance("available") for a in open_allocs) + acct.overdraft
        take = min(left, max(room, 0))
        if take:
            alloc = order[-1]
            books.move(alloc, alloc, ("available", "spent"), take)
            split[alloc.id] = split.get(alloc.id, 0) + take
            left -= take
    return units - left, split


def _refund(books: Books, acct: Account, split: dict[int, int], units: int) -> int:
    """Back from spent to available, last-charged allocation first; a closed one's share goes to
    the first drawable allocation (or stays where it was if there is none)."""
    left = units
    drawable = acct.drawable(books.now)
    for alloc_id, charged in reversed(list(split.items())):
        if left == 0:
            break
        source = acct.allocation(alloc_id) if _known(acct, alloc_id) else None
        if source is None:  # closed: its spent bucket is no longer loaded
            source = _closed_allocation(books, acct, alloc_id)
        take = min(charged, left, source.balance("spent"))
        target = source if source.state != CLOSED else (drawable[0] if drawable else source)
        books.move(source, target, ("spent", "available"), take)
        left -= take
    return units - left


def _closed_allocation(books: Books, acct: Account, alloc_id: int) -> Allocation:
    b = schema.buckets
    alloc = Allocation(alloc_id, acct.id, "grant", 0, books.now, books.now, 0, CLOSED, "")
    for row in books.conn.execute(
        sa.select(b.c.kind, b.c.id, b.c.balance).where(b.c.allocation_id == alloc_id)
    ):
        alloc.buckets[row.kind] = [row.id, row.balance]
    acct.allocations.append(alloc)
    return alloc


def _split(text: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in jsonutil.loads(text).items()}


def _run_row(conn: sa.Connection, run: RunKey) -> Any:
    r = schema.runs
    return conn.execute(sa.select(r).where(r.c.run_key == run.text)).first()


def _insert_run(
    books: Books,
    run: RunKey,
    acct: Account,
    user: str,
    *,
    state: str,
    held: int,
    hold_split: dict[int, int],
    expires_at: dt.datetime | None,
    details: dict[str, Any] | None,
) -> None:
    books.conn.execute(
        schema.runs.insert().values(
            run_key=run.text,
            cluster=run.cluster,
            job_id=run.job_id,
            account_id=acct.id,
            user=user,
            state=state,
            held=held,
            charged=0,
            refunded=0,
            unbilled=0,
            hold_split=jsonutil.dumps_str({str(k): v for k, v in hold_split.items()}),
            charge_split="{}",
            details=jsonutil.dumps_str(details or {}),
            expires_at=expires_at,
            updated_at=books.now,
        )
    )


def _update_run(
    books: Books,
    run: RunKey,
    *,
    details: dict[str, Any] | None = None,
    charge_split: dict[int, int] | None = None,
    **values: Any,
) -> None:
    r = schema.runs
    if charge_split is not None:
        values["charge_split"] = jsonutil.dumps_str({str(k): v for k, v in charge_split.items()})
    if details:
        old = books.conn.execute(sa.select(r.c.details).where(r.c.run_key == run.text)).scalar_one()
        values["details"] = jsonutil.dumps_str({**jsonutil.loads(old), **details})
    books.conn.execute(r.update().where(r.c.run_key == run.text).values(updated_at=books.now, **values))


def _run_json(conn: sa.Connection, row: Any) -> dict[str, Any]:
    a = schema.accounts
    account = conn.execute(sa.select(a.c.name).where(a.c.id == row.account_id)).scalar_one()
    return {
        "run": row.run_key,
        "cluster": row.cluster,
        "jobId": row.job_id,
        "account": account,
        "user": row.user,
        "state": row.state,
        "held": money.text(row.held),
        "charged": money.text(row.charged),
        "refunded": money.text(row.refunded),
        "unbilled": money.text(row.unbilled),
        "expiresAt": aware(row.expires_at).isoformat() if row.expires_at else None,  # type: ignore[union-attr]
        "details": jsonutil.loads(row.details),
    }


def _statement_line(row: Any) -> dict[str, Any]:
    return {
        "transaction": row.id,
        "at": aware(row.created_at).isoformat(),  # type: ignore[union-attr]
        "kind": row.kind,
        "amount": money.text(row.amount),
        "available_after": money.text(row.available_after) if row.available_after is not None else None,
        "run": row.run_key,
        "job_id": row.job_id,
        "user": row.user,
        "actor": row.actor,
        "source": row.source,
        "reason": row.reason,
        "rate_card_version": row.rate_card_version,
        "inputs": jsonutil.loads(row.inputs) if row.inputs else None,
    }
