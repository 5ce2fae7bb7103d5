"""``#DW`` directives of the slurmlink burst-buffer driver: two grammars, one model.

Users write NNF's directives (``#DW jobdw type=xfs capacity=100GiB name=scratch``) or Cray
DataWarp's (``#DW jobdw type=scratch access_mode=striped capacity=1TiB``); both become
:class:`BufferRequest` values, so the rest of the driver knows one model only.

Checking is done in two steps, as DWS does it. :func:`slurmlink_rules` is the DWDirectiveRule the
Workflow webhook and the Slurm gateway check syntax with (``resources.dws.directives``). :func:`plan`
then checks meaning against what the site has (:class:`SiteStorage`) and raises
:class:`BufferRequestError` with one line saying what is wrong and what to write instead: Slurm shows
it to the user at ``sbatch``. :func:`environment` gives the job the ``DW_*`` variables of the grammar
it used. :func:`staging` turns the copy directives (NNF's ``copy_in``/``copy_out``, DataWarp's
``stage_in``/``stage_out``) into :class:`StagingRequest` values whose buffer ends are resolved from
``$DW_JOB_<name>``-style names by slurmlink itself: no shell ever sees them.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from slurmlink.resources.dws.directives import (
    DEFAULT_RULES_NAMESPACE,
    EMPTY_VALUE,
    DirectiveError,
    parse_directive,
)
from slurmlink.resources.sizes import SizeError, format_size, parse_size
from slurmlink.resources.storage.storagepool import granularity_bytes

__all__ = [
    "DRIVER",
    "BufferRequest",
    "BufferRequestError",
    "PersistentInfo",
    "PoolInfo",
    "SiteStorage",
    "StagePath",
    "StagingRequest",
    "environment",
    "plan",
    "slurmlink_rules",
    "staging",
]

#: The driver id (``driverLabel``, ``status.drivers[].driverID``) and the rule object's name.
DRIVER = "slurmlink"

NNF = "nnf"
DATAWARP = "datawarp"

#: Commands that make or use storage: plan() turns each into BufferRequests.
BUFFER_COMMANDS = ("jobdw", "create_persistent", "destroy_persistent", "persistentdw")
#: Commands that copy data into a buffer (DataIn) or out of one (DataOut): staging() reads them.
STAGE_IN_COMMANDS = ("copy_in", "stage_in")
STAGE_OUT_COMMANDS = ("copy_out", "stage_out")
STAGING_COMMANDS = STAGE_IN_COMMANDS + STAGE_OUT_COMMANDS
#: Commands whose syntax is accepted but which this release refuses (no driver registers for them).
UNSUPPORTED_COMMANDS = ("swap",)
#: Types without a file system: nothing can be copied into them.
BLOCK_TYPES = frozenset({"raw"})
#: Types whose one file system is mounted by one node at a time (a job's compute node).
PER_NODE_MOUNTED_TYPES = frozenset({"xfs"})

#: Types with one shared file system for all compute nodes; every other type has one per node.
SHARED_TYPES = frozenset({"gluster", "lustre"})

#: PersistentStorageInstance annotation (NNF's) letting users other than the owner attach it.
IGNORE_UID_ANNOTATION = "dataworkflowservices.github.io/ignore-uid"

_NAME_HINT = "lower-case letters, digits and '-', starting with a letter"
_WORKFLOW_OF_JOB = re.compile(r"^bb([0-9]+)$")


# --------------------------------------------------------------------------------------
# The DWDirectiveRule
# --------------------------------------------------------------------------------------

_SIZE = r"^\d+(\.\d+)?(KiB|KB|MiB|MB|GiB|GB|TiB|TB|PiB|PB|B)?$"
_NAME = r"^[a-z][a-z0-9-]+$"
_ACCESS_MODE = r"^(striped|private|striped,private|private,striped)$"
_PROFILE = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"
_REQUIRES = ("^copy-offload$", "^user-container-auth$")
_STAGE_TYPE = r"^(file|directory|list)$"


def _arg(name: str, pattern: str = "", *, required: bool = False, unique_within: str = "") -> dict[str, Any]:
    """A string argument. Keys are anchored because upstream matches them unanchored:
    a plain ``type`` would also claim ``fs_type=``."""
    rule: dict[str, Any] = {"key": f"^{name}$", "type": "string", "isValueRequired": True}
    if pattern:
        rule["pattern"] = pattern
    if required:
        rule["isRequired"] = True
    if unique_within:
        rule["uniqueWithin"] = unique_within
    return rule


def _requires() -> dict[str, Any]:
    return {
        "key": "^requires$",
        "type": "list-of-string",
        "patterns": list(_REQUIRES),
        "isValueRequired": True,
    }


# Only what both grammars must have is required here; what one grammar needs (jobdw's name= in
# NNF's, capacity=) is checked by plan(), which can say which grammar wanted it.
_COMMANDS: tuple[tuple[str, str, list[dict[str, Any]]], ...] = (
    (
        "jobdw",
        "Proposal,Setup,PreRun,PostRun,Teardown",
        [
            _arg("type"),
            _arg("capacity", _SIZE),
            _arg("name", _NAME, unique_within="jobdw_name"),
            _arg("access_mode", _ACCESS_MODE),
            _arg("pool"),
            _arg("profile", _PROFILE),
            _requires(),
        ],
    ),
    (
        "persistentdw",
        "Proposal,Setup,PreRun,PostRun,Teardown",
        [_arg("name", _NAME, required=True), _requires()],
    ),
    (
        "create_persistent",
        "Proposal,Setup,Teardown",
        [
            _arg("type", required=True),
            _arg("capacity", _SIZE),
            _arg("name", _NAME, required=True),
            _arg("pool"),
            _arg("profile", _PROFILE),
        ],
    ),
    ("destroy_persistent", "Proposal,Teardown", [_arg("name", _NAME, required=True)]),
    (
        "copy_in",
        "Proposal,DataIn,Teardown",
        [_arg("source", required=True), _arg("destination", required=True), _arg("profile")],
    ),
    (
        "copy_out",
        "Proposal,DataOut,Teardown",
        [_arg("source", required=True), _arg("destination", required=True), _arg("profile")],
    ),
    (
        "stage_in",
        "Proposal,DataIn,Teardown",
        [_arg("source", required=True), _arg("destination", required=True), _arg("type", _STAGE_TYPE)],
    ),
    (
        "stage_out",
        "Proposal,DataOut,Teardown",
        [_arg("source", required=True), _arg("destination", required=True), _arg("type", _STAGE_TYPE)],
    ),
    # DataWarp's "#DW swap 10GiB [pool=P]": the size is a bare word, so any key goes.
    ("swap", "", [{"key": ".", "type": "string"}]),
)


def slurmlink_rules(namespace: str = DEFAULT_RULES_NAMESPACE) -> list[dict[str, Any]]:
    """The driver's DWDirectiveRule object (one, named ``slurmlink``), as a fresh copy.

    Commands carry NNF's watch states, so the mutating webhook registers the driver for them;
    ``swap`` carries none, so it passes the syntax check, registers nothing, and is refused with a
    clear message by plan().
    """
    spec = []
    for command, watch_states, rule_defs in _COMMANDS:
        entry: dict[str, Any] = {
            "command": command,
            "driverLabel": DRIVER,
            "ruleDefs": copy.deepcopy(rule_defs),
        }
        if watch_states:
            entry["watchStates"] = watch_states
        spec.append(entry)
    return [
        {
            "apiVersion": "dataworkflowservices.github.io/v1alpha2",
            "kind": "DWDirectiveRule",
            "metadata": {"name": DRIVER, "namespace": namespace},
            "spec": spec,
        }
    ]


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class BufferRequestError(ValueError):
    """A job's directives ask for what this site cannot give; ``str(e)`` is the one line for the user.

    ``index`` and ``directive`` name the offending directive when there is one (``None`` for
    problems of the job as a whole, such as two create_persistent).
    """

    def __init__(self, problem: str, index: int | None = None, directive: str | None = None) -> None:
        self.problem = problem
        self.index = index
        self.directive = directive
        where = f" (in '{' '.join(directive.split())}')" if directive is not None else ""
        super().__init__(problem + where)


@dataclass(frozen=True)
class BufferRequest:
    """One file system a job's directives create, use or destroy, whatever grammar asked for it."""

    index: int  # position in the job's #DW list (the Workflow's dwdIndex)
    command: str  # jobdw | create_persistent | destroy_persistent | persistentdw
    name: str  # NNF name=; DataWarp jobdw: "striped" or "private"; the persistent buffer's name
    fs_type: str | None  # xfs|raw|dir|gluster|gfs2|lustre; None while unresolved
    capacity: int | None  # bytes, as requested (unrounded); None when not given
    per_compute: bool  # one file system per compute node, or one shared by all
    pool: str | None  # pool= when given
    grammar: str  # "nnf" | "datawarp"
    directive: str  # the original text
    profile: str | None = None  # profile= when given

    @property
    def key(self) -> str:
        """``job/<name>`` or ``persistent/<name>``: unique within a job, the key of environment()'s paths."""
        return f"job/{self.name}" if self.command == "jobdw" else f"persistent/{self.name}"


