"""A bank ready to use for the quick start: a rate card for its partitions, an account with units.

Done through the bank's API with the admin's credentials, idempotently (an existing card stays current,
an existing account is kept, the first grant is made once by its key), so ``quickstart up`` may run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from slurmlink.client.base import Client
from slurmlink.resources.errors import ApiError

BANK = "/bank/v1"
QUICKSTART_CARD_VERSION = "quickstart-1"
#: What the quick start's account gets at first: enough for many test jobs, few enough to run out.
INITIAL_GRANT = "1000.00"


def _card_body(partitions: Mapping[str, int], default: str | None, cpus_per_node: int) -> list[str]:
    lines = ['formula = "cpu_hours"']
    for name, default_time in partitions.items():
        lines += [
            "",
            f"[partition.{json.dumps(name)}]",
            'price = "1.00"',
            *(["default = true"] if name == default else []),
            f"default_time = {default_time}",
            'max_time = "1-00:00:00"',
            f"cpus_per_node = {cpus_per_node}",
        ]
    return lines


def quickstart_rate_card(
    partitions: Mapping[str, int], default: str | None, cpus_per_node: int
) -> tuple[str, str]:
    """The card's version and TOML text. One CPU-hour costs one SU in every partition; a job without
    --time is priced for its partition's DefaultTime (``partitions`` maps names to it, in minutes), at
    most a day.

    The version is ``quickstart-1`` for the quick start's usual single ``debug`` partition, else one
    derived from the card's content: a card never changes under its version, and changing the quick
    start's partitions brings a new card.
    """
    body = _card_body(partitions, default, cpus_per_node)
    version = QUICKSTART_CARD_VERSION
    if dict(partitions) != {"debug": 60} or default != "debug":
        version += "-" + hashlib.sha256("\n".join(body).encode()).hexdigest()[:10]
    return version, "\n".join([f'version = "{version}"', *body]) + "\n"


async def ensure_bank(
    client: Client,
    *,
    partitions: Mapping[str, int],
    default_partition: str | None,
    cpus_per_node: int,
    account: str,
    users: list[str],
) -> dict[str, Any]:
    """Import the quick start's rate card unless one is current (or the current one is an earlier quick
    start card for other partitions); create ``account`` with a first grant."""
    cards = (await client.call("GET", f"{BANK}/ratecards"))["items"]
    current = next((card["version"] for card in cards if card["current"]), None)
    wanted, card = quickstart_rate_card(partitions, default_partition, cpus_per_node)
    if current is None or (current != wanted and str(current).startswith(QUICKSTART_CARD_VERSION)):
        body = {"toml": card, "name": "the quick start's card"}
        await client.call("POST", f"{BANK}/ratecards", body)
    try:
        await client.call("POST", f"{BANK}/accounts", {"name": account, "description": "the quick start's"})
    except ApiError as exc:
        if exc.code != 409:
            raise
    for user in users:
        await client.call("PUT", f"{BANK}/accounts/{account}/users/{user}", {})
    await client.call(
        "POST",
        f"{BANK}/accounts/{account}/grants",
        {"amount": INITIAL_GRANT, "reference": "quickstart"},
        headers={"Idempotency-Key": f"quickstart-initial-grant-{account}"},
    )
    balance: dict[str, Any] = await client.call("GET", f"{BANK}/accounts/{account}/balance")
    return balance
