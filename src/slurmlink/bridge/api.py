"""``/bridge/v1``: what a SlurmJob needs beyond its object: uploads in, logs and outputs out.

- ``POST /bridge/v1/namespaces/{ns}/uploads?name=FILE``: the body, streamed and size-limited, kept
  for the caller's jobs (``inputs: [{upload: <id>}]``); answers the id, size and sha256.
- ``GET /bridge/v1/namespaces/{ns}/slurmjobs/{name}/log[?follow=true&offset=N]``: the job's
  output (stdout, with stderr unless the script split them), while it runs and after; ``follow``
  streams until the job has finished.
- ``GET /bridge/v1/namespaces/{ns}/slurmjobs/{name}/outputs/{path}``: one collected output, with its
  sha256 in ``Digest``/``ETag``.

``group=wlm.sylabs.io`` selects the seed's SlurmJob kind instead of ``slurmlink.io``. Every read
first gets the SlurmJob with the caller's rights (a user reaches only their own: 403 otherwise), and
then reads the file as the job's owner, never as the server, so a link the job made to somewhere else
gives nothing the owner could not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from slurmlink.api.component import ApiRoute, Component
from slurmlink.api.security import authorize
from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.identity import Identity
from slurmlink.bridge import files
from slurmlink.bridge.controller import BridgeSettings, job_dir
from slurmlink.bridge.owner import Owner
from slurmlink.bridge.uploads import UploadError, UploadStore
from slurmlink.resources import access, errors
from slurmlink.resources.bridge import wlmjob
from slurmlink.resources.bridge.common import FINISHED_PHASES
from slurmlink.resources.bridge.slurmjob import SLURM_JOB
from slurmlink.resources.kind import Kind, Obj

PREFIX = "/bridge/v1"
#: How often a followed log looks whether its job has finished.
FOLLOW_POLL = 1.0


def _kind(request: Request) -> Kind:
    group = request.query_params.get("group", SLURM_JOB.group)
    if group == wlmjob.GROUP:
        return wlmjob.WLM_SLURM_JOB
    if group != SLURM_JOB.group:
        raise errors.bad_request(f"group must be {SLURM_JOB.group} or {wlmjob.GROUP}, not {group!r}")
    return SLURM_JOB


def _not_found(what: str) -> errors.ApiError:
    return errors.ApiError(404, "NotFound", what)


def bridge_component(service: ResourceService, settings: BridgeSettings) -> Component:
    """The bridge's routes over ``service`` (for the caller's rights) and ``settings`` (where files are)."""
    uploads = UploadStore(settings.uploads, max_bytes=settings.max_upload)

    async def job(request: Request, identity: Identity) -> tuple[Kind, Obj]:
        kind = _kind(request)
        ns, name = request.path_params["namespace"], request.path_params["name"]
        scope = authorize(identity, kind, "get", ns, name)
        obj = await service.run(service.get, kind, kind.storage_version, ns, name, scope=scope)
        return kind, obj

    def owner_and_dir(obj: Obj) -> tuple[Owner, Path]:
        directory = job_dir(settings.root, obj)
        uid = access.owner_uid(obj)
        if directory is None or uid is None:
            raise _not_found("the job has no owner, so it has no directory")
        try:
            return Owner.of_uid(uid), directory
        except Exception as exc:
            raise _not_found(f"the job's owner cannot be found: {exc}") from exc

    async def create_upload(request: Request, identity: Identity) -> Any:
        ns = request.path_params["namespace"]
        scope = authorize(identity, SLURM_JOB, "create", ns, None)
        owner: int | None
        if isinstance(scope, access.OwnerScope):
            owner = scope.account.uid
            raw = request.query_params.get("owner")
            if raw is not None:  # a service uploading for a user it acts for
                allowed = {a.uid for a in scope.acts_for.values()} | {owner}
                if not raw.isdigit() or int(raw) not in allowed:
                    raise errors.ApiError(403, "Forbidden", f"{identity.user} may not upload for uid {raw}")
                owner = int(raw)
        else:
            raw = request.query_params.get("owner")
            if raw is None or not raw.isdigit():
                raise errors.bad_request(
                    "an upload made on a user's behalf names that user's uid: ?owner=UID"
                )
            owner = int(raw)
        name = posixpath.basename(request.query_params.get("name", "")) or "upload"
        if name in (".", "..") or "\x00" in name:
            raise errors.bad_request(f"name must be a file name, not {name!r}")
        await service.run(service.require_namespace, ns)
        try:
            upload = await uploads.put(ns, owner, name, request.stream())
        except UploadError as exc:
            raise errors.ApiError(
                exc.code, "RequestEntityTooLarge" if exc.code == 413 else "BadRequest", exc.message
            ) from exc
        return upload.to_json()

    async def log_of(request: Request, identity: Identity) -> Any:
        kind, obj = await job(request, identity)
        owner, directory = owner_and_dir(obj)
        status = obj.get("status") or {}
        path = status.get("stdoutPath")
        if not path:
            if not status.get("jobId"):
                raise _not_found("the job has not been submitted yet, so it has no output")
            path = str(directory / f"slurm-{status['jobId']}.out")
        relative = posixpath.relpath(path, str(directory))
        if relative.startswith("../") or relative == "..":
            raise _not_found(f"the job writes its output outside its directory ({path}); read it there")
        try:
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            raise errors.bad_request("offset must be a number of bytes") from None
        follow = request.query_params.get("follow", "false").lower() in ("1", "true", "yes")
        running = {"value": (status.get("phase") not in FINISHED_PHASES and status.get("phase") != "Unknown")}
        watcher: asyncio.Task[None] | None = None
        if follow and running["value"]:
            ns, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]

            async def watch() -> None:
                while running["value"]:
                    await asyncio.sleep(FOLLOW_POLL)
                    try:
                        current = await service.run(service.get_storage, kind, ns, name)
                    except errors.ApiError:
                        running["value"] = False
                        break
                    phase = (current.get("status") or {}).get("phase")
                    running["value"] = phase not in FINISHED_PHASES and phase != "Unknown"

            watcher = asyncio.create_task(watch())
        stream = files.read_stream(
            owner, directory, relative, offset=offset, follow=(lambda: running["value"]) if follow else None
        )
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = b""
        except files.FilesError as exc:
            if watcher is not None:
                watcher.cancel()
            raise _not_found(f"no output yet: {exc}") from exc

        async def body() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield first
                async for chunk in stream:
                    yield chunk
            finally:
                if watcher is not None:
                    watcher.cancel()
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")

    async def output(request: Request, identity: Identity) -> Any:
        _, obj = await job(request, identity)
        owner, directory = owner_and_dir(obj)
        path = request.path_params["path"]
        listed = {o.get("path"): o for o in (obj.get("status") or {}).get("outputs") or []}
        entry = listed.get(path)
        if entry is None:
            raise _not_found(f'"{path}" is not among the job\'s collected outputs (status.outputs)')
        stream = files.read_stream(owner, directory, path)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = b""
        except files.FilesError as exc:
            raise _not_found(str(exc)) from exc

        async def body() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in stream:
                yield chunk

        digest = str(entry.get("sha256", ""))
        headers = {"ETag": f'"{digest}"', "Digest": f"sha-256={digest}", "X-Content-SHA256": digest}
        return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)

    routes = (
        ApiRoute("/namespaces/{namespace}/uploads", create_upload, ("POST",)),
        ApiRoute("/namespaces/{namespace}/slurmjobs/{name}/log", log_of),
        ApiRoute("/namespaces/{namespace}/slurmjobs/{name}/outputs/{path:path}", output),
    )
    return Component("bridge", PREFIX, routes, _openapi())


def _openapi() -> dict[str, Any]:
    job = [
        {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "group",
            "in": "query",
            "schema": {"type": "string", "enum": [SLURM_JOB.group, wlmjob.GROUP]},
        },
    ]
    return {
        "openapi": "3.0.0",
        "info": {"title": "slurmlink job bridge", "version": "v1"},
        "paths": {
            f"{PREFIX}/namespaces/{{namespace}}/uploads": {
                "post": {
                    "summary": "Upload a file for a SlurmJob's inputs",
                    "parameters": [
                        {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "name", "in": "query", "schema": {"type": "string"}},
                    ],
                    "requestBody": {"content": {"application/octet-stream": {}}},
                    "responses": {"200": {"description": "id, size, sha256, name"}},
                }
            },
            f"{PREFIX}/namespaces/{{namespace}}/slurmjobs/{{name}}/log": {
                "get": {
                    "summary": "The job's output, optionally followed while it runs",
                    "parameters": [
                        *job,
                        {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {"200": {"description": "text"}},
                }
            },
            f"{PREFIX}/namespaces/{{namespace}}/slurmjobs/{{name}}/outputs/{{path}}": {
                "get": {
                    "summary": "One collected output",
                    "parameters": [
                        *job,
                        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"description": "the file"}},
                }
            },
        },
    }