@dataclass(frozen=True)
class PoolInfo:
    """What plan() needs of a StoragePool: the types it serves and the most it could ever give."""

    name: str
    types: tuple[str, ...]
    granularity: int | None = None  # bytes per granule
    total: int | None = None  # bytes of all its storage nodes; None when not known yet
    largest_node: int | None = None  # bytes of its largest storage node; None when not known yet


@dataclass(frozen=True)
class PersistentInfo:
    """What plan() needs of a PersistentStorageInstance."""

    name: str
    fs_type: str
    user_id: int
    in_use_by: tuple[str, ...] = ()  # consumers: Workflow names (bb<job id>)
    destroying: bool = False
    shared: bool = False  # other users may attach it (the ignore-uid annotation)


@dataclass(frozen=True)
class SiteStorage:
    """What the site has: pools (and so file-system types), persistent buffers, and how DataWarp maps.

    ``striped_type``/``private_type`` are the types serving DataWarp's ``access_mode=striped``
    (one shared file system) and ``private`` (one per compute node). ``profiles`` is the set of
    StorageProfile names, or None to leave ``profile=`` unchecked.
    """

    pools: Mapping[str, PoolInfo] = field(default_factory=dict)
    persistent: Mapping[str, PersistentInfo] = field(default_factory=dict)
    striped_type: str = "gluster"
    private_type: str = "xfs"
    profiles: frozenset[str] | None = None

    @cached_property
    def types(self) -> Mapping[str, tuple[str, ...]]:
        """Configured file-system types -> names of the pools serving each (sorted).

        Derived from the pools so that the two can never disagree.
        """
        served: dict[str, list[str]] = {}
        for pool in self.pools.values():
            for fs_type in pool.types:
                served.setdefault(fs_type, []).append(pool.name)
        return {fs_type: tuple(sorted(names)) for fs_type, names in served.items()}

    @classmethod
    def from_objects(
        cls,
        pools: Iterable[Mapping[str, Any]],
        instances: Iterable[Mapping[str, Any]],
        *,
        profiles: Iterable[Mapping[str, Any]] | None = None,
        striped_type: str = "gluster",
        private_type: str = "xfs",
    ) -> SiteStorage:
        """Build from StoragePool and PersistentStorageInstance objects (and StorageProfiles, if given).

        Pools and instances being deleted are left out: they take no new work.
        """
        pool_infos = [_pool_info(p) for p in pools if not _deleting(p)]
        instance_infos = [_persistent_info(i) for i in instances]
        return cls(
            pools={p.name: p for p in pool_infos if p is not None},
            persistent={i.name: i for i in instance_infos if i is not None},
            striped_type=striped_type,
            private_type=private_type,
            profiles=None if profiles is None else frozenset(_name_of(p) for p in profiles),
        )


