"""Does a job fit a partition? Judged at admission, against the Partitions the bridge published.

Slurm itself would take a job that can never run and leave it pending for ever (``PartitionNodeLimit``,
``PartitionTimeLimit``); the seed's scheduler left its dummy pod unschedulable instead. Both hide
the mistake, so a SlurmJob that fits none of its partitions is refused at creation with the reason:
more nodes than a job may use, a longer time limit than the partition's, more memory or CPUs per node
than its nodes have, a feature no node has, an account or QOS the partition does not allow. ``null``
limits are unlimited and never refuse anything. When no Partitions are published yet (the bridge has
not run), nothing is judged here and the bridge judges at submission.

The seed's jobs carry their resources in the script's leading ``#SBATCH`` lines, read here as the seed
read them (``--nodes``/``-N``, ``--time``/``-t``, ``--mem``, ``--cpus-per-task``/``-c`` times
``--ntasks-per-node``), except that ``--mem=4G`` is understood, with Slurm's units, where the seed
failed for ever, and that comments and blank lines do not end the options (they do not for sbatch).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, NoReturn

from slurmlink.resources import errors
from slurmlink.resources.bridge.timelimit import TimeLimitError, format_minutes, parse_time_limit
from slurmlink.resources.errors import Cause
from slurmlink.resources.quantity import QuantityError, mebibytes

#: Slurm's ``--mem``: a number of megabytes, or with a binary unit K, M, G or T.
_SLURM_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_SLURM_MEM_MIB = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
#: A constraint that is a plain AND of feature names (``avx2&ib``); others are left to Slurm.
_AND_OF_FEATURES = re.compile(r"^[A-Za-z0-9_.-]+(&[A-Za-z0-9_.-]+)*$")


@dataclass
class Request:
    """What a job asks of one node and of the partition, each with the field it came from."""

    nodes: tuple[int, str] | None = None
    minutes: tuple[int, str] | None = None
    memory_mib: tuple[int, str] | None = None
    cpus_per_node: tuple[int, str] | None = None
    features: tuple[list[str], str] | None = None
    names: dict[str, tuple[str, str]] = field(default_factory=dict)


def request_of(spec: dict[str, Any]) -> Request:
    """The request of a ``slurmlink.io/v1`` SlurmJob spec (already validated)."""
    resources = spec.get("resources") or {}
    p = "spec.resources"
    req = Request()
    if isinstance(resources.get("nodes"), int):
        req.nodes = (resources["nodes"], f"{p}.nodes")
    try:
        if resources.get("timeLimit") is not None:
            minutes = parse_time_limit(resources["timeLimit"])
            if minutes is not None:
                req.minutes = (minutes, f"{p}.timeLimit")
        if resources.get("memoryPerNode") is not None:
            req.memory_mib = (mebibytes(resources["memoryPerNode"]), f"{p}.memoryPerNode")
        elif resources.get("memoryPerCPU") is not None:
            per_cpu = mebibytes(resources["memoryPerCPU"])
            req.memory_mib = (per_cpu * int(resources.get("cpusPerTask") or 1), f"{p}.memoryPerCPU")
    except (TimeLimitError, QuantityError):
        pass  # reported by validation already
    if isinstance(resources.get("cpusPerTask"), int):
        req.cpus_per_node = (resources["cpusPerTask"], f"{p}.cpusPerTask")
    constraints = resources.get("constraints")
    if isinstance(constraints, str) and _AND_OF_FEATURES.match(constraints):
        req.features = (constraints.split("&"), f"{p}.constraints")
    for name, key in (("account", "allowedAccounts"), ("qos", "allowedQOS")):
        if isinstance(spec.get(name), str):
            req.names[key] = (spec[name], f"spec.{name}")
    return req


def _sbatch_options(script: str) -> dict[str, str]:
    """The ``#SBATCH`` options before the script's first command, long names without dashes
    (``-N 2`` → ``nodes: 2``)."""
    short = {"-N": "nodes", "-t": "time", "-c": "cpus-per-task", "-n": "ntasks", "-C": "constraint"}
    options: dict[str, str] = {}
    for line in script.splitlines():
        if not line.startswith("#SBATCH"):
            if line.strip() and not line.lstrip().startswith("#"):
                break  # the first command ends the options, as sbatch reads them
            continue
        try:
            words = shlex.split(line[len("#SBATCH") :], comments=True)
        except ValueError:
            continue
        i = 0
        while i < len(words):
            word = words[i]
            if word.startswith("--"):
                name, _, value = word[2:].partition("=")
                if not value and i + 1 < len(words) and not words[i + 1].startswith("-"):
                    value, i = words[i + 1], i + 1
                options[name] = value
            elif word[:2] in short:
                value = word[2:] or (words[i + 1] if i + 1 < len(words) else "")
                i += 0 if word[2:] else 1
                options[short[word[:2]]] = value
            i += 1
    return options


def slurm_mem_mib(text: str) -> int | None:
    """Slurm's ``--mem`` in MiB (``4G`` → 4096, ``2048`` → 2048); None when unreadable or 0 (whole node)."""
    m = _SLURM_MEM.match(text.strip())
    if m is None or int(m[1]) == 0:
        return None
    return max(1, int(int(m[1]) * _SLURM_MEM_MIB[m[2].upper()]))


