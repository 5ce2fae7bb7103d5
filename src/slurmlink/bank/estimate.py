"""What a job may cost before it runs, and what a finished run costs, under one rate card.

:func:`quote` prices a submission as ``job_submit`` sees it, where whatever the user left out is
missing: tasks, CPUs and time are filled from the partition's facts on the card and never taken as
zero, ``-p a,b`` is priced at the dearest partition, and an array at its task count. :func:`charge`
prices a run from what Slurm allocated and how long it ran, then applies the card's end-state policy.
Both record every number they used in ``inputs``, so a statement line can be recomputed.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from slurmlink.bank.ratecard import CHARGE, CHARGE_ELAPSED, REFUND, PartitionRate, RateCard
from slurmlink.bank.tres import (
    INFINITE,
    TresError,
    array_task_count,
    billing_value,
    gres_counts,
    slurm_billing,
)

__all__ = [
    "Charge",
    "ChargeError",
    "CostError",
    "EstimateError",
    "JobRequest",
    "Quote",
    "RunUsage",
    "charge",
    "from_job_desc",
    "quote",
]

#: Slurm's "not given" values in a job description (slurm.h NO_VAL16, NO_VAL, NO_VAL64).
NO_VAL16: Final = 0xFFFE
NO_VAL: Final = 0xFFFFFFFE
NO_VAL64: Final = 0xFFFFFFFFFFFFFFFE
_NOT_GIVEN: Final = frozenset({NO_VAL16, NO_VAL, NO_VAL64})
#: ``job_desc.shared`` of ``--exclusive`` (JOB_SHARED_NONE).
_SHARED_NONE: Final = 0
_SECONDS_PER_HOUR: Final = Decimal(3600)


class CostError(ValueError):
    """A cost that cannot be computed; the message says what is missing and how to fix it."""


class EstimateError(CostError):
    """A submission the card cannot price (unknown partition, no time limit anywhere, …)."""


class ChargeError(CostError):
    """A finished run the card cannot price."""


@dataclass(frozen=True)
class JobRequest:
    """A submission as ``job_submit`` sees it, before Slurm applies defaults; None is "not given".

    ``partition`` may list several (``a,b``). ``time_limit`` is minutes,
    :data:`~slurmlink.bank.tres.INFINITE` for ``--time=UNLIMITED``. Memory is MiB. ``tres_per_*`` are
    Slurm's GRES request texts (``gres:gpu:2``).
    """

    partition: str | None = None
    account: str | None = None
    user_id: int | None = None
    num_tasks: int | None = None
    cpus_per_task: int | None = None
    min_cpus: int | None = None
    min_nodes: int | None = None
    ntasks_per_node: int | None = None
    time_limit: int | None = None
    exclusive: bool = False
    tres_per_node: str | None = None
    tres_per_job: str | None = None
    tres_per_task: str | None = None
    min_mem_per_node: int | None = None
    min_mem_per_cpu: int | None = None
    qos: str | None = None
    array_inx: str | None = None


def _given_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if not isinstance(value, int) or value in _NOT_GIVEN:
        return None
    return value


def _given_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def from_job_desc(desc: Mapping[str, Any]) -> JobRequest:
    """A :class:`JobRequest` from ``job_desc`` fields (e.g. sent by ``job_submit.lua``).

    Slurm's NO_VAL sentinels and absent fields become None; ``default_account``/``default_qos`` stand in
    for an account or QOS the user did not name, as Slurm will use them; ``shared == 0`` is
    ``--exclusive``.
    """
    shared = _given_int(desc.get("shared"))
    return JobRequest(
        partition=_given_str(desc.get("partition")),
        account=_given_str(desc.get("account")) or _given_str(desc.get("default_account")),
        user_id=_given_int(desc.get("user_id")),
        num_tasks=_given_int(desc.get("num_tasks")),
        cpus_per_task=_given_int(desc.get("cpus_per_task")),
        min_cpus=_given_int(desc.get("min_cpus")),
        min_nodes=_given_int(desc.get("min_nodes")),
        ntasks_per_node=_given_int(desc.get("ntasks_per_node")),
        time_limit=_given_int(desc.get("time_limit")),
        exclusive=shared == _SHARED_NONE,
        tres_per_node=_given_str(desc.get("tres_per_node")),
        tres_per_job=_given_str(desc.get("tres_per_job")),
        tres_per_task=_given_str(desc.get("tres_per_task")),
        min_mem_per_node=_given_int(desc.get("min_mem_per_node")),
        min_mem_per_cpu=_given_int(desc.get("min_mem_per_cpu")),
        qos=_given_str(desc.get("qos")) or _given_str(desc.get("default_qos")),
        array_inx=_given_str(desc.get("array_inx")),
    )


@dataclass(frozen=True)
class Quote:
    """The most a submission may cost: ``per_task`` x ``tasks`` (array tasks; 1 for a plain job)."""

    amount: Decimal
    per_task: Decimal
    tasks: int
    partition: str | None
    rate_card_version: str
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunUsage:
    """One finished run as accounting reports it.

    ``tres`` is the allocation (:func:`~slurmlink.bank.tres.parse_tres` of AllocTRES); ``elapsed_s``
    excludes suspended time, as sacct's ElapsedRaw does; ``end_state`` is sacct's State
    (``CANCELLED by 1000`` reads as CANCELLED); ``nodes`` defaults to the allocation's node count.
    """

    partition: str
    qos: str | None
    tres: Mapping[str, Decimal]
    elapsed_s: int
    end_state: str
    nodes: int | None = None
    account: str | None = None


@dataclass(frozen=True)
class Charge:
    """What a run costs, the end-state policy that decided it (charge, refund, charge_elapsed) and why."""

    amount: Decimal
    policy: str
    rate_card_version: str
    inputs: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def _free_reason(card: RateCard, account: str | None, qos: str | None) -> str | None:
    if account and account.lower() in card.exempt_accounts:
        return f"account {account} is exempt under rate card {card.version}"
    if qos and qos.lower() in card.free_qos:
        return f"QOS {qos} is free under rate card {card.version}"
    return None


def _rate(card: RateCard, name: str, error: type[CostError]) -> tuple[PartitionRate, bool]:
    """The partition's rate, or the card's default rate when its policy allows; True if the latter."""
    rate = card.partition(name)
    if rate is not None:
        return rate, False
    if card.unknown_partition == "default_rate" and card.default_partition is not None:
        return card.partitions[card.default_partition], True
    raise error(
        f"partition {name} has no price in rate card {card.version}; add [partition.{name}] to the card "
        f"or use one of: {', '.join(sorted(card.partitions))}"
    )


def _amount(
    card: RateCard, quantity: Decimal, price: Decimal, seconds: int, qos_factor: Decimal, *, minimum: bool
) -> tuple[Decimal, bool]:
    """price x quantity x hours x QOS factor, rounded once, and whether the card's minimum raised it.

    The division comes last, so the one rounding sees the exact value. The minimum applies only to a
    cost above zero: a free partition or QOS stays free and a run that never ran costs nothing.
    """
    with decimal.localcontext(prec=60):
        exact = price * quantity * Decimal(seconds) * qos_factor / _SECONDS_PER_HOUR
    amount = card.round(exact)
    floor = card.round(card.min_charge)
    if minimum and exact > 0 and amount < floor:
        return floor, True
    return amount, False


def _quantity(
    card: RateCard, rate: PartitionRate, tres: Mapping[str, Decimal], nodes: int, inputs: dict[str, Any]
) -> Decimal:
    """The units the formula prices per hour: CPUs, nodes or billing units."""
    if card.formula == "cpu_hours":
        return tres["cpu"]
    if card.formula == "node_hours":
        return Decimal(nodes)
    inputs["weights"] = rate.weights_text
    inputs["max_tres"] = rate.max_tres
    if card.formula == "tres_billing":
        billing = billing_value(tres, rate.weights, max_tres=rate.max_tres)
    elif "billing" in tres:
        billing = tres["billing"]
        inputs["billing_source"] = "allocation"
    else:
        billing = Decimal(slurm_billing(tres, rate.weights, max_tres=rate.max_tres))
        inputs["billing_source"] = "weights"
    inputs["billing"] = _plain(billing)
    return billing


def _granular(card: RateCard, seconds: int) -> int:
    step = card.charge_granularity_s
    return seconds if not step else -(-seconds // step) * step


def _plain(value: Decimal | int) -> str:
    """A number as a short decimal string: computed values carry no trailing zeros or exponents."""
    return format(Decimal(value).normalize(), "f")


def _strs(values: Mapping[str, Decimal | int]) -> dict[str, str]:
    return {name: _plain(value) for name, value in sorted(values.items())}


def quote(card: RateCard, request: JobRequest) -> Quote:
    """The most ``request`` may cost under ``card``; raises :class:`EstimateError` when it cannot say."""
    try:
        tasks = array_task_count(request.array_inx)
    except TresError as exc:
        raise EstimateError(f"cannot count the job array's tasks: {exc}") from None
    names = [name.strip() for name in (request.partition or "").split(",") if name.strip()]
    base: dict[str, Any] = {"rate_card_version": card.version, "formula": card.formula, "array_tasks": tasks}
    if reason := _free_reason(card, request.account, request.qos):
        zero = card.round(Decimal(0))
        inputs = {**base, "partitions": names, "reason": reason}
        return Quote(zero, zero, tasks, names[0] if names else None, card.version, inputs)
    if not names:
        default = card.slurm_default_partition()
        if default is None:
            raise EstimateError(
                f"the job names no partition and rate card {card.version} marks none as Slurm's default; "
                "submit with -p PARTITION or set default = true on the default partition in the card"
            )
        names = [default.name]
        base["defaults_used"] = ["partition"]
    best: tuple[Decimal, str, dict[str, Any]] | None = None
    considered: dict[str, str] = {}
    for name in names:
        per_task, inputs = _quote_partition(card, request, name)
        considered[name] = str(per_task)
        if best is None or per_task > best[0]:
            best = (per_task, name, inputs)
    assert best is not None
    per_task, name, inputs = best
    inputs = {**base, **inputs, "defaults_used": base.get("defaults_used", []) + inputs["defaults_used"]}
    if len(names) > 1:
        inputs["partitions_considered"] = considered
    return Quote(per_task * tasks, per_task, tasks, name, card.version, inputs)


def _quote_partition(card: RateCard, request: JobRequest, name: str) -> tuple[Decimal, dict[str, Any]]:
    """One array task's (or plain job's) cost in one partition, and the numbers it came from."""
    rate, default_rate = _rate(card, name, EstimateError)
    defaults: list[str] = []
    defaults.extend(key for key in ("num_tasks", "cpus_per_task") if getattr(request, key) is None)
    cpus_per_task = request.cpus_per_task or 1
    nodes = request.min_nodes or 1
    per_node = request.ntasks_per_node
    num_tasks = request.num_tasks
    if num_tasks is None:
        num_tasks = nodes * per_node if per_node else 1
    cpus = max(num_tasks * cpus_per_task, request.min_cpus or 0, nodes * (per_node or 1) * cpus_per_task, 1)
    cpus_per_node = rate.node_cpus()
    if per_node:
        nodes = max(nodes, -(-num_tasks // per_node))
    if cpus_per_node:
        nodes = max(nodes, -(-cpus // cpus_per_node))
    inputs: dict[str, Any] = {"partition": name}
    if default_rate:
        inputs["priced_as"] = rate.name
        defaults.append("rate")
    if request.exclusive:
        if cpus_per_node:
            cpus = nodes * cpus_per_node
            defaults.append("cpus_per_node")
        else:
            inputs["exclusive_cpus_unknown"] = True
    tres: dict[str, Decimal] = {"cpu": Decimal(cpus), "node": Decimal(nodes)}
    mem = _memory(request, rate, cpus, nodes, defaults)
    if mem is not None:
        tres["mem"] = Decimal(mem)
    try:
        for gres, count in _gres(request, num_tasks, nodes).items():
            tres[gres] = Decimal(count)
    except TresError as exc:
        raise EstimateError(f"cannot read the job's GRES request: {exc}") from None
    minutes = _minutes(card, request, rate, name, defaults)
    seconds = _granular(card, minutes * 60)
    qos_factor = card.qos_factor(request.qos)
    quantity = _quantity(card, rate, tres, nodes, inputs)
    amount, raised = _amount(card, quantity, rate.price, seconds, qos_factor, minimum=True)
    if raised:
        inputs["min_charge_applied"] = True
    inputs.update(
        {
            "cpus": cpus,
            "nodes": nodes,
            "tasks": num_tasks,
            "cpus_per_task": cpus_per_task,
            "exclusive": request.exclusive,
            "tres": _strs(tres),
            "time_limit_min": minutes,
            "charged_s": seconds,
            "hours": str(Decimal(seconds) / _SECONDS_PER_HOUR),
            "price": str(rate.price),
            "quantity": _plain(quantity),
            "qos": request.qos,
            "qos_factor": str(qos_factor),
            "min_charge": str(card.min_charge),
            "rounding": {"places": card.rounding_places, "mode": card.rounding_mode},
            "defaults_used": defaults,
        }
    )
    return amount, inputs


def _memory(
    request: JobRequest, rate: PartitionRate, cpus: int, nodes: int, defaults: list[str]
) -> int | None:
    if request.min_mem_per_node is not None:
        return request.min_mem_per_node * nodes
    if request.min_mem_per_cpu is not None:
        return request.min_mem_per_cpu * cpus
    if rate.def_mem_per_node is not None:
        defaults.append("def_mem_per_node")
        return rate.def_mem_per_node * nodes
    if rate.def_mem_per_cpu is not None:
        defaults.append("def_mem_per_cpu")
        return rate.def_mem_per_cpu * cpus
    return None


def _gres(request: JobRequest, tasks: int, nodes: int) -> dict[str, int]:
    """Each GRES's job total: the largest of the per-job, per-node x nodes and per-task x tasks requests."""
    totals: dict[str, int] = {}
    for text, times in (
        (request.tres_per_job, 1),
        (request.tres_per_node, nodes),
        (request.tres_per_task, tasks),
    ):
        for name, count in gres_counts(text).items():
            totals[name] = max(totals.get(name, 0), count * times)
    return totals