def _name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bytes_of(part: Mapping[str, Any], granularity: int | None) -> int | None:
    """``totalBytes``, else ``totalGranules`` x granularity, of a pool status or one of its nodes."""
    total = _int_or_none(part.get("totalBytes"))
    granules = _int_or_none(part.get("totalGranules"))
    if total is None and granules is not None and granularity is not None:
        total = granules * granularity
    return total


def _pool_info(obj: Mapping[str, Any]) -> PoolInfo | None:
    spec = obj.get("spec") or {}
    types = spec.get("fileSystemTypes")
    name = _name_of(obj)
    if not name or not isinstance(types, list):
        return None
    status = obj.get("status") or {}
    granularity = granularity_bytes(dict(obj))
    node_sizes = [_bytes_of(n, granularity) for n in status.get("nodes") or [] if isinstance(n, Mapping)]
    known_nodes = [size for size in node_sizes if size is not None]
    return PoolInfo(
        name=name,
        types=tuple(str(t) for t in types),
        granularity=granularity,
        total=_bytes_of(status, granularity),
        largest_node=max(known_nodes) if known_nodes else None,
    )


def _persistent_info(obj: Mapping[str, Any]) -> PersistentInfo | None:
    spec = obj.get("spec") or {}
    name = spec.get("name") or _name_of(obj)
    user_id = _int_or_none(spec.get("userID"))
    if not name or user_id is None:
        return None
    consumers = tuple(
        str(ref.get("name")) for ref in spec.get("consumerReferences") or [] if isinstance(ref, Mapping)
    )
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return PersistentInfo(
        name=str(name),
        fs_type=str(spec.get("fsType") or ""),
        user_id=user_id,
        in_use_by=consumers,
        destroying=spec.get("state") == "Destroying" or _deleting(obj),
        shared=str(annotations.get(IGNORE_UID_ANNOTATION, "")).lower() == "true",
    )


