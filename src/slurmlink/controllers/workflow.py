"""The DWS Workflow controller: finalizer, state adoption, Computes, status roll-up, deletion.

Mirrors upstream's reconcile step by step (see docs/architecture.md); each step that changes the
object writes it and returns, so every state a Workflow goes through (e.g. DriverWait right after a
state change) is visible to watchers as with upstream DWS. Two steps are shared, each saving a
Workflow write and a round of watch events per state: the API adopts a new desired state in the
write that asks for it (``adopt_desired_state``; the controller still adopts Proposal), and the
drivers that run with the API (the test driver, the burst buffer driver) roll up and stamp readiness
in the write that finishes a state's last entry (``settle``).
"""

from __future__ import annotations

import datetime as dt
import decimal

from slurmlink import jsonutil
from slurmlink.client.base import Client
from slurmlink.client.informer import Key, object_key
from slurmlink.controllers.gc import delete_dependents, owner_graph
from slurmlink.controllers.runtime import Reconciler, Result, Watch, owner_keys, watches
from slurmlink.resources import errors
from slurmlink.resources.dws import ownership
from slurmlink.resources.dws.clientmount import CLIENT_MOUNT
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.directivebreakdown import DIRECTIVE_BREAKDOWN
from slurmlink.resources.dws.group import WORKFLOW_FINALIZER
from slurmlink.resources.dws.persistentstorageinstance import PERSISTENT_STORAGE_INSTANCE
from slurmlink.resources.dws.servers import SERVERS
from slurmlink.resources.dws.workflow import WORKFLOW, adopt_desired_state
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.meta import parse_time

_PRIORITY: dict[str, int] = {
    "Completed": 1,
    "DriverWait": 2,
    "Pending": 2,
    "Queued": 2,
    "Running": 2,
    "TransientCondition": 3,
    "Error": 4,
}
OWNER_LABELS = ownership.OWNER_LABELS
#: Kinds whose objects may belong to a Workflow: found at deletion by ownerReference (same
#: namespace) or by owner labels (any namespace, e.g. ClientMounts in a compute node's namespace).
CHILD_KINDS: tuple[Kind, ...] = (
    COMPUTES,
    DIRECTIVE_BREAKDOWN,
    SERVERS,
    CLIENT_MOUNT,
    PERSISTENT_STORAGE_INSTANCE,
)


def _workflow_keys(obj: Obj) -> list[Key]:
    """The Workflows a child names: its controlling ownerReference, or its owner labels."""
    keys = owner_keys(obj, WORKFLOW)
    labelled = ownership.label_owner_key(obj, WORKFLOW.kind)
    if labelled is not None and labelled not in keys:
        keys.append(labelled)
    return keys


