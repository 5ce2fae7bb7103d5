"""The burst-buffer driver (driver id ``slurmlink``): gives ``#DW jobdw`` and persistent buffers real storage.

It acts on the Workflow's driver entries registered by the ``slurmlink`` DWDirectiveRule, state by
state, as upstream DWS drivers do, through standard DWS objects:

* **Proposal**: checks the directives against what the site has (``burstbuffer.directives.plan``:
  the same check the gateway runs at sbatch), writes one ``DirectiveBreakdown`` (allocation sets:
  strategy, capacity) and its empty ``Servers`` per ``jobdw``/``create_persistent``, the
  ``PersistentStorageInstance`` of a ``create_persistent``, this job as consumer of each
  ``persistentdw``, and the buffers' environment (``status.env``; mount paths are fixed per job).
* The workload manager (the gateway) then places the storage: ``POST .../servers/{name}/placement``
  fills ``Servers`` and creates the ``StorageAllocation`` objects in one transaction.
* **Setup**: waits until the storage nodes' agents report every allocation Ready.
* **DataIn**: one ``DataMovement`` per copy into a buffer (``copy_in``, ``stage_in``) and file system
  (``burstbuffer.movements``); waits until the storage nodes' agents have copied, as the job's user.
* **PreRun**: one ``ClientMount`` per compute node of ``Computes`` (allocation *i* of a per-compute
  buffer on compute *i*, a shared buffer everywhere); waits until the compute agents report them.
* **PostRun**: unmounts (``desiredState: unmounted``) and waits.
* **DataOut**: the same as DataIn for the copies out of the buffers (``copy_out``, ``stage_out``).
* **Teardown**: cancels copies still running (a ``--hurry`` teardown during a stage-out) and waits until
  they have stopped; deletes the ClientMounts and the job's allocations and waits until they are gone (the
  agents hold finalizers until unmounted and destroyed, so capacity is free when Teardown completes);
  drops this job from persistent instances it used; destroys a ``destroy_persistent``'s instance.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from slurmlink import jsonutil
from slurmlink.api import metrics
from slurmlink.burstbuffer import directives as bbd
from slurmlink.burstbuffer import movements as bbm
from slurmlink.burstbuffer.names import (
    BUFFERS_ANNOTATION,
    COMPUTE_NODE_FINALIZER,
    INSTANCE_ANNOTATION,
    POOL_ANNOTATION,
    STAGING_ANNOTATION,
)
from slurmlink.client.base import Client, get_or_none
from slurmlink.controllers.runtime import Key, Reconciler, Result, Watch, watches
from slurmlink.controllers.workflow import settle_in_driver_write
from slurmlink.resources import errors
from slurmlink.resources.dws import ownership
from slurmlink.resources.dws.clientmount import CLIENT_MOUNT
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.directivebreakdown import DIRECTIVE_BREAKDOWN
from slurmlink.resources.dws.persistentstorageinstance import PERSISTENT_STORAGE_INSTANCE
from slurmlink.resources.dws.servers import SERVERS
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.meta import now_micro, parse_time
from slurmlink.resources.storage.datamovement import DATA_MOVEMENT, finished
from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION
from slurmlink.resources.storage.storagepool import STORAGE_POOL

log = logging.getLogger(__name__)

DRIVER_ID = "slurmlink"
#: Where compute nodes mount a job's buffers: ``<root>/<workflow>/<job|persistent>/<name>``.
DEFAULT_MOUNT_ROOT = "/mnt/slurmlink"
#: How often a state that waits on agents is looked at again without an event.
RECHECK = 5.0
#: A state that waits is reported ``Running`` with what it waits for only once it has waited this long
#: (seconds). Most waits (a mount, an unmount, the deletions of a teardown) end sooner, and a Workflow
#: write saved is one fewer store write and watch event per waiting state and job.
QUIET_WAIT = 0.5


@dataclass(frozen=True)
class Outcome:
    """A state's result for this driver: done, still waiting (``message``), or failed (``error``)."""

    done: bool = False
    message: str = ""
    error: str = ""