# --------------------------------------------------------------------------------------
# plan(): the semantic check
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Directive:
    """One of our directives, parsed, with helpers that fail naming it."""

    index: int
    text: str
    command: str
    args: Mapping[str, str | None]

    def fail(self, problem: str) -> BufferRequestError:
        return BufferRequestError(problem, self.index, self.text)

    def get(self, key: str) -> str | None:
        """The value of ``key=``, None when absent; a bare ``key`` or ``key=`` is an error."""
        if key not in self.args:
            return None
        value = self.args[key]
        if value is None or value in ("", EMPTY_VALUE):
            raise self.fail(f"{key}= needs a value")
        return value

    def require(self, key: str, hint: str) -> str:
        value = self.get(key)
        if value is None:
            raise self.fail(f"#DW {self.command} needs {key}=: {hint}")
        return value

    @property
    def datawarp(self) -> bool:
        """A DataWarp-form jobdw: it says ``access_mode=`` or a DataWarp ``type=``."""
        return self.command == "jobdw" and (
            "access_mode" in self.args or self.args.get("type") in ("scratch", "cache")
        )


def plan(directives: Sequence[str], site: SiteStorage, *, user_id: int | None = None) -> list[BufferRequest]:
    """The job's buffer requests, in directive order, or BufferRequestError saying what to change.

    Run after the upstream rule check (slurmlink_rules). Directives of other drivers are ignored.
    ``user_id`` (the job's uid) enables the ownership checks on persistent buffers.
    """
    ours = _our_directives(directives)
    _check_job(ours)
    requests: list[BufferRequest] = []
    for d in ours:
        requests.extend(_resolve(d, site, user_id))
    if any(r.grammar == DATAWARP and r.command == "jobdw" for r in requests):
        # persistentdw has one form; a DataWarp job gets DataWarp's variable names for it.
        requests = [replace(r, grammar=DATAWARP) if r.command == "persistentdw" else r for r in requests]
    staging(directives, requests)  # its mistakes too are the user's to hear at sbatch
    return requests


def _our_directives(directives: Sequence[str]) -> list[_Directive]:
    ours: list[_Directive] = []
    for index, text in enumerate(directives):
        try:
            command, args = parse_directive(text)
        except DirectiveError as exc:
            raise BufferRequestError(str(exc), index, text) from None
        if command in UNSUPPORTED_COMMANDS:
            raise _unsupported(index, text, command)
        if command in BUFFER_COMMANDS:
            ours.append(_Directive(index, text, command, args))
    return ours


def _unsupported(index: int, text: str, command: str) -> BufferRequestError:
    problem = f"#DW {command} is not supported: slurmlink burst buffers provide file systems only"
    return BufferRequestError(problem, index, text)


def _check_job(ours: Sequence[_Directive]) -> None:
    """What is wrong with the directives together, before any is checked against the site."""
    jobdw = [d for d in ours if d.command == "jobdw"]
    datawarp = [d for d in jobdw if d.datawarp]
    if datawarp and len(datawarp) < len(jobdw):
        raise BufferRequestError(
            "this job mixes the DataWarp form of #DW jobdw (access_mode=, type=scratch) with the NNF "
            "form (type=<file system> name=<name>); write all its jobdw directives in one form"
        )
    if len(datawarp) > 1:
        raise BufferRequestError(
            "a job may have one DataWarp-form #DW jobdw; for both a striped and a private buffer "
            "write access_mode=striped,private"
        )
    names = Counter(d.args.get("name") for d in jobdw if not d.datawarp and d.args.get("name"))
    for name, count in names.items():
        if count > 1:
            raise BufferRequestError(
                f"{count} #DW jobdw directives are named {name}; give each buffer its own name="
            )
    _check_persistent_commands(ours)


def _check_persistent_commands(ours: Sequence[_Directive]) -> None:
    creates = [d for d in ours if d.command == "create_persistent"]
    destroys = [d for d in ours if d.command == "destroy_persistent"]
    if len(creates) > 1:
        raise BufferRequestError(
            "a job may create only one persistent buffer; submit one job per #DW create_persistent"
        )
    if creates and destroys:
        raise BufferRequestError(
            "a job may not both create and destroy persistent buffers; submit them as separate jobs"
        )
    uses: dict[str, list[str]] = {}
    for d in ours:
        name = d.args.get("name")
        if d.command != "jobdw" and name:
            uses.setdefault(name, []).append(d.command)
    for name, commands in uses.items():
        if len(commands) > 1:
            raise BufferRequestError(_persistent_twice(name, commands))


def _persistent_twice(name: str, commands: list[str]) -> str:
    if "create_persistent" in commands:
        return (
            f"persistent buffer {name} is created by this job, so the job cannot also use it "
            f"(#DW {' and #DW '.join(c for c in commands if c != 'create_persistent')}): "
            "use it from a later job"
        )
    if "destroy_persistent" in commands and "persistentdw" in commands:
        return (
            f"persistent buffer {name} cannot be both used and destroyed by one job: "
            "destroy it in a later job"
        )
    return f"persistent buffer {name} is named in {len(commands)} #DW {commands[0]} directives; keep one"