def _minutes(card: RateCard, request: JobRequest, rate: PartitionRate, name: str, defaults: list[str]) -> int:
    """The time limit to price: the job's, else the partition's default, else its maximum."""
    limit = request.time_limit
    if limit == 0:  # Slurm reads a zero time limit as no limit
        limit = INFINITE
    if limit is None and rate.default_time is not None:
        limit = rate.default_time
        defaults.append("default_time")
    if limit is None or limit == INFINITE:
        limit = rate.max_time
        defaults.append("max_time")
    if limit == INFINITE:
        raise EstimateError(
            f"the job has no time limit and partition {name} has no default_time or max_time in rate card "
            f"{card.version}; submit with --time, or give the partition default_time/max_time in the card"
        )
    return limit


def charge(card: RateCard, usage: RunUsage) -> Charge:
    """What a finished run costs under ``card``; raises :class:`ChargeError` when it cannot be priced."""
    words = usage.end_state.split()
    if not words:
        raise ChargeError(f"run in partition {usage.partition} has no end state; give sacct's State")
    state = words[0].rstrip("+").upper()
    policy = card.policy_for(state)
    inputs: dict[str, Any] = {
        "rate_card_version": card.version,
        "formula": card.formula,
        "partition": usage.partition,
        "end_state": state,
        "policy": policy,
        "elapsed_s": usage.elapsed_s,
        "tres": _strs(usage.tres),
    }
    zero = card.round(Decimal(0))
    if usage.elapsed_s < 0:
        raise ChargeError(f"run in partition {usage.partition} has negative elapsed time {usage.elapsed_s} s")
    if reason := _free_reason(card, usage.account, usage.qos):
        return Charge(zero, policy, card.version, {**inputs, "reason": reason}, reason)
    if policy == REFUND:
        reason = f"end state {state} is refunded under rate card {card.version}"
        return Charge(zero, REFUND, card.version, {**inputs, "reason": reason}, reason)
    rate, default_rate = _rate(card, usage.partition, ChargeError)
    if default_rate:
        inputs["priced_as"] = rate.name
    nodes = usage.nodes if usage.nodes is not None else int(usage.tres.get("node", 0))
    if card.formula == "cpu_hours" and "cpu" not in usage.tres:
        raise ChargeError(
            f"run in partition {usage.partition} has no cpu in its allocated TRES; cannot price CPU-hours"
        )
    if card.formula == "node_hours" and nodes < 1:
        raise ChargeError(f"run in partition {usage.partition} has no node count; cannot price node-hours")
    seconds = usage.elapsed_s if policy == CHARGE_ELAPSED else _granular(card, usage.elapsed_s)
    qos_factor = card.qos_factor(usage.qos)
    quantity = _quantity(card, rate, usage.tres, nodes, inputs)
    amount, raised = _amount(card, quantity, rate.price, seconds, qos_factor, minimum=policy == CHARGE)
    if raised:
        inputs["min_charge_applied"] = True
    inputs.update(
        {
            "nodes": nodes,
            "charged_s": seconds,
            "hours": str(Decimal(seconds) / _SECONDS_PER_HOUR),
            "price": str(rate.price),
            "quantity": _plain(quantity),
            "qos": usage.qos,
            "qos_factor": str(qos_factor),
            "min_charge": str(card.min_charge),
            "rounding": {"places": card.rounding_places, "mode": card.rounding_mode},
        }
    )
    return Charge(amount, policy, card.version, inputs)