DONE = Outcome(done=True)


def _wait(message: str) -> Outcome:
    return Outcome(message=message)


def _fail(error: str) -> Outcome:
    return Outcome(error=error)


def _waiting_on(allocation: Obj) -> str:
    """A storage node the setup waits for, with what its agent last said (a condition it retries)."""
    node = str(allocation["spec"]["node"])
    message = (allocation.get("status") or {}).get("message")
    return f"{node} ({message})" if message else node


def _workflow_of(obj: Obj) -> list[Key]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name, namespace = (
        labels.get(ownership.WORKFLOW_NAME_LABEL),
        labels.get(ownership.WORKFLOW_NAMESPACE_LABEL),
    )
    return [(namespace, name)] if name and namespace else []


def _consumers_of(obj: Obj) -> list[Key]:
    refs = (obj.get("spec") or {}).get("consumerReferences") or []
    return [(str(r.get("namespace") or ""), str(r.get("name"))) for r in refs if r.get("kind") == "Workflow"]


def _ref(obj: Obj) -> dict[str, str]:
    m = obj.get("metadata") or {}
    return {"kind": str(obj.get("kind")), "name": str(m.get("name")), "namespace": str(m.get("namespace"))}


def breakdown_name(wf: Obj, request: bbd.BufferRequest) -> str:
    """The DirectiveBreakdown (and Servers) of one buffer: ``<workflow>-<directive index>``, plus the
    buffer's name when one directive asks for two (DataWarp's ``access_mode=striped,private``)."""
    base = f"{wf['metadata']['name']}-{request.index}"
    return f"{base}-{request.name}" if request.grammar == "datawarp" and request.command == "jobdw" else base