def _resolve(d: _Directive, site: SiteStorage, user_id: int | None) -> list[BufferRequest]:
    if d.command == "jobdw":
        return _datawarp_jobdw(d, site) if d.datawarp else [_nnf_jobdw(d, site)]
    if d.command == "create_persistent":
        return [_create_persistent(d, site)]
    if d.command == "destroy_persistent":
        return [_destroy_persistent(d, site, user_id)]
    return [_persistentdw(d, site, user_id)]


def _type_hint(site: SiteStorage) -> str:
    types = ", ".join(sorted(site.types))
    return f"one of {types}" if types else "but no burst-buffer types are configured"


def _check_type(d: _Directive, site: SiteStorage, fs_type: str, what: str) -> None:
    if fs_type in site.types:
        return
    if not site.types:
        raise d.fail(f"{what} is not available here: no burst-buffer types are configured")
    raise d.fail(f"{what} is not available here; configured types: {', '.join(sorted(site.types))}")


def _capacity(d: _Directive, hint: str) -> tuple[str, int]:
    text = d.require("capacity", hint)
    try:
        size = parse_size(text)
    except SizeError:
        raise d.fail(
            f"capacity={text} is not a size: write a number with a unit, such as 500GiB or 1.5TB"
        ) from None
    if size <= 0:
        raise d.fail(f"capacity={text} must be more than zero")
    return text, size


def _candidate_pools(d: _Directive, site: SiteStorage, fs_type: str, pool: str | None) -> list[PoolInfo]:
    """The pools that could serve the request: pool= alone when given (and able to), else the type's."""
    if pool is None:
        return [site.pools[name] for name in site.types[fs_type]]
    info = site.pools.get(pool)
    if info is None:
        known = ", ".join(sorted(site.pools))
        raise d.fail(f"pool={pool} does not exist; pools: {known}")
    if fs_type not in info.types:
        raise d.fail(
            f"pool={pool} does not serve type {fs_type} (it serves {', '.join(info.types)}); "
            f"pools serving {fs_type}: {', '.join(site.types[fs_type])}"
        )
    return [info]


def _rounded(size: int, granularity: int | None) -> int:
    if not granularity or granularity < 1:
        return size
    return math.ceil(size / granularity) * granularity


def _check_fits(
    d: _Directive, text: str, size: int, fs_type: str, per_compute: bool, pools: list[PoolInfo]
) -> None:
    """Refuse what no candidate pool could hold even empty.

    A per-compute file system lives on one storage node, so its limit is the largest node; a
    shared one spreads over the pool. Pools whose size is not known (or zero: no storage node
    reported yet) are given the benefit of the doubt.
    """
    limits = [(p, p.largest_node if per_compute else p.total) for p in pools]
    known = [(p, limit) for p, limit in limits if limit]
    if not known or any(_rounded(size, p.granularity) <= limit for p, limit in known):
        return
    pool, limit = max(known, key=lambda item: item[1])
    amount = f"{format_size(limit)} on its largest storage node" if per_compute else format_size(limit)
    what = f"capacity={text}" + (" per compute node" if per_compute else "")
    if len(known) == 1:
        raise d.fail(f"{what} is more than pool {pool.name} can ever provide ({amount})")
    raise d.fail(
        f"{what} is more than any pool serving {fs_type} can ever provide "
        f"(the most is pool {pool.name}: {amount})"
    )


def _check_requires(d: _Directive) -> None:
    requires = d.get("requires")
    if requires is not None:
        raise d.fail(f"requires={requires} is not supported yet by slurmlink burst buffers; remove it")


def _profile(d: _Directive, site: SiteStorage) -> str | None:
    profile = d.get("profile")
    if profile is not None and site.profiles is not None and profile not in site.profiles:
        known = ", ".join(sorted(site.profiles)) or "none"
        raise d.fail(f"profile={profile} does not exist; storage profiles: {known}")
    return profile


def _per_compute(fs_type: str) -> bool:
    return fs_type not in SHARED_TYPES


def _nnf_jobdw(d: _Directive, site: SiteStorage) -> BufferRequest:
    fs_type = d.require(
        "type",
        f"the file-system type, {_type_hint(site)} (or the DataWarp form type=scratch access_mode=striped)",
    )
    _check_type(d, site, fs_type, f"type={fs_type}")
    name = d.require("name", f"a name for the buffer ({_NAME_HINT}), such as name=scratch")
    text, size = _capacity(d, "the size of the buffer, such as capacity=100GiB")
    pool = d.get("pool")
    per_compute = _per_compute(fs_type)
    _check_fits(d, text, size, fs_type, per_compute, _candidate_pools(d, site, fs_type, pool))
    _check_requires(d)
    return BufferRequest(
        d.index, "jobdw", name, fs_type, size, per_compute, pool, NNF, d.text, _profile(d, site)
    )


