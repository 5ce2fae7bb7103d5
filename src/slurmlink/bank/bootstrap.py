"""A bank ready to use for the quick start: a rate card for its partition, an account with units.

Done through the bank's API with the admin's credentials, idempotently (an existing card stays current,
an existing account is kept, the first grant is made once by its key), so ``quickstart up`` may run again.
"""

from __future__ import annotations

from typing import Any

from slurmlink.client.base import Client
from slurmlink.resources.errors import ApiError

BANK = "/bank/v1"
QUICKSTART_CARD_VERSION = "quickstart-1"
#: What the quick start's account gets at first: enough for many test jobs, few enough to run out.
INITIAL_GRANT = "1000.00"


def quickstart_rate_card(partition: str, cpus_per_node: int) -> str:
    """One CPU-hour costs one SU; jobs without --time are priced for an hour, at most a day."""
    return f"""\
version = "{QUICKSTART_CARD_VERSION}"
formula = "cpu_hours"

[partition.{partition}]
price = "1.00"
default = true
default_time = 60
max_time = "1-00:00:00"
cpus_per_node = {cpus_per_node}
"""


async def ensure_bank(
    client: Client, *, partition: str, cpus_per_node: int, account: str, users: list[str]
) -> dict[str, Any]:
    """Import the quick start's rate card unless one is current; create ``account`` with a first grant."""
    cards = (await client.call("GET", f"{BANK}/ratecards"))["items"]
    if not any(card["current"] for card in cards):
        body = {"toml": quickstart_rate_card(partition, cpus_per_node), "name": "the quick start's card"}
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
