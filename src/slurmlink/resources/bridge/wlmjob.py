"""The seed's ``wlm.sylabs.io/v1alpha1`` ``SlurmJob``, served as written so its YAML applies unchanged.

Field for field the WLM operator's CRD: ``spec.batch`` (the whole sbatch script, required),
``spec.nodeSelector`` (matched against the labels of the virtual Nodes, one per Partition, as
kube-scheduler matched the seed's virtual kubelets), ``spec.prepare{to, mount}`` (a volume uploaded
into the job directory before submission), ``spec.results{from, mount}`` (what to copy back into a
volume after the job completed), and ``status.status`` (Pending, Running, Succeeded, Failed: what
the seed's tools, dflow's Argo templates among them, wait on). The status also carries everything a
``slurmlink.io/v1`` SlurmJob's does, so nothing is lost by coming in through the seed's API.

It is a kind of its own, not a second version of ``slurmlink.io/v1`` SlurmJob: the two live in
different API groups (a version belongs to one group), and the shapes do not map one to one (a
volume destination has no place in v1, v1's resources no place here). :func:`bridge_spec` maps one
onto the other for the bridge, so a single controller path runs both.

A volume is a core/v1 ``Volume``, kept as written (``x-kubernetes-preserve-unknown-fields``); only
``hostPath`` is accepted: a path on the bridge's host, read and written as the job's owner. Other
types (the seed's ``fox.yaml`` mounts ``nfs``) need a kubelet to mount them, which slurmlink does not
have, so they are refused at creation with the reason instead of failing later. The spec never
changes after creation (the seed ignored updates silently, sylabs #30; this answers with a 422).
"""

from __future__ import annotations

import json
import posixpath
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictStr

from slurmlink.resources import errors
from slurmlink.resources.access import ALL, AccessPolicy, base_roles
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.bridge import fit
from slurmlink.resources.bridge.common import GROUP as BRIDGE_GROUP
from slurmlink.resources.bridge.common import JobStatus, invalid_value, relative_path_error, status_causes
from slurmlink.resources.bridge.node import matches
from slurmlink.resources.dws.common import Open, section_causes
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, dns_label_causes, field_of

GROUP = "wlm.sylabs.io"
VERSION = "v1alpha1"
#: What the seed merged under every job's nodeSelector: only virtual kubelets run SlurmJobs.
DEFAULT_NODE_SELECTOR = {"type": "virtual-kubelet"}
#: ``hostPath.type`` values that name a file or directory (devices and sockets have no use here).
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File")
#: The seed's ``status.status`` for each phase of the bridge (pod phases, as the seed copied them).
SEED_STATUS = {
    "Pending": "Pending",
    "Staging": "Pending",
    "Queued": "Pending",
    "Running": "Running",
    "Collecting": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Cancelled": "Failed",
    "Unknown": "Unknown",
}


class Prepare(Open):
    #: Where the volume's contents go, relative to the job directory; they land in ``<to>/<volume name>``.
    to: StrictStr
    mount: dict[str, Any]


class Results(Open):
    #: A file or directory of the job directory, copied into the volume once the job completed.
    from_: StrictStr = Field(alias="from")
    mount: dict[str, Any]


class WlmSlurmJobSpec(Open):
    batch: Annotated[StrictStr, Field(min_length=1)]
    #: ``map[string]string`` in the seed's Go type, schemaless in its CRD: the seed's own example
    #: writes ``wlm.sylabs.io/cuda: 10``, a number, so scalars are taken and compared as text.
    nodeSelector: dict[str, Any] | None = None
    prepare: Prepare | None = None
    results: Results | None = None


class WlmSlurmJobStatus(JobStatus):
    #: Required by the seed's CRD whenever a status is written.
    status: StrictStr


class WlmSlurmJobObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: WlmSlurmJobSpec | None = None
    status: WlmSlurmJobStatus | None = None


