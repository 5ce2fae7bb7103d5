"""``slurmlink.io/v1`` ``SlurmJob``: one Slurm batch job described as an object, run as its owner.

A user writes the script and what it needs (partition, resources in Kubernetes quantities, inputs to
stage, outputs to collect); the job bridge submits it with ``sbatch`` as that user, follows it and
reports in ``status``: ``phase`` (Pending, Staging, Queued, Running, Collecting, then Succeeded,
Failed or Cancelled; Unknown when Slurm has lost the job), the Slurm job id, state and reason, exit
code and signal, times, and the collected outputs with sizes and SHA-256.

Everything that can be judged without Slurm is judged here, at admission, so a job is refused at
``kubectl apply`` with the field at fault instead of failing later in the bridge: quantities, time
limits, array and GPU syntax, paths that would leave the job directory, one way of choosing the
partition. The spec is fixed once created, except ``suspend`` (hold or release), ``cancel`` (false
to true only: a cancelled job stays cancelled) and ``ttlSecondsAfterFinished``, as Kubernetes lets a
Job's TTL change. Nobody may change the status but through ``/status``, and a ``user`` not even
there: the bridge (acting as admin) alone reports.

A ``user`` creates SlurmJobs and sees, changes and deletes only their own; the owner is stamped
from the credential (``resources.access``), and that Unix account is who the job runs as.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from slurmlink.resources import errors
from slurmlink.resources.access import ALL, AccessPolicy, base_roles
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.bridge import fit
from slurmlink.resources.bridge.common import (
    GROUP,
    VERSION,
    JobStatus,
    invalid_value,
    quantity_causes,
    relative_path_error,
    sha256_error,
    status_causes,
)
from slurmlink.resources.bridge.timelimit import TimeLimitError, format_minutes, parse_time_limit
from slurmlink.resources.dws.common import Open, check_immutable, section_causes
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, field_of
from slurmlink.resources.storage.capacity import selector_matches
from slurmlink.resources.storage.storagepool import LabelSelector

Positive = Annotated[StrictInt, Field(ge=1)]
#: What may change after creation; everything else in the spec is fixed (the job may be running).
MUTABLE = frozenset({"suspend", "cancel", "ttlSecondsAfterFinished"})
#: The longest script accepted, as sbatch's own limit on a batch script is in this range.
MAX_SCRIPT_BYTES = 1024 * 1024
#: All environment names and values together.
MAX_ENVIRONMENT_BYTES = 64 * 1024

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Slurm's ``--array``: indexes and ranges with optional steps, and an optional ``%`` limit.
_ARRAY = re.compile(r"^\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?$")
#: ``--gpus=[type:]count``.
_GPUS = re.compile(r"^([A-Za-z0-9_.-]+:)?\d+$")
#: ``--gres=name[[:type]:count][,...]``.
_GRES = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)*(,[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)*)*$")
#: A name Slurm takes as one word: partitions, accounts, QOS, reservations.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class EnvVar(Open):
    name: StrictStr
    value: StrictStr = ""


class JobInput(Open):
    """One input, staged into the job directory before submission.

    From an upload made through the API (``upload``, its id) or a file or directory on the bridge's
    host the owner may read (``path``, absolute; read as the owner). It lands in the directory
    ``to`` (relative to the job directory, default ``.``) under ``name`` (default: the source's base
    name); ``unpack`` unpacks an uploaded tar or zip archive into ``to`` instead.
    """

    name: StrictStr | None = None
    path: StrictStr | None = None
    sha256: StrictStr | None = None
    to: StrictStr = "."
    unpack: Literal["none", "tar", "zip"] = "none"
    upload: StrictStr | None = None


class JobResources(Open):
    """What the job asks Slurm for; each field is one ``sbatch`` option."""

    constraints: StrictStr | None = None
    cpusPerTask: Positive | None = None
    exclusive: StrictBool | None = None
    gpus: Positive | StrictStr | None = None
    gres: StrictStr | None = None
    #: Kubernetes quantities (``4Gi``, ``4G``, ``512Mi``), passed to Slurm in whole MiB.
    memoryPerCPU: StrictInt | StrictStr | None = None
    memoryPerNode: StrictInt | StrictStr | None = None
    nodes: Positive | None = None
    tasks: Positive | None = None
    #: Slurm's ``--time`` syntax, or minutes.
    timeLimit: StrictInt | StrictStr | None = None


class SlurmJobSpec(Open):
    account: StrictStr | None = None
    array: StrictStr | None = None
    cancel: StrictBool = False
    environment: list[EnvVar] | None = None
    inputs: list[JobInput] | None = None
    #: Globs relative to the job directory, collected once the job has ended.
    outputs: list[StrictStr] | None = None
    partition: StrictStr | None = None
    #: Several partitions: Slurm starts the job in whichever can start it first.
    partitions: Annotated[list[StrictStr], Field(min_length=1)] | None = None
    #: A label selector over Partitions, resolved by the bridge.
    partitionSelector: LabelSelector | None = None
    qos: StrictStr | None = None
    reservation: StrictStr | None = None
    resources: JobResources | None = None
    script: Annotated[StrictStr, Field(min_length=1)]
    suspend: StrictBool = False
    ttlSecondsAfterFinished: Annotated[StrictInt, Field(ge=0)] | None = None


class SlurmJobObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: SlurmJobSpec | None = None
    status: JobStatus | None = None


def time_limit_causes(path: str, value: Any) -> list[Cause]:
    if value is None:
        return []
    try:
        parse_time_limit(value)
    except TimeLimitError as exc:
        return [invalid_value(path, value, str(exc))]
    return []


def _resources_causes(resources: dict[str, Any]) -> list[Cause]:
    p = "spec.resources"
    causes = quantity_causes(f"{p}.memoryPerNode", resources.get("memoryPerNode"))
    causes += quantity_causes(f"{p}.memoryPerCPU", resources.get("memoryPerCPU"))
    if resources.get("memoryPerNode") is not None and resources.get("memoryPerCPU") is not None:
        causes.append(
            Cause(
                f"{p}.memoryPerCPU",
                "Forbidden: may not be set together with spec.resources.memoryPerNode "
                "(Slurm takes one of --mem and --mem-per-cpu)",
                "FieldValueForbidden",
            )
        )
    causes += time_limit_causes(f"{p}.timeLimit", resources.get("timeLimit"))
    gpus = resources.get("gpus")
    if isinstance(gpus, str) and not _GPUS.match(gpus):
        causes.append(invalid_value(f"{p}.gpus", gpus, "must be a count, or TYPE:COUNT (e.g. a100:2)"))
    gres = resources.get("gres")
    if isinstance(gres, str) and not _GRES.match(gres):
        causes.append(
            invalid_value(f"{p}.gres", gres, "must be NAME[:TYPE][:COUNT], comma-separated (e.g. gpu:2)")
        )
    constraints = resources.get("constraints")
    if isinstance(constraints, str) and (not constraints.strip() or "\n" in constraints):
        causes.append(
            invalid_value(f"{p}.constraints", constraints, "must be one Slurm constraint expression")
        )
    return causes


def _name_causes(path: str, value: Any) -> list[Cause]:
    if isinstance(value, str) and not _SLURM_NAME.match(value):
        return [invalid_value(path, value, "must be a Slurm name: letters, digits, '_', '.' and '-'")]
    return []


def _partition_causes(spec: dict[str, Any]) -> list[Cause]:
    chosen = [f for f in ("partition", "partitions", "partitionSelector") if spec.get(f) is not None]
    causes = [
        Cause(
            f"spec.{field}",
            f"Forbidden: may not be set together with spec.{chosen[0]}: choose the partition one way",
            "FieldValueForbidden",
        )
        for field in chosen[1:]
    ]
    causes += _name_causes("spec.partition", spec.get("partition"))
    for i, name in enumerate(spec.get("partitions") or []):
        causes += _name_causes(f"spec.partitions[{i}]", name)
    return causes


def _environment_causes(environment: list[dict[str, Any]]) -> list[Cause]:
    causes: list[Cause] = []
    seen: set[str] = set()
    total = 0
    for i, var in enumerate(environment):
        name, value = var.get("name"), var.get("value") or ""
        total += len(str(name)) + len(str(value)) + 2
        if not isinstance(name, str):
            continue
        if not _ENV_NAME.match(name):
            causes.append(
                invalid_value(
                    f"spec.environment[{i}].name",
                    name,
                    "a valid environment variable name must consist of letters, digits and '_', "
                    "and must not start with a digit",
                )
            )
        elif name in seen:
            causes.append(
                Cause(
                    f"spec.environment[{i}].name",
                    f"Duplicate value: {json.dumps(name)}",
                    "FieldValueDuplicate",
                )
            )
        seen.add(name)
    if total > MAX_ENVIRONMENT_BYTES:
        causes.append(
            Cause(
                "spec.environment",
                f"Too long: must have at most {MAX_ENVIRONMENT_BYTES} bytes",
                "FieldValueTooLong",
            )
        )
    return causes


def _inputs_causes(inputs: list[dict[str, Any]]) -> list[Cause]:
    causes: list[Cause] = []
    for i, item in enumerate(inputs):
        p = f"spec.inputs[{i}]"
        upload, path = item.get("upload"), item.get("path")
        if upload is None and path is None:
            causes.append(
                Cause(
                    p,
                    "Required value: one of upload (an upload's id) or path (a file or directory on the "
                    "bridge's host) must be set",
                    "FieldValueRequired",
                )
            )
        elif upload is not None and path is not None:
            causes.append(
                Cause(f"{p}.path", "Forbidden: may not be set together with upload", "FieldValueForbidden")
            )
        if isinstance(upload, str) and not _UPLOAD_ID.match(upload):
            causes.append(invalid_value(f"{p}.upload", upload, "must be an upload's id"))
        if isinstance(path, str) and (not path.startswith("/") or ".." in path.split("/")):
            causes.append(
                invalid_value(
                    f"{p}.path", path, "must be an absolute path on the bridge's host, without '..'"
                )
            )
        to = item.get("to", ".")
        if isinstance(to, str) and (error := relative_path_error(to)):
            causes.append(invalid_value(f"{p}.to", to, error))
        name = item.get("name")
        if isinstance(name, str) and (not name or "/" in name or name in (".", "..") or "\x00" in name):
            causes.append(invalid_value(f"{p}.name", name, "must be a single file name, without '/'"))
        if item.get("unpack", "none") != "none" and path is not None:
            causes.append(
                Cause(f"{p}.unpack", "Forbidden: only an upload is unpacked", "FieldValueForbidden")
            )
        digest = item.get("sha256")
        if isinstance(digest, str) and (error := sha256_error(digest)):
            causes.append(invalid_value(f"{p}.sha256", digest, error))
    return causes


def spec_causes(spec: dict[str, Any]) -> list[Cause]:
    """Rules of a (type-checked) SlurmJob spec that a schema cannot say."""
    causes: list[Cause] = []
    script = spec.get("script")
    if isinstance(script, str) and len(script.encode()) > MAX_SCRIPT_BYTES:
        causes.append(
            Cause("spec.script", f"Too long: must have at most {MAX_SCRIPT_BYTES} bytes", "FieldValueTooLong")
        )
    causes += _partition_causes(spec)
    if isinstance(spec.get("resources"), dict):
        causes += _resources_causes(spec["resources"])
    for field in ("account", "qos", "reservation"):
        causes += _name_causes(f"spec.{field}", spec.get(field))
    array = spec.get("array")
    if isinstance(array, str) and not _ARRAY.match(array):
        causes.append(
            invalid_value("spec.array", array, "must be Slurm's --array syntax (e.g. 0-15, 1,3,5, 0-99:2%10)")
        )
    causes += _environment_causes(spec.get("environment") or [])
    causes += _inputs_causes(spec.get("inputs") or [])
    for i, glob in enumerate(spec.get("outputs") or []):
        if isinstance(glob, str) and (error := relative_path_error(glob, glob=True)):
            causes.append(invalid_value(f"spec.outputs[{i}]", glob, error))
    return causes


class SlurmJobStrategy(Strategy):
    status_subresource = True
    structure = SlurmJobObject
    field_labels = {
        "status.phase": field_of("status", "phase"),
        "spec.partition": field_of("spec", "partition"),
    }

    def default(self, obj: Obj) -> None:
        spec = obj.get("spec")
        if isinstance(spec, dict):
            spec.setdefault("suspend", False)
            spec.setdefault("cancel", False)
            for item in spec.get("inputs") or []:
                if isinstance(item, dict):
                    item.setdefault("to", ".")
                    item.setdefault("unpack", "none")

    def validate_schema(self, obj: Obj) -> list[Cause]:
        causes = section_causes(obj, {"spec": SlurmJobSpec, "status": JobStatus}, required=("spec",))
        if causes:
            return causes
        return spec_causes(obj["spec"]) + status_causes(obj.get("status"))

    def validate_schema_update(self, new: Obj, old: Obj) -> list[Cause]:
        if new.get("spec") == old.get("spec"):  # a status write: the spec passed at creation
            return section_causes(new, {"status": JobStatus}) + status_causes(new.get("status"))
        return self.validate_schema(new)

    def validate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        """The job must fit one of its partitions, as far as the published Partitions tell (``fit``)."""
        published = ctx.list_storage(GROUP, "Partition", None)
        if published:
            fit.check(GROUP, "SlurmJob", obj, candidates(obj, published), fit.request_of(obj["spec"]))

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        before, after = old.get("spec") or {}, new.get("spec") or {}
        fixed = sorted((set(before) | set(after)) - MUTABLE)
        check_immutable(GROUP, "SlurmJob", new, old, fixed)
        if before.get("cancel") and not after.get("cancel"):
            name = (new.get("metadata") or {}).get("name", "")
            cause = Cause("spec.cancel", "Invalid value: false: a cancelled job stays cancelled")
            raise errors.invalid(GROUP, "SlurmJob", name, [cause])


def candidates(obj: Obj, published: list[Obj]) -> list[Obj]:
    """The published Partitions ``obj`` may run in: those it names, or those its selector matches, or
    the default partition. A name or selector that picks none is refused here, with the reason."""
    spec = obj["spec"]

    def named(name: str) -> Obj | None:
        return next((p for p in published if (p.get("spec") or {}).get("slurmName") == name), None)

    if spec.get("partitionSelector") is not None:
        chosen = [
            p
            for p in published
            if selector_matches(spec["partitionSelector"], (p.get("metadata") or {}).get("labels") or {})
        ]
        if not chosen:
            fit.refuse(
                GROUP,
                "SlurmJob",
                obj,
                Cause(
                    "spec.partitionSelector",
                    "Invalid value: no Partition matches (see kubectl get partitions --show-labels)",
                ),
            )
        return chosen
    names = [spec["partition"]] if spec.get("partition") else list(spec.get("partitions") or [])
    if not names:
        return [p for p in published if (p.get("spec") or {}).get("default") is True]
    chosen = []
    for i, name in enumerate(names):
        partition = named(name)
        if partition is None:
            path = "spec.partition" if spec.get("partition") else f"spec.partitions[{i}]"
            fit.refuse(
                GROUP,
                "SlurmJob",
                obj,
                Cause(
                    path,
                    f"Not found: {json.dumps(name)}: no such partition (see kubectl get partitions)",
                    "FieldValueNotFound",
                ),
            )
        else:
            chosen.append(partition)
    return chosen


def _time_limit(obj: Obj) -> str | None:
    value = ((obj.get("spec") or {}).get("resources") or {}).get("timeLimit")
    if value is None:
        return None
    try:
        return format_minutes(parse_time_limit(value))
    except TimeLimitError:
        return str(value)


def _partition(obj: Obj) -> str | None:
    """Where the job runs once known, else what it asked for."""
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    if status.get("partition"):
        return str(status["partition"])
    if spec.get("partition"):
        return str(spec["partition"])
    if spec.get("partitions"):
        return ",".join(str(p) for p in spec["partitions"])
    return None


def _exit(obj: Obj) -> str | None:
    status = obj.get("status") or {}
    code, signal = status.get("exitCode"), status.get("signal")
    if code is None and signal is None:
        return None
    return f"{code or 0}:{signal or 0}"


SLURM_JOB = Kind(
    group=GROUP,
    kind="SlurmJob",
    plural="slurmjobs",
    singular="slurmjob",
    namespaced=True,
    versions=(VERSION,),
    storage_version=VERSION,
    strategy=SlurmJobStrategy(),
    short_names=("sj",),
    # Users create and manage their own jobs; the bridge acts as admin (or in-process as the system).
    # A service the admin lets act for named users submits on their behalf (auth.delegation).
    access=AccessPolicy(roles=base_roles(), user_verbs=ALL, delegable=True),
    printer_columns=(
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
        PrinterColumn(
            "STATUS",
            ".status.phase",
            "string",
            "Pending, Staging, Queued, Running, Collecting, Succeeded, Failed, Cancelled or Unknown",
        ),
        PrinterColumn("JOBID", ".status.jobId", "string", "Slurm job id", priority=1),
        PrinterColumn(
            "PARTITION",
            ".status.partition",
            "string",
            "Partition (asked for, until known)",
            1,
            value=_partition,
        ),
        PrinterColumn("SLURM STATE", ".status.slurmState", "string", "The job's state in Slurm", priority=1),
        PrinterColumn("REASON", ".status.reason", "string", "Why it waits or why it ended", priority=1),
        PrinterColumn("NODES", ".status.nodes", "string", "Nodes the job runs on", priority=1),
        PrinterColumn(
            "TIME LIMIT", ".spec.resources.timeLimit", "string", "Time limit", priority=1, value=_time_limit
        ),
        PrinterColumn("EXIT", ".status.exitCode", "string", "Exit code:signal", priority=1, value=_exit),
    ),
)