class BurstBufferDriver(Reconciler):
    name = "burst-buffer"
    kind = WORKFLOW

    def __init__(self, mount_root: str = DEFAULT_MOUNT_ROOT, quiet_wait: float = QUIET_WAIT) -> None:
        self.mount_root = mount_root.rstrip("/") or DEFAULT_MOUNT_ROOT
        self.quiet_wait = quiet_wait
        #: (namespace, name, state) → monotonic time this driver first found that state waiting.
        self._waiting_since: dict[tuple[str, str, str], float] = {}

    def secondary(self) -> Sequence[Watch]:
        return (
            watches(DIRECTIVE_BREAKDOWN, _workflow_of),
            watches(SERVERS, _workflow_of),
            watches(STORAGE_ALLOCATION, self._allocation_workflows),
            watches(CLIENT_MOUNT, _workflow_of),
            watches(DATA_MOVEMENT, _workflow_of),
            watches(COMPUTES, lambda o: [(str(o["metadata"].get("namespace")), str(o["metadata"]["name"]))]),
            watches(PERSISTENT_STORAGE_INSTANCE, self._instance_workflows),
            watches(STORAGE_POOL, lambda _o: []),
        )

    def wants(self, obj: Obj) -> bool:
        return any(e.get("driverID") == DRIVER_ID for e in (obj.get("status") or {}).get("drivers") or [])

    def _allocation_workflows(self, obj: Obj) -> list[Key]:
        keys = _workflow_of(obj)
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("kind") == "PersistentStorageInstance":
                psi = self.informers.informer(PERSISTENT_STORAGE_INSTANCE).get(
                    obj["metadata"].get("namespace"), ref.get("name")
                )
                if psi is not None:
                    keys.extend(self._instance_workflows(psi))
        return keys

    def _instance_workflows(self, obj: Obj) -> list[Key]:
        keys = _consumers_of(obj)
        creator = (obj.get("metadata") or {}).get("annotations", {}).get(ownership.WORKFLOW_NAME_LABEL)
        if creator:
            keys.append((str(obj["metadata"].get("namespace")), creator))
        return keys

    # ---- the reconcile ---------------------------------------------------------------------------

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        status = obj.get("status") or {}
        state = status.get("state")
        if obj["metadata"].get("deletionTimestamp") or state != (obj.get("spec") or {}).get("desiredState"):
            return None
        entries = [
            e
            for e in status.get("drivers") or []
            if e.get("driverID") == DRIVER_ID
            and e.get("watchState") == state
            and not e.get("completed")
            and e.get("status") != "Error"
        ]
        if not entries:
            return None
        step = {
            "Proposal": self._proposal,
            "Setup": self._setup,
            "DataIn": self._data_in,
            "PreRun": self._pre_run,
            "PostRun": self._post_run,
            "DataOut": self._data_out,
            "Teardown": self._teardown,
        }.get(str(state))
        wf = jsonutil.clone(obj)
        try:
            outcome = await step(client, wf) if step is not None else DONE
        except bbd.BufferRequestError as exc:
            outcome = _fail(str(exc))
        except errors.ApiError as exc:
            if exc.code == 409:
                return Result(requeue_after=0.2)
            raise
        waited = self._quiet(obj, wf, str(state), outcome)
        if waited is not None:
            return Result(requeue_after=waited)
        self._record(wf, str(state), outcome)
        if wf != obj:
            settle_in_driver_write(wf)
            await client.update(WORKFLOW, wf)
        return None if outcome.done or outcome.error else Result(requeue_after=RECHECK)

    def _quiet(self, obj: Obj, wf: Obj, state: str, outcome: Outcome) -> float | None:
        """Seconds to wait before writing that ``state`` still waits; None to write now.

        Only a wait that changed nothing else, for a state not yet reported ``Running``, is kept quiet
        for up to :data:`QUIET_WAIT`: its end (an event of what it waits on) usually comes first."""
        key = (str(obj["metadata"].get("namespace")), str(obj["metadata"]["name"]), state)
        if outcome.done or outcome.error:
            self._waiting_since.pop(key, None)
            return None
        if wf != obj or any(
            e.get("driverID") == DRIVER_ID and e.get("watchState") == state and e.get("status") == "Running"
            for e in (obj.get("status") or {}).get("drivers") or []
        ):
            return None
        now = time.monotonic()
        if key not in self._waiting_since:
            # Forget waits whose Workflow moved on or went away without this driver seeing the end.
            stale = now - max(60.0, 10 * self.quiet_wait)
            self._waiting_since = {k: t for k, t in self._waiting_since.items() if t > stale}
        left = self.quiet_wait - (now - self._waiting_since.setdefault(key, now))
        if left <= 0:
            self._waiting_since.pop(key, None)
            return None
        return left

    @staticmethod
    def _record(wf: Obj, state: str, outcome: Outcome) -> None:
        """Write ``outcome`` into this driver's entries for ``state``."""
        for entry in wf["status"].get("drivers") or []:
            if (
                entry.get("driverID") != DRIVER_ID
                or entry.get("watchState") != state
                or entry.get("completed")
            ):
                continue
            if outcome.done:
                entry.update(completed=True, status="Completed", completeTime=now_micro(), message="")
                entry.pop("error", None)
            elif outcome.error:
                entry.update(status="Error", message=outcome.error, error=outcome.error)
            else:
                entry.update(status="Running", message=outcome.message)

    # ---- what the job asked for ------------------------------------------------------------------

    def _site(self, namespace: str, *, exclude_creator: str) -> bbd.SiteStorage:
        """What the site has, less the persistent instances this Workflow created itself (a Proposal
        run again after a failed write must not find its own ``create_persistent`` taken)."""
        instances = [
            i
            for i in self.informers.informer(PERSISTENT_STORAGE_INSTANCE).list(namespace)
            if ((i.get("metadata") or {}).get("annotations") or {}).get(ownership.WORKFLOW_NAME_LABEL)
            != exclude_creator
        ]
        return bbd.SiteStorage.from_objects(self.informers.informer(STORAGE_POOL).list(), instances)

    @staticmethod
    def _requests(wf: Obj) -> list[dict[str, Any]]:
        raw = ((wf.get("metadata") or {}).get("annotations") or {}).get(BUFFERS_ANNOTATION)
        return list(jsonutil.loads(raw)) if raw else []

    def mount_path(self, wf: Obj, request: dict[str, Any]) -> str:
        return f"{self.mount_root}/{wf['metadata']['name']}/{request['key']}"

    # ---- Proposal --------------------------------------------------------------------------------

    async def _proposal(self, client: Client, wf: Obj) -> Outcome:
        m, spec = wf["metadata"], wf["spec"]
        ns = m["namespace"]
        site = self._site(ns, exclude_creator=m["name"])
        requests = bbd.plan(spec.get("dwDirectives") or [], site, user_id=spec.get("userID"))
        resolved = [
            {
                "servers": breakdown_name(wf, r),
                "index": r.index,
                "command": r.command,
                "name": r.name,
                "key": r.key,
                "fsType": r.fs_type,
                "perCompute": r.per_compute,
                "capacity": r.capacity,
                "pool": r.pool,
            }
            for r in requests
        ]
        for request in requests:
            if request.command in ("jobdw", "create_persistent"):
                await self._ensure_breakdown(client, wf, request)
            if request.command == "persistentdw":
                await self._add_consumer(client, wf, request.name)
        paths = {
            r.key: self.mount_path(wf, {"key": r.key})
            for r in requests
            if r.command in ("jobdw", "persistentdw")
        }
        env = dict(wf["status"].get("env") or {})
        env.update(bbd.environment([r for r in requests if r.command in ("jobdw", "persistentdw")], paths))
        wf["status"]["env"] = env
        annotations = m.setdefault("annotations", {})
        annotations[BUFFERS_ANNOTATION] = jsonutil.dumps_str(resolved)
        copies = bbd.staging(spec.get("dwDirectives") or [], requests)
        if copies:
            annotations[STAGING_ANNOTATION] = jsonutil.dumps_str([bbm.staging_record(c) for c in copies])
        return DONE

    async def _ensure_breakdown(self, client: Client, wf: Obj, request: bbd.BufferRequest) -> None:
        ns = wf["metadata"]["namespace"]
        name = breakdown_name(wf, request)
        persistent = request.command == "create_persistent"
        if persistent:
            await self._ensure_instance(client, wf, request)
        annotations = {}
        if request.pool:
            annotations[POOL_ANNOTATION] = request.pool
        if persistent:
            annotations[INSTANCE_ANNOTATION] = request.name
        strategy = "AllocatePerCompute" if request.per_compute else "AllocateAcrossServers"
        body: Obj = {
            "apiVersion": DIRECTIVE_BREAKDOWN.api_version(DIRECTIVE_BREAKDOWN.storage_version),
            "kind": DIRECTIVE_BREAKDOWN.kind,
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": {"directive": request.directive, "userID": int(wf["spec"].get("userID") or 0)},
        }
        ownership.adopt(body, {**wf, "kind": "Workflow"})
        breakdown = await _create_or_get(client, DIRECTIVE_BREAKDOWN, body)
        servers_body: Obj = {
            "apiVersion": SERVERS.api_version(SERVERS.storage_version),
            "kind": SERVERS.kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": {},
        }
        ownership.adopt(
            servers_body, {**wf, "kind": "Workflow"}, owner={**breakdown, "kind": "DirectiveBreakdown"}
        )
        await _create_or_get(client, SERVERS, servers_body)
        status = {
            "ready": True,
            "servers": {"kind": "Servers", "name": name, "namespace": ns},
            "storage": {
                "lifetime": "persistent" if persistent else "job",
                "allocationSets": [
                    {
                        "label": request.fs_type,
                        "allocationStrategy": strategy,
                        "minimumCapacity": int(request.capacity or 1),
                    }
                ],
            },
        }
        if breakdown.get("status") != status:
            await client.update_status(DIRECTIVE_BREAKDOWN, {**breakdown, "status": status})

    async def _ensure_instance(self, client: Client, wf: Obj, request: bbd.BufferRequest) -> None:
        ns = wf["metadata"]["namespace"]
        body: Obj = {
            "apiVersion": PERSISTENT_STORAGE_INSTANCE.api_version(
                PERSISTENT_STORAGE_INSTANCE.storage_version
            ),
            "kind": PERSISTENT_STORAGE_INSTANCE.kind,
            "metadata": {
                "name": request.name,
                "namespace": ns,
                "annotations": {ownership.WORKFLOW_NAME_LABEL: wf["metadata"]["name"]},
            },
            "spec": {
                "name": request.name,
                "fsType": request.fs_type,
                "dwDirective": request.directive,
                "userID": int(wf["spec"].get("userID") or 0),
                "state": "Active",
            },
        }
        instance = await _create_or_get(client, PERSISTENT_STORAGE_INSTANCE, body)
        if not instance.get("status"):
            await client.update_status(
                PERSISTENT_STORAGE_INSTANCE, {**instance, "status": {"state": "Creating"}}
            )

    async def _add_consumer(self, client: Client, wf: Obj, name: str) -> None:
        ns = wf["metadata"]["namespace"]
        instance = await client.get(PERSISTENT_STORAGE_INSTANCE, ns, name)
        refs = list(instance["spec"].get("consumerReferences") or [])
        me = {"kind": "Workflow", "name": wf["metadata"]["name"], "namespace": ns}
        if me not in refs:
            instance["spec"]["consumerReferences"] = [*refs, me]
            await client.update(PERSISTENT_STORAGE_INSTANCE, instance)

    # ---- Setup -----------------------------------------------------------------------------------

    def _allocations(self, namespace: str, owner_kind: str, owner_name: str) -> list[Obj]:
        found = []
        for alloc in self.informers.informer(STORAGE_ALLOCATION).list(namespace):
            for ref in alloc["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == owner_kind and ref.get("name") == owner_name:
                    found.append(alloc)
        return sorted(found, key=lambda a: int(a["spec"].get("index") or 0))

    def _buffer_allocations(self, wf: Obj, request: dict[str, Any]) -> list[Obj]:
        ns = wf["metadata"]["namespace"]
        if request["command"] == "jobdw":
            return self._allocations(ns, "Servers", request["servers"])
        return self._allocations(ns, "PersistentStorageInstance", request["name"])

    async def _setup(self, client: Client, wf: Obj) -> Outcome:
        ns = wf["metadata"]["namespace"]
        waiting = []
        for request in self._requests(wf):
            if request["command"] not in ("jobdw", "create_persistent"):
                continue
            name = request["servers"]
            servers = self.informers.informer(SERVERS).get(ns, name)
            if servers is None or not (servers.get("spec") or {}).get("allocationSets"):
                waiting.append(f"{request['name']}: waiting for the workload manager to place it")
                continue
            allocations = self._buffer_allocations(wf, request)
            failed = [a for a in allocations if (a.get("status") or {}).get("state") == "Failed"]
            if failed:
                a = failed[0]
                return _fail(
                    f"buffer {request['name']}: storage node {a['spec']['node']}: "
                    f"{(a.get('status') or {}).get('message') or 'allocation failed'}"
                )
            pending = [_waiting_on(a) for a in allocations if (a.get("status") or {}).get("state") != "Ready"]
            if pending or not allocations:
                waiting.append(f"{request['name']}: waiting for storage node(s) {', '.join(pending) or '?'}")
                continue
            await self._servers_ready(client, servers, allocations)
            if request["command"] == "create_persistent":
                await self._instance_active(client, ns, request["name"], name)
        return _wait("; ".join(waiting)) if waiting else DONE

    @staticmethod
    async def _servers_ready(client: Client, servers: Obj, allocations: list[Obj]) -> None:
        storage: dict[str, Any] = {}
        for alloc in allocations:
            storage[alloc["spec"]["node"]] = {"allocationSize": alloc["spec"]["capacity"], "ready": True}
        label = allocations[0]["spec"]["fsType"]
        status = {
            "ready": True,
            "allocationSets": [{"label": label, "storage": storage}],
            "lastUpdate": now_micro(),
        }
        current = servers.get("status") or {}
        if current.get("ready") and current.get("allocationSets") == status["allocationSets"]:
            return
        await client.update_status(SERVERS, {**servers, "status": status})
        if not current.get("ready"):  # the first time: how long the storage nodes took
            placed = min(parse_time(a["metadata"]["creationTimestamp"]) for a in allocations)
            waited = (dt.datetime.now(dt.UTC) - placed).total_seconds()
            metrics.BUFFER_ALLOCATION.labels(label).observe(max(0.0, waited))

    async def _instance_active(self, client: Client, ns: str, name: str, servers: str) -> None:
        instance = self.informers.informer(PERSISTENT_STORAGE_INSTANCE).get(ns, name)
        if instance is None or (instance.get("status") or {}).get("state") == "Active":
            return
        status = {"state": "Active", "servers": {"kind": "Servers", "name": servers, "namespace": ns}}
        await client.update_status(PERSISTENT_STORAGE_INSTANCE, {**instance, "status": status})

    # ---- DataIn / DataOut ------------------------------------------------------------------------

    @staticmethod
    def _copies(wf: Obj) -> list[dict[str, Any]]:
        raw = ((wf.get("metadata") or {}).get("annotations") or {}).get(STAGING_ANNOTATION)
        return list(jsonutil.loads(raw)) if raw else []

    def _movements(self, wf: Obj) -> dict[str, Obj]:
        key = (wf["metadata"]["namespace"], wf["metadata"]["name"])
        return {
            m["metadata"]["name"]: m
            for m in self.informers.informer(DATA_MOVEMENT).list(key[0])
            if key in _workflow_of(m)
        }

    def _computes(self, wf: Obj) -> list[str]:
        obj = self.informers.informer(COMPUTES).get(wf["metadata"]["namespace"], wf["metadata"]["name"])
        return [str(c.get("name")) for c in (obj or {}).get("data") or [] if c.get("name")]

    async def _data_in(self, client: Client, wf: Obj) -> Outcome:
        return await self._stage(client, wf, "in")

    async def _data_out(self, client: Client, wf: Obj) -> Outcome:
        return await self._stage(client, wf, "out")

    async def _stage(self, client: Client, wf: Obj, direction: str) -> Outcome:
        copies = [c for c in self._copies(wf) if c.get("direction") == direction]
        if not copies:
            return DONE
        buffers = {str(r["key"]): r for r in self._requests(wf)}
        bodies, problem = bbm.movement_bodies(
            wf, copies, buffers, lambda b: self._buffer_allocations(wf, dict(b)), self._computes(wf)
        )
        if problem:
            return _fail(problem)
        existing = self._movements(wf)
        for body in bodies:
            name = body["metadata"]["name"]
            if name not in existing:
                existing[name] = await _create_or_get(client, DATA_MOVEMENT, body)
        wanted = [b["metadata"]["name"] for b in bodies]
        outcome = bbm.stage_outcome(wanted, existing)
        if outcome.error:
            return _fail(outcome.error)
        if not outcome.done:
            return _wait(outcome.waiting)
        for name in wanted:
            _observe(existing[name])
        return DONE

    # ---- PreRun / PostRun ------------------------------------------------------------------------

    def _mounts_for(self, wf: Obj, computes: list[str]) -> dict[str, list[dict[str, Any]]]:
        spec = wf["spec"]
        per_node: dict[str, list[dict[str, Any]]] = {c: [] for c in computes}
        for request in self._requests(wf):
            if request["command"] not in ("jobdw", "persistentdw"):
                continue
            allocations = self._buffer_allocations(wf, request)
            if not allocations:
                raise bbd.BufferRequestError(f"buffer {request['name']} has no storage allocated")
            per_compute = bool(request.get("perCompute"))
            if per_compute and len(allocations) < len(computes):
                raise bbd.BufferRequestError(
                    f"buffer {request['name']} has {len(allocations)} allocation(s) for {len(computes)} "
                    f"compute nodes (xfs, raw and dir buffers need one per node)"
                )
            for i, compute in enumerate(computes):
                alloc = allocations[i] if per_compute else allocations[0]
                per_node[compute].append(
                    {
                        "mountPath": self.mount_path(wf, request),
                        "type": alloc["spec"]["fsType"],
                        "device": {
                            "type": "reference",
                            "deviceReference": {
                                "objectReference": _ref({**alloc, "kind": "StorageAllocation"})
                            },
                        },
                        "userID": int(spec.get("userID") or 0),
                        "groupID": int(spec.get("groupID") or 0),
                        "options": "",
                        "setPermissions": True,
                        "targetType": "directory",
                    }
                )
        return {node: mounts for node, mounts in per_node.items() if mounts}

    def _client_mounts(self, wf: Obj) -> list[Obj]:
        key = (wf["metadata"]["namespace"], wf["metadata"]["name"])
        return [c for c in self.informers.informer(CLIENT_MOUNT).list() if key in _workflow_of(c)]

    async def _pre_run(self, client: Client, wf: Obj) -> Outcome:
        ns, name = wf["metadata"]["namespace"], wf["metadata"]["name"]
        computes_obj = self.informers.informer(COMPUTES).get(ns, name)
        computes = [str(c.get("name")) for c in (computes_obj or {}).get("data") or [] if c.get("name")]
        wanted = self._mounts_for(wf, computes) if computes else {}
        if not computes and any(r["command"] in ("jobdw", "persistentdw") for r in self._requests(wf)):
            return _wait("waiting for the workload manager to list the compute nodes (Computes)")
        existing = {c["spec"]["node"]: c for c in self._client_mounts(wf)}
        for node, mounts in wanted.items():
            if node in existing:
                continue
            body: Obj = {
                "apiVersion": CLIENT_MOUNT.api_version(CLIENT_MOUNT.storage_version),
                "kind": CLIENT_MOUNT.kind,
                "metadata": {
                    "name": f"{name}-{node}",
                    "namespace": ns,
                    "finalizers": [COMPUTE_NODE_FINALIZER],
                },
                "spec": {"node": node, "desiredState": "mounted", "mounts": mounts},
            }
            ownership.adopt(body, {**wf, "kind": "Workflow"})
            existing[node] = await _create_or_get(client, CLIENT_MOUNT, body)
        return self._mount_outcome(existing.values(), "mounted")

    async def _post_run(self, client: Client, wf: Obj) -> Outcome:
        mounts = self._client_mounts(wf)
        for mount in mounts:
            if mount["spec"].get("desiredState") != "unmounted":
                await client.patch(
                    CLIENT_MOUNT,
                    mount["metadata"]["namespace"],
                    mount["metadata"]["name"],
                    {"spec": {"desiredState": "unmounted"}},
                )
                return _wait("unmounting")
        return self._mount_outcome(mounts, "unmounted")

    @staticmethod
    def _mount_outcome(mounts: Iterable[Obj], state: str) -> Outcome:
        waiting = []
        for mount in mounts:
            status = mount.get("status") or {}
            error = status.get("error") or {}
            text = error.get("userMessage") or error.get("debugMessage")
            if text:
                return _fail(f"compute node {mount['spec']['node']}: {text}")
            states = [m.get("state") for m in status.get("mounts") or []]
            if (
                not status.get("allReady")
                or any(s != state for s in states)
                or len(states) != len(mount["spec"]["mounts"])
            ):
                waiting.append(mount["spec"]["node"])
        return _wait(f"waiting for {', '.join(waiting)} to be {state}") if waiting else DONE

    # ---- Teardown --------------------------------------------------------------------------------

    async def _teardown(self, client: Client, wf: Obj) -> Outcome:
        ns = wf["metadata"]["namespace"]
        copying = [m for m in self._movements(wf).values() if not finished(m)]
        for movement in copying:
            if not (movement.get("spec") or {}).get("cancel"):
                await client.patch(
                    DATA_MOVEMENT, ns, movement["metadata"]["name"], {"spec": {"cancel": True}}
                )
        if copying:  # the storage goes once nothing copies into or out of it
            names = ", ".join(m["metadata"]["name"] for m in copying)
            return _wait(f"waiting for copies {names} to stop")
        remaining: list[str] = []
        mounted = False
        for mount in self._client_mounts(wf):
            remaining.append(f"ClientMount {mount['metadata']['name']}")
            mounted = mounted or self._mount_outcome([mount], "unmounted") != DONE
            await _delete(client, CLIENT_MOUNT, mount)
        if mounted:  # (hurry: no PostRun) the storage goes once nothing has it mounted
            return _wait("waiting for " + ", ".join(remaining) + " to be unmounted and deleted")
        for request in self._requests(wf):
            command = request["command"]
            if command == "jobdw":
                for alloc in self._buffer_allocations(wf, request):
                    remaining.append(f"{alloc['metadata']['name']} on {alloc['spec']['node']}")
                    await _delete(client, STORAGE_ALLOCATION, alloc)
            elif command == "persistentdw":
                await self._drop_consumer(client, wf, request["name"])
            elif command == "create_persistent":
                instance = self.informers.informer(PERSISTENT_STORAGE_INSTANCE).get(ns, request["name"])
                if instance is not None and (instance.get("status") or {}).get("state") != "Active":
                    remaining.extend(await self._destroy(client, instance))  # never finished: undo it
            elif command == "destroy_persistent":
                instance = self.informers.informer(PERSISTENT_STORAGE_INSTANCE).get(ns, request["name"])
                if instance is not None:
                    remaining.extend(await self._destroy(client, instance))
        if remaining:
            return _wait("waiting for the storage nodes to destroy " + ", ".join(remaining))
        return DONE

    async def _destroy(self, client: Client, instance: Obj) -> list[str]:
        ns, name = instance["metadata"]["namespace"], instance["metadata"]["name"]
        left = [
            f"{a['metadata']['name']} on {a['spec']['node']}"
            for a in self._allocations(ns, "PersistentStorageInstance", name)
        ]
        for alloc in self._allocations(ns, "PersistentStorageInstance", name):
            await _delete(client, STORAGE_ALLOCATION, alloc)
        if not left:
            await _delete(client, PERSISTENT_STORAGE_INSTANCE, instance)
            return []
        return left

    async def _drop_consumer(self, client: Client, wf: Obj, name: str) -> None:
        instance = await get_or_none(client, PERSISTENT_STORAGE_INSTANCE, wf["metadata"]["namespace"], name)
        if instance is None:
            return
        refs = instance["spec"].get("consumerReferences") or []
        kept = [
            r for r in refs if not (r.get("kind") == "Workflow" and r.get("name") == wf["metadata"]["name"])
        ]
        if kept != refs:
            instance["spec"]["consumerReferences"] = kept
            await client.update(PERSISTENT_STORAGE_INSTANCE, instance)


def _observe(movement: Obj) -> None:
    """Count a finished copy in the metrics."""
    status = movement.get("status") or {}
    direction = str((movement.get("spec") or {}).get("direction") or "in")
    metrics.DATA_MOVED_BYTES.labels(direction).inc(int(status.get("bytesDone") or 0))
    metrics.DATA_MOVED_FILES.labels(direction).inc(int(status.get("filesDone") or 0))
    seconds = status.get("seconds")
    if isinstance(seconds, int | float):
        metrics.DATA_MOVEMENT_SECONDS.labels(direction).observe(float(seconds))
    rate = status.get("rate")
    if isinstance(rate, int | float):
        metrics.DATA_MOVEMENT_RATE.labels(direction).observe(float(rate))


async def _create_or_get(client: Client, kind: Kind, body: Obj) -> Obj:
    try:
        return await client.create(kind, body)
    except errors.ApiError as exc:
        if exc.code != 409:
            raise
        m = body["metadata"]
        return await client.get(kind, m.get("namespace"), m["name"])


async def _delete(client: Client, kind: Kind, obj: Obj) -> None:
    m = obj["metadata"]
    if m.get("deletionTimestamp"):
        return
    try:
        await client.delete(kind, m.get("namespace"), m["name"], propagation_policy="Background")
    except errors.ApiError as exc:
        if exc.code != 404:
            raise