def _datawarp_modes(d: _Directive) -> list[str]:
    access = d.get("access_mode") or "striped"  # DataWarp's default (as data-acc's)
    modes = access.split(",")
    if any(m not in ("striped", "private") for m in modes) or len(set(modes)) != len(modes):
        raise d.fail(f"access_mode={access} must be striped, private or striped,private")
    return modes


def _datawarp_jobdw(d: _Directive, site: SiteStorage) -> list[BufferRequest]:
    kind = d.get("type") or "scratch"
    if kind == "cache":
        raise d.fail("type=cache (DataWarp cache mode) is not supported: use type=scratch")
    if kind != "scratch":
        raise d.fail(
            f"access_mode= belongs to the DataWarp form, whose type is scratch; for a {kind} buffer "
            f"drop access_mode= and write #DW jobdw type={kind} name=<name> capacity=<size>"
        )
    if "name" in d.args:
        raise d.fail(
            "name= is not part of the DataWarp form (type=scratch access_mode=...): drop it, or use "
            "the NNF form #DW jobdw type=<file system> name=<name> capacity=<size>"
        )
    modes = _datawarp_modes(d)
    text, size = _capacity(d, "the size of the buffer, such as capacity=100GiB")
    pool = d.get("pool")
    profile = _profile(d, site)
    _check_requires(d)
    requests = []
    for mode in modes:
        fs_type = site.striped_type if mode == "striped" else site.private_type
        _check_type(d, site, fs_type, f"access_mode={mode} (served by type {fs_type})")
        per_compute = mode == "private"
        _check_fits(d, text, size, fs_type, per_compute, _candidate_pools(d, site, fs_type, pool))
        requests.append(
            BufferRequest(d.index, "jobdw", mode, fs_type, size, per_compute, pool, DATAWARP, d.text, profile)
        )
    return requests


def _create_persistent(d: _Directive, site: SiteStorage) -> BufferRequest:
    name = d.require("name", f"the buffer's name ({_NAME_HINT})")
    kind = d.require("type", f"the file-system type, {_type_hint(site)}")
    # DataWarp's persistent reservations were striped scratch: type=scratch is the striped type.
    fs_type, grammar = (site.striped_type, DATAWARP) if kind == "scratch" else (kind, NNF)
    what = f"type={kind}" + (f" (served by type {fs_type})" if kind == "scratch" else "")
    _check_type(d, site, fs_type, what)
    if name in site.persistent:
        raise d.fail(
            f"a persistent buffer named {name} already exists; choose another name, or destroy it "
            "first (#DW destroy_persistent) in an earlier job"
        )
    text, size = _capacity(d, "the size of the buffer, such as capacity=1TiB")
    pool = d.get("pool")
    per_compute = _per_compute(fs_type)
    _check_fits(d, text, size, fs_type, per_compute, _candidate_pools(d, site, fs_type, pool))
    profile = _profile(d, site)
    return BufferRequest(
        d.index, "create_persistent", name, fs_type, size, per_compute, pool, grammar, d.text, profile
    )


def _existing(d: _Directive, site: SiteStorage) -> PersistentInfo:
    name = d.require("name", "the persistent buffer's name")
    info = site.persistent.get(name)
    if info is None:
        hint = (
            "; create it first (#DW create_persistent) in an earlier job"
            if d.command == "persistentdw"
            else ""
        )
        raise d.fail(f"there is no persistent buffer named {name}{hint}")
    if info.destroying:
        raise d.fail(f"persistent buffer {name} is being destroyed")
    return info


def _not_owner(info: PersistentInfo, user_id: int | None) -> bool:
    return user_id is not None and user_id != 0 and user_id != info.user_id


def _consumers(names: Iterable[str]) -> str:
    """Consumers as users know them: Workflow ``bb12`` is job 12."""
    out = []
    for name in names:
        match = _WORKFLOW_OF_JOB.match(name)
        out.append(f"job {match[1]}" if match else f"workflow {name}")
    return ", ".join(out)


def _destroy_persistent(d: _Directive, site: SiteStorage, user_id: int | None) -> BufferRequest:
    info = _existing(d, site)
    if _not_owner(info, user_id):
        raise d.fail(
            f"persistent buffer {info.name} belongs to another user (uid {info.user_id}); "
            "only its owner or root may destroy it"
        )
    if info.in_use_by:
        raise d.fail(
            f"persistent buffer {info.name} is in use by {_consumers(info.in_use_by)}; "
            "destroy it once they have finished"
        )
    return BufferRequest(
        d.index,
        "destroy_persistent",
        info.name,
        info.fs_type,
        None,
        _per_compute(info.fs_type),
        None,
        NNF,
        d.text,
    )


