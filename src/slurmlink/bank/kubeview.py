"""``kubectl get bankaccounts``: the ledger's accounts as a read-only, virtual Kubernetes kind.

Operators already watch the cluster with kubectl; a ``BankAccount`` per bank account puts balances
beside the other objects without a second copy of the books. Nothing is stored as an object: each
list or get reads the ledger (``VirtualSource``), so what kubectl shows is what ``slurmlink bank
balance`` says at that moment. Accounts change only through ``slurmlink bank`` (or ``/bank/v1``),
where grants, holds and charges are idempotent ledger transactions; the kind refuses writes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from slurmlink.auth import roles
from slurmlink.auth.identity import Identity
from slurmlink.bank.errors import NotFound
from slurmlink.bank.ledger import Balance, Ledger
from slurmlink.resources import errors
from slurmlink.resources.access import READ, AccessPolicy, Scope, UnixAccount, base_roles
from slurmlink.resources.kind import Kind, Obj, PrinterColumn

GROUP = "bank.slurmlink.io"
VERSION = "v1"
PLURAL = "bankaccounts"


def _decided_by_the_ledger(obj: Obj, account: UnixAccount) -> bool:
    """A ``user`` reads the accounts they belong to (``Ledger.accounts_of``: members, and accounts
    their jobs ran on). ``LedgerAccounts`` applies that before an object leaves it, so every object
    a user's request is handed is one they may read; this only lets the role list and get at all."""
    return True


class LedgerAccounts:
    """The ``VirtualSource`` of ``BankAccount``: objects built from the ledger on each read."""

    read_only_message = (
        "bankaccounts are a read-only view of the bank's ledger: create accounts, grant, adjust and "
        "transfer service units with slurmlink bank (e.g. slurmlink bank grant ACCOUNT AMOUNT)"
    )

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def list_objects(self, scope: Scope | None) -> list[Obj]:
        call = self.ledger.store.call
        accounts = await call(self.ledger.accounts)
        balances = {b.account: b for b in await call(self.ledger.balances)}
        if scope is not None:
            mine = set(await call(self.ledger.accounts_of, scope.user))
            accounts = [a for a in accounts if a["name"] in mine]
        return [bank_account(a, balances[a["name"]]) for a in accounts if a["name"] in balances]

    async def get_object(self, name: str, scope: Scope | None) -> Obj:
        call = self.ledger.store.call
        try:
            account = await call(self.ledger.account, name)
            balance = await call(self.ledger.balance, name)
        except NotFound:
            raise errors.not_found(GROUP, PLURAL, name) from None
        if scope is not None and name not in await call(self.ledger.accounts_of, scope.user):
            raise errors.forbidden(
                roles.forbidden_message(Identity(scope.user), GROUP, PLURAL, "get", None, name),
                GROUP,
                PLURAL,
                name,
            )
        return bank_account(account, balance)


def _rfc3339(text: str) -> str:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bank_account(account: dict[str, Any], balance: Balance) -> Obj:
    """One ``BankAccount``: what the account is (spec) and where its units stand (status)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BankAccount",
        "metadata": {"name": account["name"], "creationTimestamp": _rfc3339(account["createdAt"])},
        "spec": {
            "cluster": account["cluster"],
            "parent": account["parent"],
            "description": account["description"],
        },
        "status": {
            "state": balance.status,
            "available": str(balance.available),
            "held": str(balance.held),
            "spent": str(balance.spent),
            "granted": str(balance.granted),
            "upcoming": str(balance.upcoming),
            "overdraftLimit": str(balance.overdraft),
            "users": account["users"],
            "userCaps": account["userCaps"],
        },
    }


def bank_account_kind(ledger: Ledger) -> Kind:
    """The ``BankAccount`` kind over ``ledger``: every reading role sees all accounts, a ``user``
    their own; nobody writes (405, pointing at ``slurmlink bank``)."""
    return Kind(
        group=GROUP,
        kind="BankAccount",
        plural=PLURAL,
        singular="bankaccount",
        namespaced=False,
        versions=(VERSION,),
        storage_version=VERSION,
        short_names=("bacct",),
        printer_columns=(
            PrinterColumn("Available", ".status.available", description="Service units left to use"),
            PrinterColumn("Held", ".status.held", description="Held for running jobs"),
            PrinterColumn("Spent", ".status.spent", description="Charged to current allocations"),
            PrinterColumn("Status", ".status.state", description="active, or locked (no new jobs)"),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        ),
        access=AccessPolicy(roles=base_roles(accountant=READ), user_reads=_decided_by_the_ledger),
        verbs=("get", "list"),
        source=LedgerAccounts(ledger),
    )