def request_of_script(script: str) -> Request:
    """The request in a seed job's ``#SBATCH`` lines (reported against ``spec.batch``)."""
    options = _sbatch_options(script)
    req = Request()
    where = "spec.batch"
    nodes = re.match(r"^(\d+)", options.get("nodes", ""))
    if nodes:
        req.nodes = (int(nodes[1]), where)
    if options.get("time"):
        try:
            minutes = parse_time_limit(options["time"])
            if minutes is not None:
                req.minutes = (minutes, where)
        except TimeLimitError:
            pass  # Slurm will say
    if options.get("mem") and (mib := slurm_mem_mib(options["mem"])) is not None:
        req.memory_mib = (mib, where)
    cpus = options.get("cpus-per-task", "")
    if cpus.isdigit():
        per_node = options.get("ntasks-per-node", "")
        req.cpus_per_node = (int(cpus) * (int(per_node) if per_node.isdigit() else 1), where)
    return req


def misfits(req: Request, partition: dict[str, Any]) -> list[Cause]:
    """Why ``req`` cannot run in ``partition`` (a Partition object); empty when it fits."""
    spec = partition.get("spec") or {}
    name = json.dumps(spec.get("slurmName") or (partition.get("metadata") or {}).get("name"))
    out: list[Cause] = []

    def refuse(what: tuple[Any, str], text: str) -> None:
        out.append(Cause(what[1], f"Invalid value: {json.dumps(what[0])}: partition {name} {text}"))

    if (partition.get("status") or {}).get("state") == "GONE":
        return [
            Cause("spec", f"Invalid value: partition {name} no longer exists in Slurm", "FieldValueNotFound")
        ]
    max_nodes = spec.get("maxNodesPerJob")
    total = spec.get("totalNodes")
    if req.nodes and isinstance(max_nodes, int) and req.nodes[0] > max_nodes:
        refuse(req.nodes, f"allows at most {max_nodes} nodes per job")
    elif req.nodes and isinstance(total, int) and req.nodes[0] > total:
        refuse(req.nodes, f"has only {total} nodes")
    max_time = spec.get("maxTime")
    if req.minutes and isinstance(max_time, int) and req.minutes[0] > max_time:
        refuse((format_minutes(req.minutes[0]), req.minutes[1]), f"allows at most {format_minutes(max_time)}")
    memory = spec.get("memoryPerNode")
    if req.memory_mib and memory is not None:
        try:
            limit = mebibytes(memory)
        except QuantityError:
            limit = None
        if limit is not None and req.memory_mib[0] > limit:
            refuse((f"{req.memory_mib[0]}Mi", req.memory_mib[1]), f"has {limit}Mi of memory per node")
    cpus = spec.get("cpusPerNode")
    if req.cpus_per_node and isinstance(cpus, int) and req.cpus_per_node[0] > cpus:
        refuse(req.cpus_per_node, f"has {cpus} CPUs per node")
    if req.features:
        known = set(spec.get("features") or [])
        missing = [f for f in req.features[0] if f not in known]
        if missing:
            refuse(("&".join(req.features[0]), req.features[1]), f"has no node with {', '.join(missing)}")
    for key, (value, path) in req.names.items():
        allowed = spec.get(key)
        if isinstance(allowed, list) and value not in allowed:
            refuse((value, path), f"does not allow it (allowed: {', '.join(allowed) or 'none'})")
    return out


def check(group: str, kind: str, obj: dict[str, Any], candidates: list[dict[str, Any]], req: Request) -> None:
    """Refuse (422) a job that fits none of ``candidates``; every candidate's reasons are given."""
    found = [misfits(req, partition) for partition in candidates]
    if found and all(found):
        name = str((obj.get("metadata") or {}).get("name") or "")
        raise errors.invalid(group, kind, name, [cause for causes in found for cause in causes])


def refuse(group: str, kind: str, obj: dict[str, Any], cause: Cause) -> NoReturn:
    """Refuse (422) the creation of ``obj`` for ``cause``."""
    raise errors.invalid(group, kind, str((obj.get("metadata") or {}).get("name") or ""), [cause])