def _persistentdw(d: _Directive, site: SiteStorage, user_id: int | None) -> BufferRequest:
    info = _existing(d, site)
    if _not_owner(info, user_id) and not info.shared:
        raise d.fail(
            f"persistent buffer {info.name} belongs to another user (uid {info.user_id}); "
            "ask its owner or the administrator to share it"
        )
    _check_requires(d)
    return BufferRequest(
        d.index, "persistentdw", info.name, info.fs_type, None, _per_compute(info.fs_type), None, NNF, d.text
    )


# --------------------------------------------------------------------------------------
# environment(): what the job sees
# --------------------------------------------------------------------------------------


def _variable_part(name: str) -> str:
    """A buffer name as part of a variable name: shells take no '-' there (NNF's rule)."""
    return name.replace("-", "_")


def environment(requests: Sequence[BufferRequest], paths: Mapping[str, str]) -> dict[str, str]:
    """The ``DW_*`` variables of a job, given each mounted request's path (by BufferRequest.key).

    NNF grammar: ``DW_JOB_<name>``/``DW_PERSISTENT_<name>``, ``DW_JOB_<TYPE>``/``DW_PERSISTENT_<TYPE>``
    (the first buffer of that type) and ``DW_JOBS``/``DW_PERSISTENTS`` (``name:path,...``).
    DataWarp grammar: ``DW_JOB_STRIPED``, ``DW_JOB_PRIVATE``, ``DW_PERSISTENT_STRIPED_<name>``.
    create_persistent and destroy_persistent mount nothing and give no variable. A jobdw or
    persistentdw without a path is a caller bug: ValueError.
    """
    env: dict[str, str] = {}
    lists: dict[str, list[str]] = {"DW_JOBS": [], "DW_PERSISTENTS": []}
    for request in requests:
        if request.command not in ("jobdw", "persistentdw"):
            continue
        path = paths.get(request.key)
        if path is None:
            raise ValueError(f"no mount path for {request.key}")
        scope = "JOB" if request.command == "jobdw" else "PERSISTENT"
        if request.grammar == DATAWARP:
            suffix = request.name.upper() if scope == "JOB" else f"STRIPED_{_variable_part(request.name)}"
            env[f"DW_{scope}_{suffix}"] = path
            continue
        env[f"DW_{scope}_{_variable_part(request.name)}"] = path
        if request.fs_type:
            env.setdefault(f"DW_{scope}_{request.fs_type.upper()}", path)
        lists[f"DW_{scope}S"].append(f"{request.name}:{path}")
    env.update({name: ",".join(items) for name, items in lists.items() if items})
    return env


# --------------------------------------------------------------------------------------
# staging(): copies into and out of the buffers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePath:
    """One end of a copy: inside one of the job's buffers (``buffer`` is its BufferRequest.key and
    ``path`` is relative to the buffer's root, ``""`` for the root) or outside (``path`` absolute)."""

    path: str
    buffer: str | None = None
    text: str = ""  # as the user wrote it

    @property
    def in_buffer(self) -> bool:
        return self.buffer is not None


@dataclass(frozen=True)
class StagingRequest:
    """One copy directive, resolved."""

    index: int  # position in the job's #DW list
    command: str  # copy_in | copy_out | stage_in | stage_out
    source: StagePath
    destination: StagePath
    #: How the mover reads the source: NNF's copies are "auto" (cp -a), DataWarp's say type=.
    mode: str
    directive: str

    @property
    def direction(self) -> str:
        return "in" if self.command in STAGE_IN_COMMANDS else "out"

    @property
    def buffer(self) -> str:
        """The key of the buffer the copy fills or empties."""
        end = self.destination if self.direction == "in" else self.source
        assert end.buffer is not None
        return end.buffer