def volume_causes(path: str, volume: dict[str, Any]) -> list[Cause]:
    """A core/v1 Volume that slurmlink can serve: named, and a ``hostPath`` with an absolute path."""
    causes: list[Cause] = []
    name = volume.get("name")
    if not isinstance(name, str) or not name:
        causes.append(Cause(f"{path}.name", "Required value", "FieldValueRequired"))
    else:
        causes += [Cause(f"{path}.name", c.message, c.reason) for c in dns_label_causes(name)]
    sources = [key for key in volume if key != "name"]
    if not sources:
        return [
            *causes,
            Cause(path, "Required value: must specify a volume type (hostPath)", "FieldValueRequired"),
        ]
    for key in sources:
        if key != "hostPath":
            causes.append(
                Cause(
                    f"{path}.{key}",
                    f'Unsupported value: {json.dumps(key)}: supported values: "hostPath": slurmlink '
                    "mounts no volumes, it reads and writes a hostPath on the bridge's host as the "
                    "job's owner; copy the data there and use hostPath",
                    "FieldValueNotSupported",
                )
            )
    host = volume.get("hostPath")
    if "hostPath" in volume:
        if not isinstance(host, dict):
            causes.append(invalid_value(f"{path}.hostPath", host, "must be an object"))
            return causes
        host_path, kind = host.get("path"), host.get("type", "")
        if not isinstance(host_path, str) or not host_path:
            causes.append(Cause(f"{path}.hostPath.path", "Required value", "FieldValueRequired"))
        elif not host_path.startswith("/") or ".." in host_path.split("/"):
            causes.append(
                invalid_value(f"{path}.hostPath.path", host_path, "must be an absolute path without '..'")
            )
        if kind not in HOST_PATH_TYPES:
            allowed = ", ".join(json.dumps(t) for t in HOST_PATH_TYPES)
            causes.append(
                Cause(
                    f"{path}.hostPath.type",
                    f"Unsupported value: {json.dumps(kind)}: supported values: {allowed}",
                    "FieldValueNotSupported",
                )
            )
    return causes


