"""The bank's versioned rate card: what a unit of use costs, per partition, QOS and end state.

A card is immutable and carries a version; every charge stores the version and the card's JSON, so a
statement can be recomputed years later. Cards come from slurmlink's own TOML format, from the
``bank-config.toml`` of slurm-banking-plugins (its ``[PartitionPrice]`` table is the seed's CPU-hour
price list), or from the JSON the ledger stored. All three go through one reader, so every mistake is
reported the same way: which key, in which file, and what is accepted. The format is described in
``docs/bank-rates.md``.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from slurmlink.bank.tres import (
    INFINITE,
    TresError,
    format_time_limit,
    parse_billing_weights,
    parse_time_limit,
)

__all__ = [
    "CHARGE",
    "CHARGE_ELAPSED",
    "DEFAULT_END_STATE_POLICY",
    "END_STATES",
    "FORMULAS",
    "REFUND",
    "PartitionRate",
    "RateCard",
    "RateCardError",
    "load_rate_card",
]

#: How a cost is computed (docs/bank-rates.md, "Formulas").
FORMULAS: Final = ("cpu_hours", "node_hours", "tres_billing", "slurm_billing")

CHARGE: Final = "charge"
REFUND: Final = "refund"
CHARGE_ELAPSED: Final = "charge_elapsed"
END_STATE_POLICIES: Final = (CHARGE, REFUND, CHARGE_ELAPSED)

#: The end states sacct reports for a finished run.
END_STATES: Final = (
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REQUEUED",
    "REVOKED",
    "TIMEOUT",
)

#: A run the site's hardware killed is refunded; one the user's own choices ended is charged.
DEFAULT_END_STATE_POLICY: Final[Mapping[str, str]] = MappingProxyType(
    {
        "NODE_FAIL": REFUND,
        "BOOT_FAIL": REFUND,
        "TIMEOUT": CHARGE,
        "OUT_OF_MEMORY": CHARGE,
        "FAILED": CHARGE,
        "COMPLETED": CHARGE,
        "CANCELLED": CHARGE_ELAPSED,
        "PREEMPTED": CHARGE,
    }
)

UNKNOWN_PARTITION_POLICIES: Final = ("reject", "default_rate")
ROUNDING_MODES: Final = (
    "ROUND_HALF_UP",
    "ROUND_HALF_EVEN",
    "ROUND_HALF_DOWN",
    "ROUND_UP",
    "ROUND_DOWN",
    "ROUND_CEILING",
    "ROUND_FLOOR",
    "ROUND_05UP",
)

#: The seed's tables: [PartitionPrice] (and [QosMultiplier] of its early releases) are read; the
#: plugins' switches and API address mean nothing to slurmlink.
_SEED_TABLES: Final = ("PartitionPrice", "QosMultiplier", "Enable", "API", "version")
_CARD_KEYS: Final = (
    "version",
    "formula",
    "rounding",
    "partition",
    "qos",
    "min_charge",
    "charge_granularity_s",
    "free_qos",
    "exempt_accounts",
    "policy",
)
_PARTITION_KEYS: Final = (
    "price",
    "multiplier",
    "weights",
    "max_tres",
    "default",
    "default_time",
    "max_time",
    "cpus_per_node",
    "total_nodes",
    "total_cpus",
    "def_mem_per_cpu",
    "def_mem_per_node",
)
#: Whole-number partition facts (CPUs, nodes, MiB).
_FACTS: Final = ("cpus_per_node", "total_nodes", "total_cpus", "def_mem_per_cpu", "def_mem_per_node")
_POLICY_KEYS: Final = ("unknown_partition", "default_partition", "end_state")
#: Failure-policy settings some drafts put in a card; they belong to the bank's configuration.
_NOT_CARD_POLICY: Final = ("on_stale_cache", "overdraft")


class RateCardError(ValueError):
    """A rate card that cannot be used; the message names the file, the key and what is accepted."""


@dataclass(frozen=True)
class PartitionRate:
    """One partition's price and the facts needed to estimate a job that leaves them out.

    ``price`` is per unit-hour, the unit depending on the card's formula: a CPU-hour (``cpu_hours``), a
    node-hour (``node_hours``) or a billing-unit-hour (``tres_billing``, ``slurm_billing``). Times are
    minutes, :data:`~slurmlink.bank.tres.INFINITE` for unlimited; memory is MiB.
    """

    name: str
    price: Decimal
    weights_text: str | None = None
    max_tres: bool = False
    default: bool = False
    default_time: int | None = None
    max_time: int = INFINITE
    cpus_per_node: int | None = None
    total_nodes: int | None = None
    total_cpus: int | None = None
    def_mem_per_cpu: int | None = None
    def_mem_per_node: int | None = None

    def node_cpus(self) -> int | None:
        """CPUs per node: ``cpus_per_node``, else the partition's ``total_cpus / total_nodes``."""
        if self.cpus_per_node is not None:
            return self.cpus_per_node
        if self.total_cpus and self.total_nodes:
            return max(self.total_cpus // self.total_nodes, 1)
        return None

    @cached_property
    def weights(self) -> Mapping[str, Decimal]:
        """``TRESBillingWeights`` as weight per base unit (empty: Slurm bills CPUs)."""
        return MappingProxyType(parse_billing_weights(self.weights_text))

    def to_dict(self) -> dict[str, Any]:
        """The partition's entry in the card's JSON and TOML form."""
        entry: dict[str, Any] = {"price": str(self.price)}
        if self.weights_text is not None:
            entry["weights"] = self.weights_text
        if self.max_tres:
            entry["max_tres"] = True
        if self.default:
            entry["default"] = True
        if self.default_time is not None:
            entry["default_time"] = format_time_limit(self.default_time)
        if self.max_time != INFINITE:
            entry["max_time"] = self.max_time
        for name in _FACTS:
            if getattr(self, name) is not None:
                entry[name] = getattr(self, name)
        return entry


@dataclass(frozen=True)
class RateCard:
    """A versioned price list and the policies that turn usage into a charge."""

    version: str
    formula: str
    partitions: Mapping[str, PartitionRate]
    rounding_places: int = 2
    rounding_mode: str = "ROUND_HALF_UP"
    qos_factors: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    min_charge: Decimal = Decimal(0)
    charge_granularity_s: int | None = None
    free_qos: frozenset[str] = frozenset()
    exempt_accounts: frozenset[str] = frozenset()
    end_state_policy: Mapping[str, str] = field(default_factory=lambda: DEFAULT_END_STATE_POLICY)
    unknown_partition: str = "reject"
    default_partition: str | None = None

    def partition(self, name: str) -> PartitionRate | None:
        """The partition's rate, or None when the card does not list it."""
        return self.partitions.get(name)

    def slurm_default_partition(self) -> PartitionRate | None:
        """The partition marked as Slurm's default one, which a job without ``-p`` runs in."""
        return next((rate for rate in self.partitions.values() if rate.default), None)

    def qos_factor(self, qos: str | None) -> Decimal:
        """The QOS's factor; a QOS the card does not list costs the plain price."""
        return self.qos_factors.get((qos or "").lower(), Decimal(1))

    def policy_for(self, end_state: str) -> str:
        """What a run ending in this state pays (``charge`` for a state the card does not name)."""
        return self.end_state_policy.get(end_state, CHARGE)

    def round(self, amount: Decimal) -> Decimal:
        """The amount rounded as the card says (by default half-up to cents, like the seed)."""
        exponent = Decimal(1).scaleb(-self.rounding_places)
        with decimal.localcontext(prec=60):
            return amount.quantize(exponent, rounding=getattr(decimal, self.rounding_mode))

    def to_dict(self) -> dict[str, Any]:
        """The card as slurmlink's own format; amounts are decimal strings."""
        card: dict[str, Any] = {
            "version": self.version,
            "formula": self.formula,
            "rounding": {"places": self.rounding_places, "mode": self.rounding_mode},
            "partition": {name: rate.to_dict() for name, rate in sorted(self.partitions.items())},
            "qos": {name: str(factor) for name, factor in sorted(self.qos_factors.items())},
            "min_charge": str(self.min_charge),
            "free_qos": sorted(self.free_qos),
            "exempt_accounts": sorted(self.exempt_accounts),
            "policy": {
                "unknown_partition": self.unknown_partition,
                "end_state": dict(sorted(self.end_state_policy.items())),
            },
        }
        if self.charge_granularity_s is not None:
            card["charge_granularity_s"] = self.charge_granularity_s
        if self.default_partition is not None:
            card["policy"]["default_partition"] = self.default_partition
        return card

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): what the ledger stores next to the version."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> RateCard:
        """A card from :meth:`to_json` output, checked like a TOML card."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RateCardError(f"{source}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise RateCardError(f"{source}: a rate card is a JSON object")
        if "version" not in data:
            raise RateCardError(f"{source}: version: missing; a stored card always names its version")
        return _Reader(source).card(data, derived_version="")


def load_rate_card(source: str | os.PathLike[str], *, name: str | None = None) -> RateCard:
    """A card from a TOML file (a path object) or TOML text (a string), in either accepted format.

    A file with a ``[PartitionPrice]`` table is the seed's ``bank-config.toml``: formula ``cpu_hours``
    with its prices, ``[QosMultiplier]`` as QOS factors, ``[Enable]``/``[API]`` ignored. Anything else
    is slurmlink's format. Without a ``version`` key the version is derived from the text
    (``seed-``/``card-`` and 12 hex digits of its SHA-256), so importing one file twice gives one version.
    ``name`` is what error messages call the source.
    """
    if isinstance(source, str):
        text, where = source, name or "<text>"
    else:
        where = name or os.fspath(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise RateCardError(f"{where}: cannot read the rate card ({exc.strerror})") from exc
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        hint = (
            " (to read a file, pass a pathlib.Path)" if isinstance(source, str) and "\n" not in text else ""
        )
        raise RateCardError(f"{where}: not valid TOML: {exc}{hint}") from exc
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    reader = _Reader(where)
    if "PartitionPrice" in data:
        return reader.seed(data, derived_version=f"seed-{digest}")
    return reader.card(data, derived_version=f"card-{digest}")


class _Reader:
    """Checks a parsed card, naming the source and key of anything wrong."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> RateCardError:
        return RateCardError(f"{self.source}: {key}: {problem}")

    def keys(self, table: Mapping[str, Any], accepted: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in accepted:
                path = f"{where}.{key}" if where else key
                raise self.error(path, f"unknown key; accepted here: {', '.join(accepted)}")

    def table(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(key, f"{value!r} is not a table")
        return value

    def decimal(self, value: Any, key: str, *, example: str = "1.25") -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, float)):
            raise self.error(key, f"{value!r} is not a decimal number; write e.g. {example}")
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise self.error(key, f"{value!r} is not a decimal number; write e.g. {example}") from None
        if not number.is_finite():
            raise self.error(key, f"{value!r} is not a finite number; write e.g. {example}")
        if number < 0:
            raise self.error(key, f"{value} is negative; prices and factors are 0 or more")
        return number

    def integer(self, value: Any, key: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"{value!r} is not a whole number of at least {minimum}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"{value!r} is not a non-empty string")
        return value.strip()

    def names(self, value: Any, key: str) -> frozenset[str]:
        if not isinstance(value, list):
            raise self.error(key, f'{value!r} is not a list of names; write e.g. ["scavenger"]')
        return frozenset(self.string(item, key).lower() for item in value)

    def time(self, value: Any, key: str) -> int:
        try:
            if isinstance(value, (str, int)):
                minutes = parse_time_limit(value)
                if minutes > 0:
                    return minutes
        except TresError:
            pass
        raise self.error(
            key, f'{value!r} is not a time limit; write minutes (> 0), D-HH:MM:SS or "UNLIMITED"'
        )

    def choice(self, value: Any, key: str, accepted: tuple[str, ...]) -> str:
        if value not in accepted:
            raise self.error(key, f"{value!r} is not accepted; write one of {', '.join(accepted)}")
        return str(value)

    def version(self, data: Mapping[str, Any], derived: str) -> str:
        if "version" not in data:
            return derived
        return self.string(data["version"], "version")

    def seed(self, data: Mapping[str, Any], *, derived_version: str) -> RateCard:
        """The seed's ``bank-config.toml``: CPU-hour prices per partition, rounded half-up to cents."""
        self.keys(data, _SEED_TABLES, "")
        prices = self.table(data["PartitionPrice"], "PartitionPrice")
        if not prices:
            raise self.error("PartitionPrice", "no partitions; list each partition's CPU-hour price")
        partitions = {
            str(part): PartitionRate(
                name=str(part), price=self.decimal(price, f"PartitionPrice.{part}", example="1.00")
            )
            for part, price in prices.items()
        }
        multipliers = self.table(data.get("QosMultiplier", {}), "QosMultiplier")
        qos = {
            str(q).lower(): self.decimal(factor, f"QosMultiplier.{q}", example="1")
            for q, factor in multipliers.items()
        }
        return RateCard(
            version=self.version(data, derived_version),
            formula="cpu_hours",
            partitions=MappingProxyType(partitions),
            qos_factors=MappingProxyType(qos),
        )

    def card(self, data: Mapping[str, Any], *, derived_version: str) -> RateCard:
        """slurmlink's own format (docs/bank-rates.md)."""
        self.keys(data, _CARD_KEYS, "")
        if "formula" not in data:
            raise self.error("formula", f"missing; write one of {', '.join(FORMULAS)}")
        formula = self.choice(data["formula"], "formula", FORMULAS)
        rounding = self.table(data.get("rounding", {}), "rounding")
        self.keys(rounding, ("places", "mode"), "rounding")
        places = self.integer(rounding.get("places", 2), "rounding.places", minimum=0)
        mode = self.choice(rounding.get("mode", "ROUND_HALF_UP"), "rounding.mode", ROUNDING_MODES)
        parts = self.table(data.get("partition", {}), "partition")
        if not parts:
            raise self.error("partition", "no partitions; add a [partition.NAME] table with a price")
        partitions = {str(name): self.partition(str(name), entry) for name, entry in parts.items()}
        if sum(rate.default for rate in partitions.values()) > 1:
            raise self.error("partition", "more than one partition has default = true; mark one")
        qos_table = self.table(data.get("qos", {}), "qos")
        qos = {str(q).lower(): self.decimal(f, f"qos.{q}", example="1.0") for q, f in qos_table.items()}
        granularity = data.get("charge_granularity_s")
        policy = self.table(data.get("policy", {}), "policy")
        for key in _NOT_CARD_POLICY:
            if key in policy:
                raise self.error(
                    f"policy.{key}",
                    "not part of a rate card: it is a failure policy of the bank's configuration; "
                    "remove it here",
                )
        self.keys(policy, _POLICY_KEYS, "policy")
        unknown = self.choice(
            policy.get("unknown_partition", "reject"), "policy.unknown_partition", UNKNOWN_PARTITION_POLICIES
        )
        default_partition = None
        if "default_partition" in policy:
            default_partition = self.string(policy["default_partition"], "policy.default_partition")
            if default_partition not in partitions:
                raise self.error(
                    "policy.default_partition",
                    f"{default_partition!r} is not a partition of this card; name one of "
                    f"{', '.join(sorted(partitions))}",
                )
        if unknown == "default_rate" and default_partition is None:
            raise self.error(
                "policy.default_partition",
                'missing; unknown_partition = "default_rate" prices unknown partitions at the rate of '
                "the partition named here",
            )
        return RateCard(
            version=self.version(data, derived_version),
            formula=formula,
            partitions=MappingProxyType(partitions),
            rounding_places=places,
            rounding_mode=mode,
            qos_factors=MappingProxyType(qos),
            min_charge=self.decimal(data.get("min_charge", 0), "min_charge", example="0.01"),
            charge_granularity_s=None
            if granularity is None
            else self.integer(granularity, "charge_granularity_s", minimum=1),
            free_qos=self.names(data.get("free_qos", []), "free_qos"),
            exempt_accounts=self.names(data.get("exempt_accounts", []), "exempt_accounts"),
            end_state_policy=self.end_states(policy.get("end_state", {})),
            unknown_partition=unknown,
            default_partition=default_partition,
        )

    def partition(self, name: str, value: Any) -> PartitionRate:
        where = f"partition.{name}"
        if not name or any(char in name for char in ", \t"):
            raise self.error(where, "a Slurm partition name has no commas or spaces; list one per table")
        entry = self.table(value, where)
        self.keys(entry, _PARTITION_KEYS, where)
        if "price" in entry and "multiplier" in entry:
            raise self.error(where, "has both price and multiplier; they are one setting, keep one")
        if "price" not in entry and "multiplier" not in entry:
            raise self.error(f"{where}.price", "missing; write the price per unit-hour, e.g. price = 1.00")
        key = "price" if "price" in entry else "multiplier"
        weights = entry.get("weights")
        if weights is not None:
            if not isinstance(weights, str):
                raise self.error(f"{where}.weights", "write Slurm's TRESBillingWeights text as a string")
            try:
                parse_billing_weights(weights)
            except TresError as exc:
                raise self.error(
                    f"{where}.weights", f'{exc}; write e.g. "CPU=1.0,Mem=0.25G,GRES/gpu=2.0"'
                ) from None
        max_tres = entry.get("max_tres", False)
        default = entry.get("default", False)
        for flag, flag_value in (("max_tres", max_tres), ("default", default)):
            if not isinstance(flag_value, bool):
                raise self.error(f"{where}.{flag}", f"{flag_value!r} is not true or false")

        def optional(key: str) -> int | None:
            value = entry.get(key)
            return None if value is None else self.integer(value, f"{where}.{key}", minimum=1)

        return PartitionRate(
            name=name,
            price=self.decimal(entry[key], f"{where}.{key}", example="1.00"),
            weights_text=weights,
            max_tres=max_tres,
            default=default,
            default_time=None
            if entry.get("default_time") is None
            else self.time(entry["default_time"], f"{where}.default_time"),
            max_time=self.time(entry.get("max_time", "UNLIMITED"), f"{where}.max_time"),
            cpus_per_node=optional("cpus_per_node"),
            total_nodes=optional("total_nodes"),
            total_cpus=optional("total_cpus"),
            def_mem_per_cpu=optional("def_mem_per_cpu"),
            def_mem_per_node=optional("def_mem_per_node"),
        )

    def end_states(self, value: Any) -> Mapping[str, str]:
        table = self.table(value, "policy.end_state")
        policies = dict(DEFAULT_END_STATE_POLICY)
        for state, policy in table.items():
            key = f"policy.end_state.{state}"
            if state not in END_STATES:
                raise self.error(key, f"unknown end state; name one of {', '.join(END_STATES)}")
            policies[state] = self.choice(policy, key, END_STATE_POLICIES)
        return MappingProxyType(policies)
