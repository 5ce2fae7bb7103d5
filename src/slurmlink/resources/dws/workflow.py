"""The DWS ``Workflow`` kind: schema, defaults, admission (upstream's webhooks), printer columns.

Status is not a subresource (upstream's CRD has ``subresources: {}``): drivers and the controller
write status through the main resource, and the validating webhook polices those writes too.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from slurmlink.resources import errors
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.dws import directives, states
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy
from slurmlink.resources.schema import validate_part

VALIDATING_WEBHOOK = "vworkflow.kb.io"

Uint32 = Annotated[int, Field(ge=0, le=4294967295)]
DriverStatusValue = Literal[
    "Pending", "Queued", "Running", "Completed", "TransientCondition", "Error", "DriverWait"
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class WorkflowSpec(_Open):
    desiredState: states.State
    wlmID: StrictStr
    jobID: StrictInt | StrictStr
    userID: Uint32
    groupID: Uint32
    hurry: bool = False
    dwDirectives: list[StrictStr]
    forceReady: bool = False


class DriverStatus(_Open):
    driverID: StrictStr
    taskID: StrictStr
    dwdIndex: StrictInt
    watchState: states.State
    lastHB: StrictInt
    completed: bool
    status: DriverStatusValue | None = None
    message: StrictStr | None = None
    error: StrictStr | None = None
    completeTime: StrictStr | None = None


class WorkflowStatus(_Open):
    state: states.State | None = None
    ready: bool
    status: Literal["Completed", "DriverWait", "TransientCondition", "Error"] | None = None
    message: StrictStr | None = None
    env: dict[str, StrictStr] | None = None
    drivers: list[DriverStatus] | None = None
    directiveBreakdowns: list[dict[str, Any]] | None = None
    computes: dict[str, Any] | None = None
    desiredStateChange: StrictStr | None = None
    readyChange: StrictStr | None = None
    elapsedTimeLastState: StrictStr | None = None
    requires: list[StrictStr] | None = None
    workflowToken: dict[str, Any] | None = None


def _invalid(field: str, value: Any, detail: str) -> errors.ApiError:
    return errors.denied(VALIDATING_WEBHOOK, f"{field}: Invalid value: {json.dumps(value)}: {detail}")


def _forbidden(field: str, detail: str) -> errors.ApiError:
    return errors.denied(VALIDATING_WEBHOOK, f"{field}: Forbidden: {detail}")


def _internal(field: str, detail: str) -> errors.ApiError:
    return errors.denied(VALIDATING_WEBHOOK, f"{field}: Internal error: {detail}")


def directive_rules(ctx: AdmissionContext) -> list[directives.DirectiveRule]:
    """Every DWDirectiveRule in the system namespace, concatenated (as upstream's webhook does)."""
    return directives.rules_from_objects(ctx.list_storage(GROUP, "DWDirectiveRule", ctx.system_namespace))


class WorkflowStrategy(Strategy):
    status_subresource = False
    storage_only_paths = (("spec", "forceReady"), ("status", "requires"), ("status", "workflowToken"))

    def convert(self, obj: Obj, to_version: str, api_version: str) -> Obj:
        out = super().convert(obj, to_version, api_version)
        if to_version == "v1alpha2":
            spec = out.get("spec")
            if isinstance(spec, dict) and "forceReady" in spec:
                out["spec"] = {k: v for k, v in spec.items() if k != "forceReady"}
            status = out.get("status")
            if isinstance(status, dict) and ("requires" in status or "workflowToken" in status):
                out["status"] = {k: v for k, v in status.items() if k not in ("requires", "workflowToken")}
        return out

    def default(self, obj: Obj) -> None:
        spec = obj.get("spec")
        if isinstance(spec, dict):
            spec.setdefault("hurry", False)
            spec.setdefault("forceReady", False)

    def validate_schema(self, obj: Obj) -> list[Cause]:
        if not isinstance(obj.get("spec"), dict):
            return [Cause("spec", "Required value", "FieldValueRequired")]
        return validate_part(WorkflowSpec, obj["spec"], "spec") + validate_part(
            WorkflowStatus, obj.get("status"), "status"
        )

    def mutate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        """Upstream's mutating webhook: register drivers from the rules, and the workflow's env."""
        spec = obj.get("spec") or {}
        status = obj.setdefault("status", {})
        if not isinstance(status, dict):
            return
        status.setdefault("ready", False)
        dwds = spec.get("dwDirectives") or []
        if dwds and isinstance(dwds, list) and all(isinstance(d, str) for d in dwds):
            drivers = status.setdefault("drivers", [])
            seen = {(d.get("dwdIndex"), d.get("driverID"), d.get("watchState")) for d in drivers}
            for driver_id, index, watch_state in directives.driver_registrations(dwds, directive_rules(ctx)):
                if (index, driver_id, watch_state) in seen:
                    continue
                seen.add((index, driver_id, watch_state))
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
        env = status.setdefault("env", {})
        env["DW_WORKFLOW_NAME"] = obj["metadata"]["name"]
        env["DW_WORKFLOW_NAMESPACE"] = obj["metadata"].get("namespace", "")

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
                directives.validate_directives(
                    dwds, directive_rules(ctx), rules_namespace=ctx.system_namespace
                )
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
        drivers, old_drivers = status.get("drivers") or [], old_status.get("drivers") or []
        if len(drivers) != len(old_drivers):
            raise _internal("Status.Drivers", "the list of driver entries cannot change length")
        for i, (entry, before) in enumerate(zip(drivers, old_drivers, strict=True)):
            field = f"Status.Drivers[{i}]"
            if entry.get("watchState") != old_state and entry != before:
                raise _internal(field, "driver entry for non-current state cannot be changed")
            if entry.get("completed") and entry.get("status") != "Completed":
                raise _internal(field, "driver cannot be completed without status=Completed")
            if entry.get("completed") and entry.get("error"):
                raise _internal(field, "driver cannot be completed when error is present")
            if not entry.get("completed") and before.get("completed"):
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


WORKFLOW = Kind(
    group=GROUP,
    kind="Workflow",
    plural="workflows",
    singular="workflow",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=WorkflowStrategy(),
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
