"""What each burst_buffer.lua callback does, on behalf of Slurm (see docs/slurm-plugin.md).

Every operation takes the callback's form fields and returns the text the Lua hands back to Slurm, or
raises GatewayError whose message Slurm shows the user (sbatch's error line, the job's Reason and
SystemComment, scontrol's output). Waits are answered by the Workflow informer's watch, never by
polling; every wait is bounded when the API cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from slurmlink import jsonutil
from slurmlink.background import retrieve_exception
from slurmlink.burstbuffer import directives as bbd
from slurmlink.burstbuffer.names import BUFFER_COMMANDS, BUFFERS_ANNOTATION, placement_path
from slurmlink.client.base import Client
from slurmlink.resources.dws import directives as dwd
from slurmlink.resources.dws import ownership, states
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION
from slurmlink.resources.dws.servers import SERVERS
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Obj
from slurmlink.resources.meta import parse_time
from slurmlink.resources.sizes import approximate_size, format_size
from slurmlink.resources.storage.datamovement import DATA_MOVEMENT, endpoint_text
from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION
from slurmlink.slurm.commands import START_KEPT, SlurmCommandError, SlurmCommands
from slurmlink.slurm.gateway import script as scripts
from slurmlink.slurm.gateway.buffers import BufferView
from slurmlink.slurm.gateway.config import (
    JOB_RUN_ANNOTATION,
    ORIGIN_LABEL,
    ORIGIN_VALUE,
    WLM_ID,
    GatewayConfig,
)
from slurmlink.slurm.gateway.informer import Informer, WaitTimeout

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_DIGITS = re.compile(r"^[0-9]+\Z")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
#: How long job_process (which runs inside slurmctld) may wait for the first rules list.
_RULES_SYNC_WAIT = 2.0
#: How long paths (also inside slurmctld) may wait for its cache to show DataIn completed.
_PATHS_CATCH_UP = 1.0
#: How long pools (inside slurmctld, at its start) may wait for the first list of pools.
_POOLS_SYNC_WAIT = 1.0
#: Buffer commands whose storage the workload manager places, and those mounted on compute nodes.
PLACED = ("jobdw", "create_persistent")
MOUNTED = ("jobdw", "persistentdw")


class GatewayError(Exception):
    """A callback failed; ``message`` is what Slurm shows, ``status`` the HTTP status for the Lua."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


Fields = Mapping[str, str]


def workflow_name(job_id: str) -> str:
    return f"bb{job_id}"


def _job_id(fields: Fields) -> str:
    job_id = fields.get("job_id", "")
    if not _DIGITS.match(job_id):
        raise GatewayError(f"a numeric job_id is required, got {job_id!r}")
    return job_id


def _int_field(fields: Fields, key: str) -> int:
    value = fields.get(key, "")
    if not _DIGITS.match(value):
        raise GatewayError(f"a numeric {key} is required, got {value!r}")
    return int(value)


def driver_errors(workflow: Obj, state: str | None) -> list[str]:
    """``<driverID>: <error>`` for each driver entry in Error (of ``state``, or of every state)."""
    found = []
    for entry in (workflow.get("status") or {}).get("drivers") or []:
        if entry.get("status") != "Error":
            continue
        if state is not None and entry.get("watchState") != state:
            continue
        found.append(f"{entry.get('driverID', '?')}: {entry.get('error') or entry.get('message') or 'error'}")
    return found


def _transient_errors(workflow: Obj, state: str) -> list[str]:
    found = []
    for entry in (workflow.get("status") or {}).get("drivers") or []:
        if entry.get("watchState") == state and entry.get("status") == "TransientCondition":
            found.append(f"{entry.get('driverID', '?')}: {entry.get('error') or entry.get('message') or ''}")
    return found or [str((workflow.get("status") or {}).get("message") or "TransientCondition")]