_VARIABLE = re.compile(r"^\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def staging(directives: Sequence[str], requests: Sequence[BufferRequest]) -> list[StagingRequest]:
    """The job's copy directives, in order, with buffer names resolved; BufferRequestError otherwise.

    ``requests`` are the job's buffers (plan()'s result). A copy into a buffer (copy_in, stage_in)
    names a buffer of this job (``$DW_JOB_<name>``, ``$DW_PERSISTENT_<name>``, DataWarp's
    ``$DW_JOB_STRIPED``...) as its destination and an absolute path as its source; a copy out the
    other way round. ``..`` is refused everywhere: a copy stays inside the trees it names.
    """
    variables = _buffer_variables(requests)
    types = {r.key: r.fs_type for r in requests}
    persistent = {r.key for r in requests if r.command == "persistentdw"}
    out: list[StagingRequest] = []
    for index, text in enumerate(directives):
        try:
            command, args = parse_directive(text)
        except DirectiveError as exc:
            raise BufferRequestError(str(exc), index, text) from None
        if command not in STAGING_COMMANDS:
            continue
        d = _Directive(index, text, command, args)
        inward = command in STAGE_IN_COMMANDS
        source = _stage_path(d, "source", variables, buffer_side=not inward)
        destination = _stage_path(d, "destination", variables, buffer_side=inward)
        inside = destination if inward else source
        fs_type = types.get(inside.buffer or "")
        if fs_type in BLOCK_TYPES:
            raise d.fail(
                f"{inside.text.split('/')[0]} is a type={fs_type} buffer, a block device without a file "
                "system: nothing can be copied into or out of it"
            )
        if inside.buffer in persistent and fs_type in PER_NODE_MOUNTED_TYPES:
            # Other jobs may have it mounted on their compute nodes right now; an XFS mounted twice
            # is corrupted, so the storage node may not mount it to copy.
            raise d.fail(
                f"{inside.text.split('/')[0]} is the persistent type={fs_type} buffer "
                f"{inside.buffer.split('/', 1)[1]}: the jobs using it mount its file system on their compute "
                "nodes, so slurmlink cannot mount it elsewhere to copy data. Copy inside the job's script, "
                "or stage into a job buffer (#DW jobdw) or a persistent buffer of a shared type (gluster)"
            )
        if command.startswith("stage_"):
            mode = d.require(
                "type", "what source= is: file, directory or list (a file of source-destination pairs)"
            )
        else:
            mode = "auto"
        out.append(StagingRequest(index, command, source, destination, mode, text))
    return out


def _buffer_variables(requests: Sequence[BufferRequest]) -> dict[str, str]:
    """``DW_*`` variable name -> the BufferRequest.key it names (the same names environment() sets)."""
    mounted = [r for r in requests if r.command in ("jobdw", "persistentdw")]
    marker = "\0"
    env = environment(mounted, {r.key: marker + r.key for r in mounted})
    return {name: value[1:] for name, value in env.items() if value.startswith(marker)}


def _stage_path(d: _Directive, key: str, variables: Mapping[str, str], *, buffer_side: bool) -> StagePath:
    text = d.require(key, "a path")
    other = "destination" if key == "source" else "source"
    match = _VARIABLE.match(text)
    if match is not None:
        name = match["braced"] or match["bare"]
        rest = text[match.end() :]
        if rest and not rest.startswith("/"):
            raise d.fail(f"{key}={text}: write a '/' between ${name} and the rest of the path")
        buffer = variables.get(name)
        if buffer is None and not name.startswith("DW_"):
            raise d.fail(
                f"{key}={text}: slurmlink expands only the variables of the job's burst buffers "
                "($DW_JOB_<name>, $DW_PERSISTENT_<name>), not ${name}: write the absolute path"
            )
        if buffer is None:
            known = ", ".join(f"${v}" for v in sorted(variables)) or "none"
            raise d.fail(f"{key}={text}: ${name} names no burst buffer of this job (its buffers: {known})")
        if not buffer_side:
            raise d.fail(
                f"{key}={text} is in a burst buffer, but #DW {d.command} copies "
                + (
                    "into one: its source= must be a path outside the buffers, such as /home/..."
                    if key == "source"
                    else "out of one: its destination= must be a path outside the buffers, such as /home/..."
                )
            )
        return StagePath(_relative_parts(d, key, text, rest), buffer, text)
    if buffer_side:
        raise d.fail(
            f"{key}={text} must name one of this job's burst buffers, such as "
            f"{key}=${next(iter(sorted(variables)), 'DW_JOB_<name>')}/<path> "
            f"(#DW {d.command} copies {'into' if key == 'destination' else 'out of'} a buffer; "
            f"the {other} is the path outside)"
        )
    if "$" in text:
        raise d.fail(
            f"{key}={text}: only a burst buffer's variable may start a path; slurmlink does not "
            "expand other variables (write the absolute path)"
        )
    if not text.startswith("/"):
        raise d.fail(f"{key}={text} must be an absolute path (starting with /)")
    return StagePath("/" + _relative_parts(d, key, text, text), None, text)


def _relative_parts(d: _Directive, key: str, text: str, path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise d.fail(f"{key}={text}: '..' is not allowed in a path")
    if any("\0" in p for p in parts):
        raise d.fail(f"{key}={text} is not a valid path")
    return "/".join(parts) + ("/" if path.endswith("/") and parts else "")
