"""The DWS ``Workflow`` kind: schema, defaults, admission (upstream's webhooks), printer columns.

Status is not a subresource (upstream's CRD has ``subresources: {}``): drivers and the controller
write status through the main resource, and the validating webhook polices those writes too. A
change of ``spec.desiredState`` is adopted in the write that makes it (``adopt_desired_state``),
where upstream's controller would write once more.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from slurmlink.resources import errors
from slurmlink.resources.access import READ, AccessPolicy, UnixAccount, default_policy
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.dws import directives, states
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS, WORKFLOW_FINALIZER
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, field_of
from slurmlink.resources.meta import now_micro
from slurmlink.resources.schema import json_type, validate_part

VALIDATING_WEBHOOK = "vworkflow.kb.io"
MUTATING_WEBHOOK = "mworkflow.kb.io"
#: Fields that exist only from v1alpha3/v1alpha5 on: hidden from and ignored in v1alpha2 requests.
V1ALPHA2_HIDDEN = (("spec", "forceReady"), ("status", "requires"), ("status", "workflowToken"))

Uint32 = Annotated[int, Field(ge=0, le=4294967295)]
DriverStatusValue = Literal[
    "Pending", "Queued", "Running", "Completed", "TransientCondition", "Error", "DriverWait"
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# Fields are declared in alphabetical order, as controller-gen writes the CRD's ``properties`` and
# ``required`` lists: the API server reports several missing fields in that order.


class WorkflowSpec(_Open):
    desiredState: states.State
    dwDirectives: list[StrictStr]
    forceReady: bool = False
    groupID: Uint32
    hurry: bool = False
    jobID: StrictInt | StrictStr
    userID: Uint32
    wlmID: StrictStr


class DriverStatus(_Open):
    completeTime: StrictStr | None = None
    completed: bool
    driverID: StrictStr
    dwdIndex: StrictInt
    error: StrictStr | None = None
    lastHB: StrictInt
    message: StrictStr | None = None
    status: DriverStatusValue | None = None
    taskID: StrictStr
    watchState: states.State


class WorkflowStatus(_Open):
    computes: dict[str, Any] | None = None
    desiredStateChange: StrictStr | None = None
    directiveBreakdowns: list[dict[str, Any]] | None = None
    drivers: list[DriverStatus] | None = None
    elapsedTimeLastState: StrictStr | None = None
    env: dict[str, StrictStr] | None = None
    message: StrictStr | None = None
    ready: bool
    readyChange: StrictStr | None = None
    requires: list[StrictStr] | None = None
    state: states.State | None = None
    status: Literal["Completed", "DriverWait", "TransientCondition", "Error"] | None = None
    workflowToken: dict[str, Any] | None = None


def _invalid(field: str, value: Any, detail: str) -> errors.ApiError:
    return errors.denied(VALIDATING_WEBHOOK, f"{field}: Invalid value: {json.dumps(value)}: {detail}")


def _forbidden(field: str, detail: str) -> errors.ApiError:
    return errors.denied(VALIDATING_WEBHOOK, f"{field}: Forbidden: {detail}")


def _internal(field: str, detail: str) -> errors.ApiError:
    return errors.denied(VALIDATING_WEBHOOK, f"{field}: Internal error: {detail}")


def _panicked(webhook: str, text: str) -> errors.ApiError:
    """A webhook that panicked: controller-runtime's recovery answers ``Errored(500, "panic: ...")``.

    The API server prefixes the message like any rejection; the Status has code 500 and no reason.
    """
    return errors.ApiError(500, "", f'admission webhook "{webhook}" denied the request: {text}')


def _index_panic(index: int, length: int) -> errors.ApiError:
    return _panicked(
        VALIDATING_WEBHOOK,
        f"panic: runtime error: index out of range [{index}] with length {length} [recovered]",
    )


# WorkflowDriverStatus as the Go webhook sees it after decoding: absent and zero values are the same,
# and fields outside the schema do not exist. Used for upstream's reflect.DeepEqual of driver entries.
_DRIVER_ZERO: tuple[tuple[str, Any], ...] = (
    ("driverID", ""),
    ("taskID", ""),
    ("dwdIndex", 0),
    ("watchState", ""),
    ("lastHB", 0),
    ("completed", False),
    ("status", ""),
    ("message", ""),
    ("error", ""),
    ("completeTime", None),
)


def _go_driver(entry: Any) -> tuple[Any, ...]:
    entry = entry if isinstance(entry, dict) else {}
    return tuple(entry.get(key) if entry.get(key) is not None else zero for key, zero in _DRIVER_ZERO)


def _int_or_string_causes(field: str, value: Any) -> list[Cause]:
    """What the API server reports for a wrong type in ``jobID``.

    The CRD marks it ``x-kubernetes-int-or-string`` *and* ``anyOf: [integer, string]``, so the
    server's validator reports the combined type, the failed anyOf, and the first anyOf branch
    (see apiextensions-apiserver's validation tests for that schema shape).
    """
    label = json.dumps(json_type(value))
    return [
        Cause(
            field,
            f"Invalid value: {label}: {field} in body must be of type integer,string: {label}",
            "FieldValueTypeInvalid",
        ),
        Cause("<nil>", f'Invalid value: "": "{field}" must validate at least one schema (anyOf)'),
        Cause(
            field,
            f"Invalid value: {label}: {field} in body must be of type integer: {label}",
            "FieldValueTypeInvalid",
        ),
    ]


def _without(obj: Obj, paths: tuple[tuple[str, str], ...]) -> Obj:
    """``obj`` minus the given two-level paths, copying only the dicts that change."""
    out = dict(obj)
    for top, key in paths:
        part = out.get(top)
        if isinstance(part, dict) and key in part:
            out[top] = {k: v for k, v in part.items() if k != key}
    return out


def adopt_desired_state(wf: Obj) -> None:
    """Make ``wf``'s desired state its current one, not yet achieved: the controller's first step
    on a state change (upstream's, which also clears ``forceReady``)."""
    spec, status = wf["spec"], wf["status"]
    status["state"] = spec["desiredState"]
    status["ready"] = False
    status["status"] = "DriverWait"
    status["message"] = ""
    status["desiredStateChange"] = now_micro()
    spec["forceReady"] = False


def adopts_in_write(new: Obj, old: Obj) -> bool:
    """Whether an update changing ``spec.desiredState`` adopts it in the same write.

    Only for a Workflow the controller has taken on (finalizer, a current state) and is not
    deleting, and only for the write that moves the desired state to another known state and
    leaves the current one alone; anything else stays the controller's. Validation runs after
    this, against the old status, so a transition it refuses writes nothing.
    """
    spec, old_spec = new.get("spec"), old.get("spec")
    status, old_status = new.get("status"), old.get("status")
    if not (
        isinstance(spec, dict)
        and isinstance(old_spec, dict)
        and isinstance(status, dict)
        and isinstance(old_status, dict)
    ):
        return False
    m = new.get("metadata") or {}
    desired = spec.get("desiredState")
    return (
        not m.get("deletionTimestamp")
        and WORKFLOW_FINALIZER in (m.get("finalizers") or [])
        and desired in states.STATES
        and desired != old_spec.get("desiredState")
        and bool(old_status.get("state"))
        and status.get("state") == old_status.get("state")
        and desired != old_status.get("state")
    )


def directive_rules(ctx: AdmissionContext) -> list[directives.DirectiveRule]:
    """Every DWDirectiveRule in the system namespace, concatenated (as upstream's webhook does)."""
    return directives.rules_from_objects(_rule_objects(ctx))


def _rule_objects(ctx: AdmissionContext) -> list[dict[str, Any]]:
    return ctx.list_storage(GROUP, "DWDirectiveRule", ctx.system_namespace)


class WorkflowObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: WorkflowSpec | None = None
    status: WorkflowStatus | None = None


class WorkflowStrategy(Strategy):
    status_subresource = False
    status_alias = True
    storage_only_paths = V1ALPHA2_HIDDEN
    structure = WorkflowObject
    field_labels = {
        "spec.desiredState": field_of("spec", "desiredState"),
        "spec.jobID": field_of("spec", "jobID"),
        "spec.userID": field_of("spec", "userID"),
        "spec.groupID": field_of("spec", "groupID"),
        "spec.wlmID": field_of("spec", "wlmID"),
        "status.state": field_of("status", "state"),
        "status.status": field_of("status", "status"),
        "status.ready": field_of("status", "ready"),
    }

    def convert(self, obj: Obj, to_version: str, api_version: str) -> Obj:
        source = str(obj.get("apiVersion") or "")
        out = super().convert(obj, to_version, api_version)
        if to_version == "v1alpha2" or (to_version == STORAGE_VERSION and source == f"{GROUP}/v1alpha2"):
            # v1alpha2 has no such fields: hidden on the way out, and (like the API server's pruning
            # of fields outside a version's schema) ignored on the way in. The service then keeps
            # the stored values (``storage_only_paths``), as upstream's conversion annotations do.
            out = _without(out, V1ALPHA2_HIDDEN)
        return out

    def default(self, obj: Obj) -> None:
        spec = obj.get("spec")
        if isinstance(spec, dict):
            spec.setdefault("hurry", False)
            spec.setdefault("forceReady", False)

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return self._validate_parts(obj, spec=True, status=True)

    def validate_schema_update(self, new: Obj, old: Obj) -> list[Cause]:
        # Most updates change only one of the two (the client's desiredState or a controller's status).
        return self._validate_parts(
            new, spec=new.get("spec") != old.get("spec"), status=new.get("status") != old.get("status")
        )

    def _validate_parts(self, obj: Obj, *, spec: bool, status: bool) -> list[Cause]:
        causes = self._spec_causes(obj) if spec else []
        if not isinstance(obj.get("spec"), dict):
            return causes  # no spec object: that alone is reported, as the API server does
        return causes + (validate_part(WorkflowStatus, obj.get("status"), "status") if status else [])

    def _spec_causes(self, obj: Obj) -> list[Cause]:
        spec = obj.get("spec")
        if spec is None:
            return [Cause("spec", "Required value", "FieldValueRequired")]
        if not isinstance(spec, dict):
            label = json.dumps(json_type(spec))
            return [
                Cause(
                    "spec",
                    f"Invalid value: {label}: spec in body must be of type object: {label}",
                    "FieldValueTypeInvalid",
                )
            ]
        causes: list[Cause] = []
        for cause in validate_part(WorkflowSpec, spec, "spec"):
            if cause.field == "spec.jobID" and cause.reason == "FieldValueTypeInvalid":
                causes.extend(_int_or_string_causes(cause.field, spec.get("jobID")))
            else:
                causes.append(cause)
        return causes

    def mutate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        """Upstream's mutating webhook (``Default()``): register drivers from the rules, set the env.

        Directive errors are ignored here (the validating webhook reports them); entries for the
        directives matched before an error are still registered, as upstream does.
        """
        spec = obj.get("spec")
        if obj.get("status") is None:
            obj["status"] = {}  # Go decodes a missing or null status as the zero WorkflowStatus
        status = obj["status"]
        if not isinstance(spec, dict) or not isinstance(status, dict):
            return  # the schema check reports it
        status.setdefault("ready", False)
        dwds = spec.get("dwDirectives") or []
        drivers = status.get("drivers")
        if (
            dwds
            and isinstance(dwds, list)
            and all(isinstance(d, str) for d in dwds)
            and isinstance(drivers, list | None)
        ):
            drivers = list(drivers or [])
            # Go zero values for absent fields, as the webhook sees them after decoding.
            existing: list[tuple[str, int, str]] = [
                (d.get("driverID") or "", d.get("dwdIndex") or 0, d.get("watchState") or "")
                for d in drivers
                if isinstance(d, dict)
            ]
            try:
                added = directives.driver_registrations(dwds, directive_rules(ctx), existing)
            except directives.DirectivePanic as exc:
                raise _panicked(MUTATING_WEBHOOK, str(exc)) from exc
            for driver_id, index, watch_state in added:
                drivers.append(
                    {
                        "driverID": driver_id,
                        "taskID": "",
                        "dwdIndex": index,
                        "watchState": watch_state,
                        "lastHB": 0,
                        "completed": False,
                        "status": "Pending",
                    }
                )
            if drivers:
                status["drivers"] = drivers
        env = status.get("env")
        if not isinstance(env, dict):
            env = status["env"] = {}
        env["DW_WORKFLOW_NAME"] = obj["metadata"]["name"]
        env["DW_WORKFLOW_NAMESPACE"] = obj["metadata"].get("namespace", "")

    def mutate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        """A new desired state is adopted in the write that asks for it: watchers see the state
        change and its DriverWait at once, and the drivers can start one write sooner."""
        if adopts_in_write(new, old):
            adopt_desired_state(new)

    def validate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        spec, status = obj["spec"], obj.get("status") or {}
        if spec["desiredState"] != "Proposal":
            raise _invalid("Spec.DesiredState", spec["desiredState"], "desired state must start in Proposal")
        if spec.get("hurry"):
            raise _forbidden("Spec.Hurry", "the hurry flag may not be set on creation")
        if status.get("state"):
            raise _forbidden("Status.State", "the status state may not be set on creation")
        dwds = spec.get("dwDirectives") or []
        if dwds:
            try:
                directives.check_workflow_directives(dwds, _rule_objects(ctx), ctx.system_namespace)
            except directives.DirectiveError as exc:
                raise errors.denied(VALIDATING_WEBHOOK, str(exc)) from exc

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        spec, old_spec = new["spec"], old.get("spec") or {}
        status, old_status = new.get("status") or {}, old.get("status") or {}
        if spec.get("hurry") and spec["desiredState"] != "Teardown":
            raise _invalid("Spec.Hurry", True, "the hurry flag may be set only in Teardown")
        for field, key in (
            ("Spec.WLMID", "wlmID"),
            ("Spec.JobID", "jobID"),
            ("Spec.UserID", "userID"),
            ("Spec.GroupID", "groupID"),
            ("Spec.DWDirectives", "dwDirectives"),
        ):
            if spec.get(key) != old_spec.get(key):
                raise _forbidden(field, "field is immutable")
        old_state = old_status.get("state") or ""
        if old_state == "" and spec["desiredState"] == "Proposal":
            return
        # Upstream walks the new entries and indexes the old list with the same index: a shorter
        # list is fine, a longer one panics as soon as an extra entry's old value is looked at.
        drivers, old_drivers = status.get("drivers") or [], old_status.get("drivers") or []
        for i, entry in enumerate(drivers):
            field = f"Status.Drivers[{i}]"
            if entry.get("watchState") != old_state:
                if i >= len(old_drivers):
                    raise _index_panic(i, len(old_drivers))
                # Equal dicts first (almost every entry, compared in C); Go's zero values otherwise.
                if entry != old_drivers[i] and _go_driver(entry) != _go_driver(old_drivers[i]):
                    raise _internal(field, "driver entry for non-current state cannot be changed")
                continue
            if entry.get("completed"):
                if entry.get("status") != "Completed":
                    raise _internal(field, "driver cannot be completed without status=Completed")
                if entry.get("error"):
                    raise _internal(field, "driver cannot be completed when error is present")
            else:
                if i >= len(old_drivers):
                    raise _index_panic(i, len(old_drivers))
                if old_drivers[i].get("completed"):
                    raise _internal(field, "driver cannot change from completed state")
        new_state = spec["desiredState"]
        if new_state == "Teardown" or new_state == old_state:
            return
        if states.is_after(old_state, new_state):
            raise _invalid("Spec.DesiredState", new_state, "DesiredState cannot progress backwards")
        if states.next_state(old_state) != new_state:
            raise _invalid("Spec.DesiredState", new_state, "states cannot be skipped")
        if not old_status.get("ready"):
            raise _invalid("Status.State", old_state, "current desired state not yet achieved")


def _users_job(obj: Obj, account: UnixAccount) -> bool:
    """A user may read the Workflows of their own jobs (``spec.userID``), never change them."""
    spec = obj.get("spec")
    return isinstance(spec, dict) and spec.get("userID") == account.uid


#: DWS's workload-manager ClusterRole: Workflows in full (but no deletecollection).
_ACCESS = AccessPolicy(
    roles=default_policy(workload_manager=frozenset({"create", "delete", "patch", "update"}) | READ).roles,
    user_reads=_users_job,
)

WORKFLOW = Kind(
    group=GROUP,
    kind="Workflow",
    plural="workflows",
    singular="workflow",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=WorkflowStrategy(),
    access=_ACCESS,
    printer_columns=(
        PrinterColumn("STATE", ".status.state", "string", "Current state"),
        PrinterColumn("READY", ".status.ready", "boolean", "True if current state is achieved"),
        PrinterColumn("STATUS", ".status.status", "string", "Indicates achievement of current state"),
        PrinterColumn("JOBID", ".spec.jobID", "string", "Job ID"),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
        PrinterColumn("DESIREDSTATE", ".spec.desiredState", "string", "Desired state", priority=1),
        PrinterColumn(
            "DESIREDSTATECHANGE",
            ".status.desiredStateChange",
            "date",
            "Time of most recent desiredState change",
            priority=1,
        ),
        PrinterColumn(
            "ELAPSEDTIMELASTSTATE",
            ".status.elapsedTimeLastState",
            "string",
            "Duration of last state change",
            priority=1,
        ),
        PrinterColumn("UID", ".spec.userID", "string", "UID", priority=1),
        PrinterColumn("GID", ".spec.groupID", "string", "GID", priority=1),
    ),
)