class BurstBufferOps:
    """The gateway's operations; one instance serves every callback of every job."""

    def __init__(
        self,
        client: Client,
        config: GatewayConfig,
        workflows: Informer,
        rules: Informer,
        slurm: SlurmCommands,
        buffers: BufferView | None = None,
    ) -> None:
        self.client = client
        #: Pools and persistent buffers, for checking burst-buffer directives at submission.
        self.buffers = buffers
        self.config = config
        self.workflows = workflows
        self.rules = rules
        self.slurm = slurm
        #: Workflow creations started by job_process (Slurm 23.02+), by job id; teardown waits for them.
        self._background: dict[str, asyncio.Task[None]] = {}
        #: Compute lists being written since the job's paths call, by job id; pre_run takes them.
        self._computes: dict[str, asyncio.Task[None]] = {}
        self._rules: list[dwd.DirectiveRule] = []
        self._rules_key: tuple[tuple[Any, Any], ...] | None = None

    # ------------------------------------------------------------------ helpers

    async def _api(self, what: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run an API call, retrying while the API is unreachable, for at most ``api_timeout``."""
        deadline = time.monotonic() + self.config.api_timeout
        delay = 0.2
        while True:
            try:
                return await call()
            except ApiError as exc:
                if exc.code != 503 or time.monotonic() >= deadline:
                    if exc.code == 503:
                        raise GatewayError(
                            f"slurmlink API unreachable for {self.config.api_timeout:g} s while {what}: "
                            f"{exc.message}",
                            503,
                        ) from exc
                    raise
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
                delay = min(delay * 2, 2.0)

    async def _current(self, name: str) -> Obj | None:
        """The Workflow from the cache when it is live, else from the API; None if it does not exist."""
        if self.workflows.synced.is_set() and self.workflows.unreachable_since is None:
            return self.workflows.cache.get(name)
        try:
            return await self._api(
                f"reading workflow {name}", lambda: self.client.get(WORKFLOW, self.config.namespace, name)
            )
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise GatewayError(f"cannot read workflow {name}: {exc.message}", 500) from exc

    async def _patch(self, name: str, patch: dict[str, Any]) -> Obj:
        try:
            obj = await self._api(
                f"updating workflow {name}",
                lambda: self.client.patch(WORKFLOW, self.config.namespace, name, patch),
            )
        except ApiError as exc:
            raise GatewayError(f"cannot update workflow {name}: {exc.message}", exc.code) from exc
        self.workflows.put(obj)
        return obj

    def _check_api(self, what: str) -> None:
        down_for = self.workflows.unreachable_for()
        if down_for > self.config.api_timeout:
            raise GatewayError(
                f"slurmlink API unreachable for {down_for:.0f} s while {what}: {self.workflows.last_error}",
                503,
            )

    async def _wait(self, name: str, probe: Callable[[Obj | None], _T | None], what: str) -> _T:
        def checked(obj: Obj | None) -> _T | None:
            result = probe(obj)
            if result is None:
                self._check_api(what)
            return result

        try:
            return await self.workflows.wait_for(name, checked)
        except WaitTimeout:  # pragma: no cover - wait_for has no timeout here
            raise GatewayError(f"timed out {what}", 504) from None

    # -------------------------------------------------------------- state waits

    def _state_probe(self, name: str, target: str) -> Callable[[Obj | None], str | None]:
        """Probe: "" once ``target`` is completed (or passed); GatewayError on errors."""
        transient_since: list[float | None] = [None]
        grace = self.config.transient_grace

        def probe(obj: Obj | None) -> str | None:
            if obj is None:
                raise GatewayError(f"workflow {name} no longer exists", 410)
            if obj["metadata"].get("deletionTimestamp") and target != "Teardown":
                raise GatewayError(f"workflow {name} is being deleted", 410)
            desired = (obj.get("spec") or {}).get("desiredState", "")
            if desired == "Teardown" and target != "Teardown":
                raise GatewayError(f"workflow {name} moved to Teardown while waiting for {target}", 409)
            status = obj.get("status") or {}
            current, state_status = status.get("state", ""), status.get("status", "")
            if states.index(current) > states.index(target):
                return ""
            if current != target:
                transient_since[0] = None
                return None
            if state_status == "Completed":
                return ""
            if state_status == "Error":
                errors = driver_errors(obj, target) or [str(status.get("message") or "unknown error")]
                raise GatewayError("DWS driver error(s): " + "; ".join(errors), 500)
            if state_status == "TransientCondition":
                now = time.monotonic()
                if transient_since[0] is None:
                    transient_since[0] = now
                elif now - transient_since[0] >= grace:
                    raise GatewayError(
                        f"TransientCondition for {grace:g} s in {target}: "
                        + "; ".join(_transient_errors(obj, target)),
                        500,
                    )
            else:
                transient_since[0] = None
            return None

        return probe

    async def _wait_state(self, name: str, target: str) -> None:
        await self._wait(name, self._state_probe(name, target), f"waiting for {name} to complete {target}")

    async def _advance(self, name: str, target: str) -> None:
        """Move the Workflow to ``target`` (never backwards) and wait until the state is completed.

        States Slurm did not ask for are passed through in order first (DWS allows no skipping):
        burst_buffer/datawarp calls no pre_run for a job without ``#DW`` buffers, only post_run.
        """
        obj = await self._current(name)
        if obj is None:
            raise GatewayError(f"workflow {name} does not exist (was it torn down?)", 410)
        desired = (obj.get("spec") or {}).get("desiredState", "")
        if desired == "Teardown" and target != "Teardown":
            raise GatewayError(f"workflow {name} is being torn down; cannot move it to {target}", 409)
        if states.index(desired) < states.index(target):
            for step in states.STATES[states.index(desired) + 1 : states.index(target)]:
                await self._patch(name, {"spec": {"desiredState": step}})
                await self._wait_state(name, step)
            await self._patch(name, {"spec": {"desiredState": target}})
        await self._wait_state(name, target)

    async def _wait_gone(self, name: str) -> None:
        def gone(obj: Obj | None) -> bool | None:
            return True if obj is None else None

        try:
            await self.workflows.wait_for(name, gone, timeout=self.config.api_timeout)
        except WaitTimeout:
            raise GatewayError(
                f"workflow {name} was deleted but still exists after {self.config.api_timeout:g} s: "
                f"is the slurmlink workflow controller running?",
                504,
            ) from None

    async def _delete(self, name: str) -> None:
        try:
            await self._api(
                f"deleting workflow {name}", lambda: self.client.delete(WORKFLOW, self.config.namespace, name)
            )
        except ApiError as exc:
            if exc.code != 404:
                raise GatewayError(f"cannot delete workflow {name}: {exc.message}", exc.code) from exc
        await self._wait_gone(name)

    # ------------------------------------------------------------- directives

    def _directives(self, script_path: str) -> list[str]:
        try:
            found = scripts.extract_directives(scripts.read_script(script_path))
            scripts.check_safe(found)
        except scripts.ScriptError as exc:
            raise GatewayError(str(exc)) from exc
        return found

    async def _validate(self, found: list[str]) -> None:
        if not found:
            return
        if not self.rules.synced.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.rules.synced.wait(), _RULES_SYNC_WAIT)
        if not self.rules.synced.is_set():
            raise GatewayError(
                "slurmlink cannot check the #DW directives now because its API is unreachable "
                f"({self.rules.last_error or 'not connected yet'}); try again later",
                503,
            )
        try:
            dwd.check_directives(found, self._current_rules())
        except dwd.DirectiveError as exc:
            raise GatewayError(f"#DW directives rejected: {exc}") from exc

    def _current_rules(self) -> list[dwd.DirectiveRule]:
        """The DWDirectiveRules converted once per change, not once per sbatch (they rarely change)."""
        namespace = self.config.rules_namespace
        objects = [
            o for o in self.rules.cache.values() if o["metadata"].get("namespace", namespace) == namespace
        ]
        key = tuple((o["metadata"].get("name"), o["metadata"].get("resourceVersion")) for o in objects)
        if key != self._rules_key:
            if not objects:
                raise dwd.DirectiveError(f"unable to find ruleset in namespace: {namespace}")
            self._rules = dwd.rules_from_objects(objects)
            self._rules_key = key
        return self._rules

    @staticmethod
    def _run_key(job_id: str, script_path: str) -> str:
        """Identifies this run of the job: the id plus when slurmctld wrote the job's script."""
        try:
            return f"{job_id}/{os.stat(script_path).st_ctime_ns}"
        except OSError:
            return ""

    def _is_stale(self, obj: Obj, run_key: str, script_path: str) -> bool:
        recorded = (obj["metadata"].get("annotations") or {}).get(JOB_RUN_ANNOTATION, "")
        if recorded and run_key:
            return recorded != run_key
        # Not ours (no annotation): stale only if created clearly before this job was submitted.
        try:
            submitted = os.stat(script_path).st_ctime
            created = parse_time(obj["metadata"].get("creationTimestamp", "")).timestamp()
        except (OSError, ValueError):
            return False
        return created < submitted - 5

    def _new_workflow(self, job_id: str, uid: int, gid: int, found: list[str], run_key: str) -> Obj:
        metadata: dict[str, Any] = {
            "name": workflow_name(job_id),
            "namespace": self.config.namespace,
            "labels": {ORIGIN_LABEL: ORIGIN_VALUE},
        }
        if run_key:
            metadata["annotations"] = {JOB_RUN_ANNOTATION: run_key}
        return {
            "apiVersion": f"{GROUP}/{STORAGE_VERSION}",
            "kind": "Workflow",
            "metadata": metadata,
            "spec": {
                "desiredState": "Proposal",
                "dwDirectives": found,
                "wlmID": WLM_ID,
                "jobID": job_id,
                "userID": uid,
                "groupID": gid,
            },
        }

    async def _ensure_workflow(self, job_id: str, uid: int, gid: int, script_path: str) -> None:
        """Create the job's Workflow unless it exists; replace one left over from an earlier job."""
        name = workflow_name(job_id)
        found = self._directives(script_path)
        run_key = self._run_key(job_id, script_path)
        obj = await self._current(name)
        if obj is not None and self._is_stale(obj, run_key, script_path):
            log.warning("workflow %s belongs to an earlier job with the same id; replacing it", name)
            await self._delete(name)
            obj = None
        elif obj is not None and obj["metadata"].get("deletionTimestamp"):
            await self._wait_gone(name)
            obj = None
        if obj is not None:
            return
        body = self._new_workflow(job_id, uid, gid, found, run_key)
        try:
            created = await self._api(f"creating workflow {name}", lambda: self.client.create(WORKFLOW, body))
        except ApiError as exc:
            if exc.code == 409:
                return  # created concurrently (job_process's background create)
            raise GatewayError(f"cannot create workflow {name}: {exc.message}", exc.code) from exc
        self.workflows.put(created)

    # -------------------------------------------------------------- operations

    async def job_process(self, fields: Fields) -> str:
        script_path = fields.get("script", "")
        job_id = fields.get("job_id") or scripts.job_id_from_script_path(script_path) or ""
        if not _DIGITS.match(job_id):
            raise GatewayError(f"cannot tell the job id from the script path {script_path!r}")
        found = self._directives(script_path)
        await self._validate(found)
        uid_text = fields.get("uid", "")
        await self._check_buffers(found, int(uid_text) if _DIGITS.match(uid_text) else None)
        if fields.get("uid") and fields.get("gid"):
            uid, gid = _int_field(fields, "uid"), _int_field(fields, "gid")
            task = asyncio.create_task(self._create_later(job_id, uid, gid, script_path))
            self._background[job_id] = task
            task.add_done_callback(lambda _t: self._background.pop(job_id, None))
        return ""

    async def _check_buffers(self, found: list[str], uid: int | None) -> None:
        """Burst-buffer directives against what the site has (types, pools, persistent buffers)."""
        if self.buffers is None or not found:
            return
        if not any(_command(d) in BUFFER_COMMANDS for d in found):
            return
        if not await self.buffers.wait_synced(_RULES_SYNC_WAIT):
            raise GatewayError(
                "slurmlink cannot check the burst-buffer directives now because its API is unreachable; "
                "try again later",
                503,
            )
        try:
            bbd.plan(found, self.buffers.site(), user_id=uid)
        except bbd.BufferRequestError as exc:
            raise GatewayError(str(exc)) from exc

    async def _create_later(self, job_id: str, uid: int, gid: int, script_path: str) -> None:
        try:
            await self._ensure_workflow(job_id, uid, gid, script_path)
        except Exception as exc:  # setup creates it (and reports errors) if this fails
            log.warning("creating workflow for job %s at submission failed: %s", job_id, exc)

    async def pools(self, fields: Fields) -> str:
        """Every StoragePool, so Slurm accounts capacity and holds jobs (BurstBufferResources) until
        there is room. ``free`` is what placement has not handed out: Slurm counts the larger of
        that and its own jobs' sizes as used. Empty (no pools) until the pools have been listed."""
        if self.buffers is None or not await self.buffers.wait_synced(_POOLS_SYNC_WAIT):
            return ""
        pools = []
        for pool in sorted(self.buffers.pools.list(), key=lambda p: p["metadata"]["name"]):
            status = pool.get("status") or {}
            granularity = status.get("granularity")
            if not isinstance(granularity, int) or granularity < 1:
                continue
            pools.append(
                {
                    "id": pool["metadata"]["name"],
                    "granularity": granularity,
                    "quantity": int(status.get("totalGranules") or 0),
                    "free": int(status.get("freeGranules") or 0),
                }
            )
        return jsonutil.dumps_str({"pools": pools}) if pools else ""

    async def setup(self, fields: Fields) -> str:
        job_id = _job_id(fields)
        uid, gid = _int_field(fields, "uid"), _int_field(fields, "gid")
        name = workflow_name(job_id)
        await self._ensure_workflow(job_id, uid, gid, fields.get("script", ""))
        await self._wait_state(name, "Proposal")
        await self._place(name, job_id)
        await self._advance(name, "Setup")
        return ""

    def state_operation(self, target: str) -> Callable[[Fields], Awaitable[str]]:
        async def operation(fields: Fields) -> str:
            job_id = _job_id(fields)
            if target == "PreRun":
                await self._computes_filled(job_id)
            await self._advance(workflow_name(job_id), target)
            return ""

        return operation

    def prepare_pre_run(self, job_id: str) -> None:
        """Start writing the job's compute nodes into its Computes, ahead of its pre_run.

        slurmctld calls paths once it has given the job its nodes, and pre_run right after; paths
        starts this once it has its answer, so the ``squeue`` and the write overlap the start of
        pre_run instead of preceding its mounts. The job is read once for this and for the bank's
        prolog, which slurmctld runs at the same time (:meth:`SlurmCommands.note_start`)."""
        self.slurm.note_start(job_id)
        earlier = self._computes.pop(job_id, None)  # a start that never reached pre_run (requeued)
        if earlier is not None:
            earlier.cancel()
        task = asyncio.create_task(self._fill_computes(workflow_name(job_id), job_id))
        task.add_done_callback(retrieve_exception)
        self._computes[job_id] = task

        def forget() -> None:  # a pre_run that never came (Slurm killed the job before it)
            if self._computes.get(job_id) is task:
                del self._computes[job_id]

        asyncio.get_running_loop().call_later(START_KEPT, forget)

    async def _computes_filled(self, job_id: str) -> None:
        """The job's Computes written: by the task paths started, or now if there is none or it failed."""
        started = self._computes.pop(job_id, None)
        if started is not None:
            try:
                await started
                return
            except Exception as exc:  # written again below, where a failure is the callback's error
                log.info("job %s: writing its compute nodes ahead of pre_run failed (%s); again", job_id, exc)
        await self._fill_computes(workflow_name(job_id), job_id)

    def test_operation(self, target: str) -> Callable[[Fields], Awaitable[str]]:
        """Slurm 24.05's polling form: "BUSY" until ``target`` is completed."""

        async def operation(fields: Fields) -> str:
            name = workflow_name(_job_id(fields))
            obj = await self._current(name)
            result = self._state_probe(name, target)(obj)
            return "BUSY" if result is None else ""

        return operation

    # ------------------------------------------------ burst buffers (acting as the WLM)

    def _buffers_of(self, obj: Obj | None) -> list[dict[str, Any]]:
        raw = ((obj or {}).get("metadata") or {}).get("annotations", {}).get(BUFFERS_ANNOTATION)
        try:
            return list(jsonutil.loads(raw)) if raw else []
        except ValueError:
            return []

    async def _place(self, name: str, job_id: str, computes: int | None = None) -> None:
        """Place the storage of each buffer the driver broke down, as the workload manager does.

        Capacity that is not free now (other jobs hold it) is waited for, up to ``placement_wait``:
        Slurm's own pool accounting normally keeps such jobs pending before they get here. ``computes``
        is the node count of a Workflow with no Slurm job behind it (a DataWarp create_persistent).
        """
        buffers = [b for b in self._buffers_of(await self._current(name)) if b.get("command") in PLACED]
        if not buffers:
            return
        count = computes or 1
        if computes is None and any(b.get("perCompute") for b in buffers):
            try:
                count = (await self.slurm.job_nodes(job_id)).count
            except SlurmCommandError as exc:
                raise GatewayError(f"cannot tell how many nodes job {job_id} has: {exc}", 500) from exc
        deadline = time.monotonic() + self.config.placement_wait
        for buffer in buffers:
            path = placement_path(self.config.namespace, str(buffer["servers"]))
            delay = 0.5
            while True:
                try:
                    await self._api(
                        f"placing {buffer['name']}",
                        lambda path=path: self.client.call("POST", path, {"computes": count}),  # type: ignore[misc]
                    )
                    break
                except ApiError as exc:
                    if exc.code != 409 or time.monotonic() >= deadline:
                        raise GatewayError(f"burst buffer {buffer['name']}: {exc.message}", exc.code) from exc
                    log.info("job %s: %s; waiting", job_id, exc.message)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    async def _fill_computes(self, name: str, job_id: str) -> None:
        """Write the job's nodes into its Computes (the driver mounts buffers there in PreRun)."""
        obj = await self._current(name)
        if not any(b.get("command") in MOUNTED for b in self._buffers_of(obj)):
            return
        try:
            nodes = (await self.slurm.job_nodes(job_id)).names
        except SlurmCommandError as exc:
            raise GatewayError(f"cannot tell the nodes of job {job_id}: {exc}", 500) from exc
        if not nodes:
            raise GatewayError(f"slurmctld shows no nodes for job {job_id}, which is about to run", 500)
        data = [{"name": node} for node in nodes]
        try:
            await self._api(
                f"listing the compute nodes of {name}",
                lambda: self.client.patch(COMPUTES, self.config.namespace, name, {"data": data}),
            )
        except ApiError as exc:
            raise GatewayError(f"cannot write the compute nodes of {name}: {exc.message}", exc.code) from exc

    async def real_size(self, fields: Fields) -> str:
        """The bytes the job's buffers really take (whole granules, every compute node's share), which
        Slurm then charges instead of the ``capacity=`` it parsed; empty for jobs without buffers."""
        total, _count = await self.placed_bytes(await self._current(workflow_name(_job_id(fields))))
        return str(total) if total else ""

    async def placed_bytes(self, obj: Obj | None, known: Mapping[str, Obj] | None = None) -> tuple[int, int]:
        """Bytes and allocations placed for a Workflow's buffers (from its Servers, read one by one
        unless ``known`` holds the namespace's Servers by name)."""
        total = allocations = 0
        name = (obj or {}).get("metadata", {}).get("name", "")
        for buffer in self._buffers_of(obj):
            if buffer.get("command") not in PLACED:
                continue
            if known is not None:
                if str(buffer["servers"]) not in known:
                    continue
                servers = known[str(buffer["servers"])]
            else:
                try:
                    servers = await self._api(
                        f"reading the storage of {name}",
                        lambda b=buffer: self.client.get(SERVERS, self.config.namespace, str(b["servers"])),  # type: ignore[misc]
                    )
                except ApiError as exc:
                    if exc.code == 404:
                        continue
                    raise GatewayError(f"cannot read the storage of {name}: {exc.message}", exc.code) from exc
            for aset in (servers.get("spec") or {}).get("allocationSets") or []:
                count = sum(int(s.get("allocationCount") or 0) for s in aset.get("storage") or [])
                total += int(aset.get("allocationSize") or 0) * count
                allocations += count
        return total, allocations

    async def paths(self, fields: Fields) -> str:
        """Environment for the job: the Workflow's name and namespace plus its ``status.env``; and
        the start of its pre_run's work (:meth:`prepare_pre_run`), as slurmctld calls pre_run next."""
        job_id = _job_id(fields)
        answer = await self._environment(job_id, fields)
        self.prepare_pre_run(job_id)
        return answer

    async def _environment(self, job_id: str, fields: Fields) -> str:
        name = workflow_name(job_id)
        env = {"DW_WORKFLOW_NAME": name, "DW_WORKFLOW_NAMESPACE": self.config.namespace}
        obj = await self._staged_in(name)
        for key, value in ((obj or {}).get("status") or {}).get("env", {}).items():
            text = str(value)
            if not _ENV_KEY.match(str(key)) or "\n" in text or "\0" in text:
                log.warning("workflow %s: skipping environment variable %r (bad name or value)", name, key)
                continue
            env[str(key)] = text
        if fields.get("names") == "datawarp":
            env.update(datawarp_persistent_names(obj, env))
        return "".join(f"{key}={value}\n" for key, value in env.items())

    async def _staged_in(self, name: str) -> Obj | None:
        """The cached Workflow once it shows DataIn completed, as Slurm calls paths only after data_in.

        This cache may trail the one that saw DataIn complete (the front's watch against the worker's) by
        a watch event, and the event completing DataIn may be the one that sets ``status.env``; a short
        bounded wait keeps that variable from being lost, without holding slurmctld for long.
        """

        def staged_in(obj: Obj | None) -> Obj | None:
            if obj is None:
                return None
            status = obj.get("status") or {}
            state = status.get("state", "")
            if state not in states.STATES or states.index(state) > states.index("DataIn"):
                return obj
            return obj if state == "DataIn" and status.get("status") == "Completed" else None

        obj = self.workflows.cache.get(name)
        if obj is None or staged_in(obj) is not None:
            return obj
        try:
            return await self.workflows.wait_for(name, staged_in, timeout=_PATHS_CATCH_UP)
        except WaitTimeout:
            return self.workflows.cache.get(name)

    async def teardown(self, fields: Fields) -> str:
        job_id = _job_id(fields)
        hurry = fields.get("hurry") == "true"
        name = workflow_name(job_id)
        early = self._computes.pop(job_id, None)  # the job ended before its pre_run
        if early is not None:
            early.cancel()
        pending = self._background.get(job_id)
        if pending is not None:  # a creation still in flight would otherwise land after this teardown
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(pending), self.config.api_timeout)
        obj = await self._current(name)
        if obj is None:
            log.info("teardown of job %s: workflow %s already removed", job_id, name)
            return ""
        had_errors = bool(driver_errors(obj, None))
        failure: GatewayError | None = None
        if not obj["metadata"].get("deletionTimestamp"):
            try:
                spec = obj.get("spec") or {}
                patch: dict[str, Any] = {}
                if spec.get("desiredState") != "Teardown":
                    patch["desiredState"] = "Teardown"
                if hurry and not spec.get("hurry"):
                    patch["hurry"] = True
                if patch:
                    await self._patch(name, {"spec": patch})
                await self._wait_state(name, "Teardown")
            except GatewayError as exc:
                failure = exc
            latest = self.workflows.cache.get(name)
            had_errors = had_errors or bool(latest and driver_errors(latest, None))
        await self._delete(name)
        if had_errors:
            await self._cancel_hurry(job_id)
        if failure is not None:
            raise GatewayError(f"teardown of {name}: {failure.message} (the workflow was deleted)", 500)
        return ""

    async def _cancel_hurry(self, job_id: str) -> None:
        """After a driver error: end a job that has not run yet as CANCELLED (as upstream's plugin)."""
        try:
            result = await self.slurm.scancel_hurry(job_id)
        except Exception as exc:
            log.warning("scancel --hurry %s failed: %s", job_id, exc)
            return
        if result.returncode != 0:
            log.info("scancel --hurry %s: %s", job_id, (result.stderr or result.stdout).strip())

    async def status(self, fields: Fields) -> str:
        words = fields.get("args", "").split()
        if len(words) == 2 and words[0] == "workflow":
            if not _DIGITS.match(words[1]):
                raise GatewayError("A job ID must contain only digits.")
            name = workflow_name(words[1])
            obj = await self._current(name)
            if obj is None:
                raise GatewayError(f"workflow {name} not found", 404)
            status = obj.get("status") or {}
            return (
                f"desiredState={(obj.get('spec') or {}).get('desiredState', '')} "
                f"currentState={status.get('state', '')} status={status.get('status', '')}"
            )
        if words and words[0] == "workflows" and len(words) <= 2:
            return self._workflow_table(words[1] if len(words) == 2 else None, fields.get("uid"))
        if words == ["pools"]:
            return self._pool_table()
        if words == ["buffers"]:
            return await self._buffer_table()
        if len(words) == 2 and words[0] == "movement":
            if not _DIGITS.match(words[1]):
                raise GatewayError("A job ID must contain only digits.")
            return await self._movement_table(words[1], fields.get("uid"))
        raise GatewayError(
            "Usage: scontrol show bbstat workflow <job-id> | scontrol show bbstat workflows [uid=<uid>] | "
            "scontrol show bbstat pools | scontrol show bbstat buffers | "
            "scontrol show bbstat movement <job-id>"
        )

    async def _movement_table(self, job_id: str, caller_uid: str | None) -> str:
        """The job's stage-in and stage-out copies, one line each, with their progress."""
        name = workflow_name(job_id)
        obj = self.workflows.cache.get(name) or await self._current(name)
        if obj is None:
            raise GatewayError(f"job {job_id} has no burst-buffer workflow", 404)
        owner = str((obj.get("spec") or {}).get("userID", ""))
        if caller_uid not in (None, "", "0", owner):
            raise GatewayError(f"job {job_id} belongs to another user", 403)
        try:
            movements, _ = await self._api(
                "listing data movements",
                lambda: self.client.list(
                    DATA_MOVEMENT, self.config.namespace, f"{ownership.WORKFLOW_NAME_LABEL}={name}"
                ),
            )
        except ApiError as exc:
            raise GatewayError(f"cannot list the copies of job {job_id}: {exc.message}", exc.code) from exc
        rows = [
            ("COPY", "DIR", "NODE", "STATE", "FILES", "BYTES", "RATE", "SOURCE", "DESTINATION", "MESSAGE")
        ]
        for movement in sorted(movements, key=lambda m: _copy_sort_key(m["metadata"]["name"])):
            spec, status = movement.get("spec") or {}, movement.get("status") or {}
            state = str(status.get("state") or "Pending")
            if status.get("status"):
                state = f"{state}/{status['status']}"
            rows.append(
                (
                    movement["metadata"]["name"],
                    str(spec.get("direction", "")),
                    str(spec.get("node", "")),
                    state,
                    _of(status.get("filesDone"), status.get("filesTotal"), str),
                    _of(status.get("bytesDone"), status.get("bytesTotal"), approximate_size),
                    f"{approximate_size(status['rate'])}/s"
                    if isinstance(status.get("rate"), int | float)
                    else "-",
                    endpoint_text(spec.get("source")),
                    endpoint_text(spec.get("destination")),
                    " ".join(str(status.get("message") or "").split()) or "-",
                )
            )
        return _table(rows, "(no copies: the job has no copy_in, copy_out, stage_in or stage_out)")

    def _pool_table(self) -> str:
        rows = [("POOL", "TYPES", "GRANULARITY", "TOTAL", "FREE", "NODES", "USABLE")]
        for pool in sorted(
            self.buffers.pools.list() if self.buffers else [], key=lambda p: p["metadata"]["name"]
        ):
            spec, status = pool.get("spec") or {}, pool.get("status") or {}
            nodes = status.get("nodes") or []
            usable = sum(1 for n in nodes if n.get("status") == "Ready")
            rows.append(
                (
                    pool["metadata"]["name"],
                    ",".join(spec.get("fileSystemTypes") or []),
                    _size(status.get("granularity")),
                    _size(status.get("totalBytes")),
                    _size(status.get("freeBytes")),
                    str(len(nodes)),
                    str(usable),
                )
            )
        return _table(rows, "(no pools)")

    async def persistent_sizes(self) -> dict[str, tuple[int, int]]:
        """Bytes and allocations of each persistent buffer, from the StorageAllocations it owns."""
        try:
            allocations, _ = await self._api(
                "listing storage allocations",
                lambda: self.client.list(STORAGE_ALLOCATION, self.config.namespace),
            )
        except ApiError as exc:
            raise GatewayError(f"cannot list the buffers: {exc.message}", exc.code) from exc
        sizes: dict[str, tuple[int, int]] = {}
        for alloc in allocations:
            for ref in alloc["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == "PersistentStorageInstance":
                    total, count = sizes.get(ref["name"], (0, 0))
                    sizes[ref["name"]] = (total + int(alloc["spec"].get("capacity") or 0), count + 1)
        return sizes

    async def _buffer_table(self) -> str:
        """Persistent buffers: name, type, size, owner, age, state, the jobs using them."""
        rows = [("NAME", "TYPE", "SIZE", "OWNER", "AGE", "STATE", "USED BY")]
        if self.buffers is None:
            return _table(rows, "(no persistent buffers)")
        sizes = {name: size for name, (size, _count) in (await self.persistent_sizes()).items()}
        now = time.time()
        for psi in sorted(
            self.buffers.instances.list(self.config.namespace), key=lambda p: p["metadata"]["name"]
        ):
            spec, status = psi.get("spec") or {}, psi.get("status") or {}
            users = [str(r.get("name", "")) for r in spec.get("consumerReferences") or []]
            created = psi["metadata"].get("creationTimestamp", "")
            try:
                age = _age(now - parse_time(created).timestamp())
            except ValueError:
                age = "?"
            rows.append(
                (
                    psi["metadata"]["name"],
                    str(spec.get("fsType", "")),
                    _size(sizes.get(psi["metadata"]["name"])),
                    _owner(spec.get("userID")),
                    age,
                    str(status.get("state") or spec.get("state") or ""),
                    ",".join(u[2:] if u.startswith("bb") else u for u in users) or "-",
                )
            )
        return _table(rows, "(no persistent buffers)")

    def _workflow_table(self, selector: str | None, caller_uid: str | None) -> str:
        uid: str | None = caller_uid
        if selector is not None:
            key, _, value = selector.partition("=")
            if key != "uid" or not _DIGITS.match(value):
                raise GatewayError("Usage: scontrol show bbstat workflows [uid=<uid>]")
            uid = value
        rows = [("JOBID", "WORKFLOW", "UID", "DESIRED", "STATE", "STATUS", "READY")]
        objs = sorted(self.workflows.cache.values(), key=lambda o: _job_sort_key(o["metadata"]["name"]))
        for obj in objs:
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            if uid is not None and str(spec.get("userID", "")) != uid:
                continue
            rows.append(
                (
                    str(spec.get("jobID", "")),
                    obj["metadata"]["name"],
                    str(spec.get("userID", "")),
                    str(spec.get("desiredState", "")),
                    str(status.get("state", "")),
                    str(status.get("status", "")),
                    "true" if status.get("ready") else "false",
                )
            )
        return _table(rows, "(no workflows)")

    async def aclose(self) -> None:
        tasks = [*self._background.values(), *self._computes.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def datawarp_persistent_names(obj: Obj | None, env: Mapping[str, str]) -> dict[str, str]:
    """``DW_PERSISTENT_STRIPED_<name>`` for each ``persistentdw`` of the Workflow that has no such name.

    A job with only ``persistentdw`` lines gets NNF's names from the driver; under Slurm's
    burst_buffer/datawarp its users expect DataWarp's for the same paths.
    """
    added: dict[str, str] = {}
    for directive in ((obj or {}).get("spec") or {}).get("dwDirectives") or []:
        try:
            command, args = dwd.parse_directive(directive)
        except dwd.DirectiveError:
            continue
        name = args.get("name")
        if command != "persistentdw" or not name:
            continue
        part = name.replace("-", "_")
        path = env.get(f"DW_PERSISTENT_{part}")
        if path is not None and f"DW_PERSISTENT_STRIPED_{part}" not in env:
            added[f"DW_PERSISTENT_STRIPED_{part}"] = path
    return added


def _table(rows: Sequence[tuple[str, ...]], empty: str) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append(empty)
    return "\n".join(lines) + "\n"


def _of(done: object, total: object, fmt: Callable[[Any], str]) -> str:
    if not isinstance(done, int):
        return "-"
    return f"{fmt(done)}/{fmt(total)}" if isinstance(total, int) else fmt(done)


def _copy_sort_key(name: str) -> tuple[int, ...]:
    """``bb12-3-1`` sorts by directive, then part."""
    return tuple(int(p) if p.isdigit() else 0 for p in name.split("-")[1:])


def _size(value: object) -> str:
    return format_size(value) if isinstance(value, int) and not isinstance(value, bool) else "-"


def _owner(uid: object) -> str:
    if not isinstance(uid, int):
        return "?"
    try:
        return f"{pwd.getpwuid(uid).pw_name}({uid})"
    except KeyError:
        return str(uid)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _command(directive: str) -> str:
    try:
        return dwd.parse_directive(directive)[0]
    except dwd.DirectiveError:
        return ""


def _job_sort_key(name: str) -> tuple[int, str]:
    digits = name[2:]
    return (int(digits), name) if digits.isdigit() else (1 << 62, name)
