"""Gateway operations for Slurm's ``burst_buffer/datawarp`` plugin (``slurmlink dw-wlm-cli``).

The per-job functions of ``dw_wlm_cli`` map onto the operations the Lua path uses (setup, data_in, ...).
What DataWarp has and the Lua path does not is here: the session listing Slurm reconciles its own
records with (``sessions``), and persistent buffers made or destroyed without a job of their own
(Slurm's ``#BB create_persistent`` / ``#BB destroy_persistent`` call ``create_persistent`` and
``teardown --token <name>``). Those run a Workflow of their own (``bbp-<name>`` / ``bbd-<name>``,
labelled so the orphan sweeper, which only knows job Workflows, leaves them alone) through the same
states, placement and driver as a job's ``#DW create_persistent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pwd
import re
import zlib
from typing import Any

from slurmlink import jsonutil
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION
from slurmlink.resources.dws.servers import SERVERS
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Obj
from slurmlink.resources.meta import parse_time
from slurmlink.slurm.gateway.config import ORIGIN_LABEL, WLM_ID
from slurmlink.slurm.gateway.operations import BurstBufferOps, Fields, GatewayError

log = logging.getLogger(__name__)

#: ``origin`` label of the Workflows made here: not job Workflows, so the sweeper skips them.
DATAWARP_ORIGIN = "dw_wlm_cli"
_NAME = re.compile(r"^[a-z][a-z0-9-]{1,52}\Z")
_POOL = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?\Z")
_DIGITS = re.compile(r"^[0-9]+\Z")
_JOB_WORKFLOW = re.compile(r"^bb([0-9]+)\Z")
#: Persistent sessions get ids in the upper half of uint32, away from job ids (Slurm's ids are uint32).
_PERSISTENT_ID_BIT = 1 << 31


def persistent_session_id(uid: str) -> int:
    """A stable numeric session id for a persistent buffer (Slurm matches instances to sessions by it)."""
    return _PERSISTENT_ID_BIT | (zlib.crc32(uid.encode()) & (_PERSISTENT_ID_BIT - 1))


def _created(obj: Obj) -> int:
    try:
        return int(parse_time(obj["metadata"].get("creationTimestamp", "")).timestamp())
    except ValueError:
        return 0


def _group_of(uid: int) -> int:
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid).pw_gid
    return uid


class DataWarpOps:
    """``sessions``, ``create_persistent`` and ``destroy_persistent``, on top of the gateway's operations."""

    def __init__(self, ops: BurstBufferOps) -> None:
        self.ops = ops

    # ------------------------------------------------------------------ sessions

    async def sessions(self, fields: Fields) -> str:
        """Every job and persistent buffer as a DataWarp session with its one instance, JSON.

        ``{"sessions": [{"id", "token", "owner", "created", "bytes", "nodes"}]}``: jobs (token = job id)
        from the Workflows, persistent buffers (token = name) from the PersistentStorageInstances. Slurm
        forgets persistent buffers it is not shown, and tears down job sessions whose job it does not know.
        """
        ops = self.ops
        # A partial list would make Slurm drop the buffers left out: better no list (an error) at all.
        synced = ops.buffers is not None and await ops.buffers.wait_synced(2.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ops.workflows.synced.wait(), 2.0)
        if not synced or not ops.workflows.synced.is_set():
            raise GatewayError("slurmlink cannot list the buffers now: its API is unreachable", 503)
        try:
            listed, _ = await ops._api(
                "listing servers", lambda: ops.client.list(SERVERS, ops.config.namespace)
            )
        except ApiError as exc:
            raise GatewayError(f"cannot list the buffers' storage: {exc.message}", exc.code) from exc
        servers = {o["metadata"]["name"]: o for o in listed}
        found: list[dict[str, Any]] = []
        for name, obj in sorted(ops.workflows.cache.items()):
            match = _JOB_WORKFLOW.match(name)
            if match is None or obj["metadata"].get("deletionTimestamp"):
                continue
            spec = obj.get("spec") or {}
            total, count = await ops.placed_bytes(obj, servers)
            found.append(
                {
                    "id": int(match[1]),
                    "token": match[1],
                    "owner": int(spec.get("userID") or 0),
                    "created": _created(obj),
                    "bytes": total,
                    "nodes": count,
                }
            )
        if ops.buffers is not None:
            sizes = await self.ops.persistent_sizes()
            for psi in ops.buffers.instances.list(ops.config.namespace):
                spec = psi.get("spec") or {}
                name = str(spec.get("name") or psi["metadata"]["name"])
                total, count = sizes.get(psi["metadata"]["name"], (0, 0))
                found.append(
                    {
                        "id": persistent_session_id(str(psi["metadata"].get("uid") or name)),
                        "token": name,
                        "owner": int(spec.get("userID") or 0),
                        "created": _created(psi),
                        "bytes": total,
                        "nodes": count,
                    }
                )
        return jsonutil.dumps_str({"sessions": found})

    # ----------------------------------------------------- persistent buffers

    async def create_persistent(self, fields: Fields) -> str:
        """Make persistent buffer ``name`` of ``size`` bytes in ``pool`` for ``uid``; "" when it exists.

        The request is checked like a job's ``#DW create_persistent`` (pools, types, sizes, name taken),
        then a Workflow of its own is taken through Proposal, placement and Setup, and removed again:
        the buffer (its PersistentStorageInstance and storage) outlives it.
        """
        name = _checked(fields, "name", _NAME, "a buffer name of lower-case letters, digits and '-'")
        uid = int(_checked(fields, "uid", _DIGITS, "a numeric user id"))
        size = _checked(fields, "size", _DIGITS, "a size in bytes")
        pool = _checked(fields, "pool", _POOL, "a pool name")
        kind = fields.get("type") or "scratch"
        if kind == "cache":
            raise GatewayError("type=cache (DataWarp cache mode) is not supported: use type=scratch")
        if not _NAME.match(kind):
            raise GatewayError(f"type={kind} is not a burst-buffer type; use type=scratch")
        access = fields.get("access") or "striped"
        if access != "striped":
            raise GatewayError(
                f"access={access}: persistent buffers are striped (one file system for every job that "
                "uses it); use access=striped"
            )
        ops = self.ops
        if ops.buffers is not None and name in {
            str((p.get("spec") or {}).get("name") or p["metadata"]["name"])
            for p in ops.buffers.instances.list(ops.config.namespace)
        }:
            log.info("persistent buffer %s exists already", name)
            return ""
        directive = f"#DW create_persistent type={kind} capacity={size} name={name} pool={pool}"
        await ops._validate([directive])
        await ops._check_buffers([directive], uid)
        workflow = f"bbp-{name}"
        await self._start(workflow, f"create-{name}", uid, directive)
        try:
            await ops._wait_state(workflow, "Proposal")
            await ops._place(workflow, "", computes=1)
            await ops._advance(workflow, "Setup")
        except GatewayError as exc:
            await self._finish(workflow, hurry=True, failed=exc)
            raise  # pragma: no cover - _finish raises
        await self._finish(workflow, hurry=False)
        return ""

    async def destroy_persistent(self, fields: Fields) -> str:
        """Destroy persistent buffer ``name`` (``hurry``: skip waiting for stage-out); "" if it is gone.

        Slurm has checked the job's user may destroy it; the Workflow acts as the buffer's owner.
        """
        name = _checked(fields, "name", _NAME, "a buffer name")
        ops = self.ops
        instance = None
        if ops.buffers is not None and await ops.buffers.wait_synced(2.0):
            for psi in ops.buffers.instances.list(ops.config.namespace):
                if str((psi.get("spec") or {}).get("name") or psi["metadata"]["name"]) == name:
                    instance = psi
        if instance is None:
            log.info("persistent buffer %s is already gone", name)
            return ""
        uid = int((instance.get("spec") or {}).get("userID") or 0)
        directive = f"#DW destroy_persistent name={name}"
        await ops._check_buffers([directive], uid)
        workflow = f"bbd-{name}"
        await self._start(workflow, f"destroy-{name}", uid, directive)
        try:
            await ops._wait_state(workflow, "Proposal")
        except GatewayError as exc:
            await self._finish(workflow, hurry=True, failed=exc)
        await self._finish(workflow, hurry=fields.get("hurry") == "true")
        return ""

    async def _start(self, workflow: str, job_ref: str, uid: int, directive: str) -> None:
        """Create the Workflow (one left by an interrupted earlier call is reused)."""
        ops = self.ops
        if await ops._current(workflow) is not None:
            return
        body: Obj = {
            "apiVersion": f"{GROUP}/{STORAGE_VERSION}",
            "kind": "Workflow",
            "metadata": {
                "name": workflow,
                "namespace": ops.config.namespace,
                "labels": {ORIGIN_LABEL: DATAWARP_ORIGIN},
            },
            "spec": {
                "desiredState": "Proposal",
                "dwDirectives": [directive],
                "wlmID": WLM_ID,
                "jobID": job_ref,
                "userID": uid,
                "groupID": _group_of(uid),
            },
        }
        try:
            created = await ops._api(
                f"creating workflow {workflow}", lambda: ops.client.create(WORKFLOW, body)
            )
        except ApiError as exc:
            if exc.code == 409:
                return
            raise GatewayError(f"cannot create workflow {workflow}: {exc.message}", exc.code) from exc
        ops.workflows.put(created)

    async def _finish(self, workflow: str, *, hurry: bool, failed: GatewayError | None = None) -> None:
        """Move the Workflow to Teardown, wait, delete it; raise ``failed`` (or a teardown error) after."""
        ops = self.ops
        obj = await ops._current(workflow)
        problem = failed
        if obj is not None and not obj["metadata"].get("deletionTimestamp"):
            patch: dict[str, Any] = {"desiredState": "Teardown"}
            if hurry:
                patch["hurry"] = True
            try:
                await ops._patch(workflow, {"spec": patch})
                await ops._wait_state(workflow, "Teardown")
            except GatewayError as exc:
                problem = problem or exc
        if obj is not None:
            await ops._delete(workflow)
        if problem is not None:
            raise GatewayError(problem.message, problem.status)


def _checked(fields: Fields, key: str, pattern: re.Pattern[str], what: str) -> str:
    value = fields.get(key, "")
    if not pattern.match(value):
        raise GatewayError(f"{key}={value!r} is not valid: expected {what}")
    return value