def _spec_causes(spec: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for key, value in (spec.get("nodeSelector") or {}).items():
        if isinstance(value, dict | list) or value is None:
            causes.append(
                invalid_value(f"spec.nodeSelector.{key}", value, "must be a string (a node label's value)")
            )
    prepare, results = spec.get("prepare"), spec.get("results")
    if isinstance(prepare, dict):
        if error := relative_path_error(prepare["to"]):
            causes.append(invalid_value("spec.prepare.to", prepare["to"], error))
        causes += volume_causes("spec.prepare.mount", prepare["mount"])
    if isinstance(results, dict):
        if error := relative_path_error(results["from"]):
            causes.append(invalid_value("spec.results.from", results["from"], error))
        causes += volume_causes("spec.results.mount", results["mount"])
    return causes


class WlmSlurmJobStrategy(Strategy):
    status_subresource = True
    structure = WlmSlurmJobObject
    field_labels = {"status.status": field_of("status", "status")}

    def validate_schema(self, obj: Obj) -> list[Cause]:
        sections: dict[str, type[BaseModel]] = {"spec": WlmSlurmJobSpec, "status": WlmSlurmJobStatus}
        causes = section_causes(obj, sections, required=("spec",))
        if causes:
            return causes
        return _spec_causes(obj["spec"]) + status_causes(obj.get("status"))

    def validate_schema_update(self, new: Obj, old: Obj) -> list[Cause]:
        if new.get("spec") == old.get("spec"):
            return section_causes(new, {"status": WlmSlurmJobStatus}) + status_causes(new.get("status"))
        return self.validate_schema(new)

    def validate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        """As the seed's scheduler did: some partition's virtual Node matches the node selector, and the
        ``#SBATCH`` resources fit it; refused with the reason instead of pending for ever."""
        published = ctx.list_storage(BRIDGE_GROUP, "Partition", None)
        if not published:
            return
        selector = node_selector(obj)
        chosen = [p for p in published if matches(selector, p)]
        if not chosen:
            text = (
                f"Invalid value: {json.dumps(selector, sort_keys=True)}: no node matches this selector "
                "(see kubectl get nodes --show-labels)"
            )
            fit.refuse(GROUP, "SlurmJob", obj, Cause("spec.nodeSelector", text))
        fit.check(GROUP, "SlurmJob", obj, chosen, fit.request_of_script(str(obj["spec"].get("batch", ""))))

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        before, after = old.get("spec") or {}, new.get("spec") or {}
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if changed:
            name = (new.get("metadata") or {}).get("name", "")
            causes = [
                Cause(f"spec.{k}", "Invalid value: field is immutable: delete and create the job again")
                for k in changed
            ]
            raise errors.invalid(GROUP, "SlurmJob", name, causes)


def node_selector(obj: Obj) -> dict[str, str]:
    """The job's node selector as the seed applied it: its own entries over ``type: virtual-kubelet``,
    every value as text."""
    selector = dict(DEFAULT_NODE_SELECTOR)
    for key, value in ((obj.get("spec") or {}).get("nodeSelector") or {}).items():
        selector[str(key)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return selector


def bridge_spec(obj: Obj, partitions: list[str]) -> dict[str, Any]:
    """The ``slurmlink.io/v1`` SlurmJob spec that runs this job, for the bridge.

    ``partitions`` are the Slurm names of the partitions whose virtual Nodes match
    :func:`node_selector` (``bridge.node.matches``); Slurm starts the job on whichever can start it
    first, as kube-scheduler picked one of the matching virtual nodes. ``prepare`` becomes an input
    (the hostPath's contents under ``<to>/<volume name>``, where the seed unzipped them); ``results``
    becomes the outputs ``<from>`` and ``<from>/**``, copied afterwards into the results hostPath by
    :func:`results_destination`.
    """
    spec = obj.get("spec") or {}
    out: dict[str, Any] = {"script": spec.get("batch", "")}
    if len(partitions) == 1:
        out["partition"] = partitions[0]
    elif partitions:
        out["partitions"] = list(partitions)
    prepare = spec.get("prepare")
    if isinstance(prepare, dict):
        mount = prepare.get("mount") or {}
        source = (mount.get("hostPath") or {}).get("path")
        out["inputs"] = [{"path": source, "to": prepare.get("to", "."), "name": mount.get("name")}]
    results = spec.get("results")
    if isinstance(results, dict):
        origin = posixpath.normpath(str(results.get("from", "")))
        out["outputs"] = [origin, f"{origin}/**"]
    return out


def results_destination(obj: Obj) -> str | None:
    """Where the results go on the bridge's host: ``<hostPath>/<base name of from>``, as the seed's
    collect pod left them (``/home/docker/outputs/bar`` for ``from: bar``); None without results."""
    results = (obj.get("spec") or {}).get("results")
    if not isinstance(results, dict):
        return None
    host = ((results.get("mount") or {}).get("hostPath") or {}).get("path")
    if not isinstance(host, str):
        return None
    return posixpath.join(host, posixpath.basename(posixpath.normpath(str(results.get("from", "")))))


def seed_status(phase: str | None) -> str:
    """``status.status`` for a bridge phase (see ``SEED_STATUS``); an unknown phase is Pending."""
    return SEED_STATUS.get(phase or "", "Pending")


WLM_SLURM_JOB = Kind(
    group=GROUP,
    kind="SlurmJob",
    plural="slurmjobs",
    singular="slurmjob",
    namespaced=True,
    versions=(VERSION,),
    storage_version=VERSION,
    strategy=WlmSlurmJobStrategy(),
    short_names=("sj",),
    # A service the admin lets act for named users submits on their behalf (auth.delegation).
    access=AccessPolicy(roles=base_roles(), user_verbs=ALL, delegable=True),
    printer_columns=(
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        PrinterColumn("Status", ".status.status", "string", "status of the kind"),
        PrinterColumn("JobID", ".status.jobId", "string", "Slurm job id", priority=1),
        PrinterColumn("Partition", ".status.partition", "string", "Partition the job runs in", priority=1),
        PrinterColumn("Slurm State", ".status.slurmState", "string", "The job's state in Slurm", priority=1),
        PrinterColumn("Reason", ".status.reason", "string", "Why it waits or why it ended", priority=1),
    ),
)