def go_duration(elapsed: float | dt.timedelta) -> str:
    """Go's ``Duration.Round(time.Microsecond).String()`` for seconds (or a timedelta).

    Rounding is half away from zero, as Go's ``Round``; the text is Go's: ``0s``, ``500µs``,
    ``6.527ms``, ``1.503422s``, ``1m2.5s``, ``1h0m0s`` (U+00B5 micro sign, trailing zeros dropped).
    """
    if isinstance(elapsed, dt.timedelta):
        exact = decimal.Decimal(elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds
    else:
        exact = decimal.Decimal(repr(float(elapsed))) * 1_000_000
    us = int(exact.to_integral_value(rounding=decimal.ROUND_HALF_UP))
    if us == 0:
        return "0s"
    sign = "-" if us < 0 else ""
    us = abs(us)
    if us < 1000:
        return f"{sign}{us}\u00b5s"
    if us < 1_000_000:
        return f"{sign}{_fraction(us, 1000)}ms"
    hours, rest = divmod(us, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    secs = _fraction(rest, 1_000_000)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _fraction(value: int, unit: int) -> str:
    """``value / unit`` in decimal with trailing zeros (and a bare point) removed; exact."""
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def status_priority(status: object) -> int:
    """Upstream ``statusPriority``: Error 4 > TransientCondition 3 > running-ish 2 > Completed 1.

    Upstream panics on any other value (including an empty status); this raises ValueError, so the
    reconcile fails and is retried with back-off without touching the workflow, as there.
    """
    if isinstance(status, str) and status in _PRIORITY:
        return _PRIORITY[status]
    raise ValueError(f"unknown driver status {status!r}")


def roll_up(status: dict[str, object], drivers: list[dict[str, object]]) -> None:
    """Upstream's aggregation of the current state's driver entries into the workflow status.

    Starts from ready/Completed/no message; takes the entries whose ``watchState`` is the current
    state, highest priority first (a stable sort, as Go's for the short lists involved); any entry
    not ``completed`` clears ``ready``; the top-priority entries set ``message`` (``DW Directive N:
    msg``, the last non-empty one wins) and ``status`` (their own if TransientCondition, Error or
    Completed, otherwise DriverWait).
    """
    status["ready"] = True
    status["status"] = "Completed"
    status["message"] = ""
    current = [d for d in drivers if d.get("watchState") == status.get("state")]
    if not current:
        return
    ordered = sorted(current, key=lambda d: status_priority(d.get("status")), reverse=True)
    top = status_priority(ordered[0].get("status"))
    for driver in ordered:
        if not driver.get("completed"):
            status["ready"] = False
        if status_priority(driver.get("status")) < top:
            break
        if driver.get("message"):
            status["message"] = f"DW Directive {driver.get('dwdIndex', 0)}: {driver.get('message')}"
        value = driver.get("status")
        status["status"] = value if value in ("TransientCondition", "Error", "Completed") else "DriverWait"


def settle(wf: Obj) -> None:
    """Roll the current state's driver entries up into ``wf``'s status; stamp readiness when done.

    The controller's last step for a state. Drivers that run with the API call it on the object
    they write (``settle_in_driver_write``), so the write finishing a state's last entry also
    reports the state ready: one Workflow write and one round of watch events less per state.
    Raises ValueError for an unknown driver status, as ``status_priority`` does.
    """
    spec, status = wf["spec"], wf["status"]
    roll_up(status, list(status.get("drivers") or []))
    if spec.get("forceReady"):
        status["ready"], status["status"], status["message"] = True, "Completed", "Forced Ready"
    if status["ready"]:
        now = dt.datetime.now(dt.UTC)
        status["readyChange"] = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        started = status.get("desiredStateChange")
        elapsed = now - parse_time(started) if isinstance(started, str) else dt.timedelta(0)
        status["elapsedTimeLastState"] = go_duration(elapsed)


def settle_in_driver_write(wf: Obj) -> None:
    """``settle`` for a driver about to write ``wf``: only for a current, adopted, unready state.

    Anything else (a state the controller has not adopted yet, a Workflow being deleted, an unknown
    driver status) is left to the controller, which rolls up on the driver's write as before.
    """
    status = wf.get("status")
    if (
        not isinstance(status, dict)
        or wf["metadata"].get("deletionTimestamp")
        or WORKFLOW_FINALIZER not in (wf["metadata"].get("finalizers") or [])
        or status.get("ready")
        or status.get("state") != wf["spec"].get("desiredState")
    ):
        return
    before = dict(status)  # roll_up changes only top-level keys
    try:
        settle(wf)
    except ValueError:
        status.clear()
        status.update(before)


def _at_rest(wf: Obj) -> bool:
    """Nothing for the controller to do: finalizer in place, not deleting, past Proposal (whose
    Computes it checks), the desired state current and achieved."""
    m, spec, status = wf.get("metadata") or {}, wf.get("spec") or {}, wf.get("status")
    return bool(
        isinstance(status, dict)
        and not m.get("deletionTimestamp")
        and WORKFLOW_FINALIZER in (m.get("finalizers") or [])
        and spec.get("desiredState") != "Proposal"
        and status.get("state") == spec.get("desiredState")
        and status.get("ready")
    )


class WorkflowReconciler(Reconciler):
    name = "workflow"
    kind = WORKFLOW

    def secondary(self) -> tuple[Watch, ...]:
        # A child's change or deletion reconciles its Workflow (deletion waits on its children).
        return tuple(watches(kind, _workflow_keys) for kind in CHILD_KINDS)

    def wants(self, obj: Obj) -> bool:
        """Everything but a Workflow at rest."""
        return not _at_rest(obj)

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        if _at_rest(obj):
            return None  # reached through a child's event: nothing of the Workflow's own to do
        wf = jsonutil.clone(obj)
        m = wf["metadata"]
        finalizers = list(m.get("finalizers") or [])
        if m.get("deletionTimestamp"):
            return await self._finalize(client, wf, finalizers)
        # A new Workflow gets its finalizer in the same write as its first state (one write less).
        needs_finalizer = WORKFLOW_FINALIZER not in finalizers
        if needs_finalizer:
            m["finalizers"] = [*finalizers, WORKFLOW_FINALIZER]
        spec = wf["spec"]
        if not isinstance(wf.get("status"), dict):
            wf["status"] = {}  # a status written as null reads as the zero status, as in Go
        status = wf["status"]
        before = jsonutil.clone(status)
        if status.get("state") != spec["desiredState"]:
            # Proposal, and a Teardown asked for before Proposal was taken on: later changes are
            # adopted by the API in the write that asks for them (``adopt_desired_state``).
            adopt_desired_state(wf)
            if spec["desiredState"] == "Proposal":  # its Computes in the same write
                status["computes"] = await self._ensure_computes(client, wf)
            await client.update(WORKFLOW, wf)
            return None
        if spec["desiredState"] == "Proposal":
            ref = await self._ensure_computes(client, wf)
            if status.get("computes") != ref:
                status["computes"] = ref
                await client.update(WORKFLOW, wf)
                return None
        if needs_finalizer and status.get("ready"):
            await client.update(WORKFLOW, wf)
            return None
        if status.get("ready"):
            return None
        settle(wf)
        if status != before or needs_finalizer:
            try:
                await client.update(WORKFLOW, wf)
            except errors.ApiError as exc:
                if exc.code != 409:
                    raise
        return None

    async def _ensure_computes(self, client: Client, wf: Obj) -> dict[str, str]:
        m = wf["metadata"]
        ref = {"kind": "Computes", "name": m["name"], "namespace": m["namespace"]}
        known = self.informers.informer(COMPUTES).get(m["namespace"], m["name"])
        if known is not None and any(
            r.get("uid") == m.get("uid") for r in known["metadata"].get("ownerReferences") or []
        ):
            return ref  # already made (every reconcile in Proposal comes here): no create to refuse
        owner = {
            **wf,
            "apiVersion": wf.get("apiVersion", WORKFLOW.api_version(WORKFLOW.storage_version)),
            "kind": "Workflow",
        }
        computes: Obj = {
            "apiVersion": COMPUTES.api_version(COMPUTES.storage_version),
            "kind": "Computes",
            "metadata": {
                "name": m["name"],
                "namespace": m["namespace"],
                "labels": {**ownership.workflow_labels(owner), **ownership.owner_labels(owner)},
                "ownerReferences": [ownership.owner_reference(owner)],
            },
        }
        try:
            await client.create(COMPUTES, computes)
        except errors.ApiError as exc:
            if exc.code != 409:
                raise
        return ref

    async def _finalize(self, client: Client, wf: Obj, finalizers: list[str]) -> Result | None:
        if WORKFLOW_FINALIZER not in finalizers:
            return None
        if len(finalizers) != 1:
            return None  # other finalizers (drivers) go first; their removal re-triggers us
        # Children are deleted, and the finalizer stays until they are gone, as upstream's
        # DeleteChildren: those with an ownerReference to this Workflow (any kind, found through
        # the garbage collector's graph) and those with its owner labels (in any namespace, where
        # an ownerReference cannot point). Each child's deletion re-triggers us (``secondary``).
        graph = owner_graph(self.informers)
        for kind in CHILD_KINDS:
            graph.track(kind)
        if not graph.synced():
            return Result(requeue_after=0.5)
        remaining = bool(await delete_dependents(client, graph, wf, "Background"))
        if await self._delete_labelled_children(client, wf):
            remaining = True
        if remaining:
            return Result(requeue_after=5.0)
        wf["metadata"]["finalizers"] = [f for f in finalizers if f != WORKFLOW_FINALIZER]
        await client.update(WORKFLOW, wf)
        return None

    async def _delete_labelled_children(self, client: Client, wf: Obj) -> bool:
        """Delete the children that carry this Workflow's owner labels; whether any are left."""
        owner = {**wf, "kind": WORKFLOW.kind}
        left = False
        for kind in CHILD_KINDS:
            for child in self.informers.informer(kind).list():
                if not ownership.owned_by_labels(child, owner):
                    continue
                left = True
                if child["metadata"].get("deletionTimestamp"):
                    continue
                ns, name = object_key(child)
                try:
                    await client.delete(kind, ns or None, name, propagation_policy="Background")
                except errors.ApiError as exc:
                    if exc.code != 404:
                        raise
        return left
