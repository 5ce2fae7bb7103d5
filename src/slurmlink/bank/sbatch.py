"""A job script's ``#SBATCH`` lines (and sbatch-style options) as the job_submit fields a quote needs.

``slurmlink bank quote job.sh`` prices a script before it is submitted, from the same fields
``job_submit.lua`` hands the bank, so the number a user sees beforehand is the number the submit
check uses. Only the options that change a cost are read; the rest are ignored. Lines are split
with shlex, never run.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any

from slurmlink.bank.errors import InvalidRequest
from slurmlink.bank.tres import TresError, parse_time_limit

#: option -> job_desc field; short options map to their long names.
_SHORT = {"-p": "--partition", "-n": "--ntasks", "-c": "--cpus-per-task", "-N": "--nodes", "-t": "--time"}
_SHORT |= {"-A": "--account", "-q": "--qos", "-a": "--array", "-G": "--gpus"}
_TAKES_VALUE = {
    "--partition",
    "--ntasks",
    "--cpus-per-task",
    "--nodes",
    "--time",
    "--account",
    "--qos",
    "--array",
    "--gpus",
    "--gres",
    "--gpus-per-node",
    "--gpus-per-task",
    "--ntasks-per-node",
    "--mem",
    "--mem-per-cpu",
}


def directives(script: str) -> list[str]:
    """The options of the script's ``#SBATCH`` lines (the block sbatch reads, before the first command)."""
    options: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            body = stripped[len("#SBATCH") :].split(" #", 1)[0]
            try:
                options += shlex.split(body)
            except ValueError as exc:
                raise InvalidRequest(f"cannot read #SBATCH line {line.strip()!r}: {exc}") from None
        elif stripped and not stripped.startswith("#"):
            break  # sbatch stops reading directives at the first command
    return options


def _memory_mib(text: str) -> int:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    value = text.strip().upper()
    factor = units.get(value[-1:])
    number = value[:-1] if factor is not None else value
    if not number.isdigit():
        raise InvalidRequest(f"memory {text!r} is not a size such as 4G or 4000M")
    return int(int(number) * (factor or 1))


def _count(option: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise InvalidRequest(f"{option} {value!r} must be a whole number ≥ 1")
    return int(value)


def job_fields(options: Iterable[str]) -> dict[str, Any]:
    """job_submit field names and values for sbatch ``options`` (later ones win, as in sbatch)."""
    fields: dict[str, Any] = {}
    items = list(options)
    i = 0
    while i < len(items):
        item = items[i]
        name, value = item, None
        if item.startswith("--") and "=" in item:
            name, value = item.split("=", 1)
        elif item[:2] in _SHORT and len(item) > 2 and not item.startswith("--"):
            name, value = item[:2], item[2:]
        name = _SHORT.get(name, name)
        if name in _TAKES_VALUE and value is None:
            i += 1
            if i >= len(items):
                raise InvalidRequest(f"{item} needs a value")
            value = items[i]
        i += 1
        if value is None:
            if name == "--exclusive":
                fields["shared"] = 0
            continue
        _apply(fields, name, value)
    return fields


def _apply(fields: dict[str, Any], name: str, value: str) -> None:
    if name == "--partition":
        fields["partition"] = value
    elif name == "--account":
        fields["account"] = value
    elif name == "--qos":
        fields["qos"] = value
    elif name == "--array":
        fields["array_inx"] = value
    elif name == "--ntasks":
        fields["num_tasks"] = _count(name, value)
    elif name == "--cpus-per-task":
        fields["cpus_per_task"] = _count(name, value)
    elif name == "--ntasks-per-node":
        fields["ntasks_per_node"] = _count(name, value)
    elif name == "--nodes":
        fields["min_nodes"] = _count(name, value.split("-", 1)[0])
    elif name == "--time":
        try:
            fields["time_limit"] = parse_time_limit(value)
        except TresError as exc:
            raise InvalidRequest(str(exc)) from None
    elif name == "--gres":
        fields["tres_per_node"] = ",".join(
            f"gres:{g}" if not g.startswith("gres") else g for g in value.split(",") if g
        )
    elif name == "--gpus-per-node":
        fields["tres_per_node"] = f"gres:gpu:{value}"
    elif name == "--gpus":
        fields["tres_per_job"] = f"gres:gpu:{value}"
    elif name == "--gpus-per-task":
        fields["tres_per_task"] = f"gres:gpu:{value}"
    elif name == "--mem":
        fields["min_mem_per_node"] = _memory_mib(value)
    elif name == "--mem-per-cpu":
        fields["min_mem_per_cpu"] = _memory_mib(value)
