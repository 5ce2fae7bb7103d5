"""The test driver (driver id ``tester``).

Directive: ``#DW <State> action=complete|wait|error [message=..] [severity=..]``.

Behaves exactly like upstream's dws-test-driver so every Workflow path can be exercised without
storage: ``complete`` finishes its entry, ``wait`` leaves it Pending for an operator to patch,
``error`` reports ``message`` (underscores become spaces in ``error``) with the severity's status.
"""

from __future__ import annotations

import logging

from slurmlink import jsonutil
from slurmlink.client.base import Client
from slurmlink.controllers.runtime import Reconciler, Result
from slurmlink.controllers.workflow import settle_in_driver_write
from slurmlink.resources.dws import directives
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.kind import Obj
from slurmlink.resources.meta import now_micro

log = logging.getLogger(__name__)

DRIVER_ID = "tester"


class SeverityError(ValueError):
    pass


def severity_to_status(severity: str) -> str:
    """Upstream ``SeverityStringToStatus``.

    Minor/empty -> Running, Major -> TransientCondition, Fatal -> Error.
    """
    value = severity.lower()
    if value in ("", "minor"):
        return "Running"
    if value == "major":
        return "TransientCondition"
    if value == "fatal":
        return "Error"
    raise SeverityError(f"unknown severity: {severity}")


def _in_progress(workflow: Obj) -> bool:
    """Not being deleted, and its current state is the desired one, not yet achieved."""
    m, spec = workflow.get("metadata") or {}, workflow.get("spec") or {}
    status = workflow.get("status") or {}
    return not (
        m.get("deletionTimestamp") or status.get("ready") or status.get("state") != spec.get("desiredState")
    )


def drive(workflow: Obj) -> Obj | None:
    """The test driver's decision for one workflow: the updated object, or None when nothing changes."""
    if not _in_progress(workflow):
        return None
    m, spec = workflow["metadata"], workflow["spec"]
    wf = jsonutil.clone(workflow)
    drivers = wf.get("status", {}).get("drivers") or []
    dwds = spec.get("dwDirectives") or []
    for entry in drivers:
        if entry.get("driverID") != DRIVER_ID or entry.get("watchState") != spec["desiredState"]:
            continue
        if entry.get("completed") or entry.get("status") == "Error":
            continue
        index = entry.get("dwdIndex", -1)
        if not isinstance(index, int) or not 0 <= index < len(dwds):
            log.warning("%s: driver entry points at missing directive %s", m.get("name"), index)
            break
        try:
            _command, args = directives.parse_directive(dwds[index])
        except directives.DirectiveError as exc:
            log.warning("%s: cannot parse %r: %s", m.get("name"), dwds[index], exc)
            break
        action = args.get("action")
        if action == "complete":
            entry["completed"] = True
            entry["status"] = "Completed"
            entry["completeTime"] = now_micro()
        elif action == "wait":
            continue
        elif action == "error":
            message = args.get("message") or ""
            entry["message"] = "Reported error: " + message
            entry["error"] = message.replace("_", " ")
            try:
                entry["status"] = severity_to_status(args.get("severity") or "")
            except SeverityError as exc:
                entry["status"] = "Error"
                entry["message"] = f"Internal error: {exc}"
                entry["error"] = str(exc)
        else:
            log.warning("%s: unsupported action %r in %r", m.get("name"), action, dwds[index])
            break
    return wf if wf != workflow else None


class TestDriverReconciler(Reconciler):
    __test__ = False  # not a pytest class

    name = "test-driver"
    kind = WORKFLOW

    def wants(self, obj: Obj) -> bool:
        """Only a Workflow working on its desired state can have an entry of ours to complete."""
        return _in_progress(obj)

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        updated = drive(obj)
        if updated is not None:
            settle_in_driver_write(updated)
            await client.update(WORKFLOW, updated)
        return None
