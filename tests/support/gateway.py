"""A real burst buffer gateway in one event loop, talked to exactly as burst_buffer.lua talks to it.

``GatewayHarness`` builds the in-process system the gateway serves (SQLite store, watch hub, resource
service, ``bootstrap``, the workflow controller and the test driver, all behind an ``InProcessClient``),
starts a real ``Gateway`` on a Unix socket and sends it HTTP/1.0 ``POST /v1/<op>`` requests with
url-encoded bodies over ``AF_UNIX``. Nothing is mocked except Slurm's client commands: there is no Slurm
here, so ``RecordingSlurm`` records ``scancel --hurry`` and ``scontrol show job`` calls and answers them
from configuration. Job scripts are real files at slurmctld's layout
(``<dir>/state/hash.<id % 10>/job.<id>/script``) because the gateway stats and reads them.

Socket paths must fit in ``sun_path`` (~107 bytes), so every harness uses a short ``/tmp/gw*`` directory
of its own rather than pytest's long ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.client.base import Client
from slurmlink.client.http import UnreachableError
from slurmlink.client.inprocess import InProcessClient
from slurmlink.config import ServerConfig
from slurmlink.controllers.runtime import ControllerRunner
from slurmlink.controllers.testdriver import TestDriverReconciler
from slurmlink.controllers.workflow import WorkflowReconciler
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Kind
from slurmlink.resources.patching import JSON_PATCH, MERGE
from slurmlink.resources.watch import WatchEvent
from slurmlink.server import bootstrap
from slurmlink.slurm.commands import CommandResult, JobStatus, SlurmCommands
from slurmlink.slurm.gateway import Gateway, GatewayConfig
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore
from support.waiting import eventually

Obj = dict[str, Any]
T = TypeVar("T")

NAMESPACE = "slurm"
GROUP = "dataworkflowservices.github.io"
#: The version the seed's kubectl patches use (the Workflow's v1alpha2 shape).
PATCH_VERSION = "v1alpha2"


class RecordingSlurm(SlurmCommands):
    """SlurmCommands that never runs a Slurm binary: it records calls and returns configured answers.

    ``state_save_location`` points at the harness's own directory so ``job_dir`` (used by the sweeper)
    looks where ``GatewayHarness.write_script`` writes.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        known: bool | None = True,
        known_by_job: dict[str, bool | None] | None = None,
        scancel_result: CommandResult | None = None,
    ) -> None:
        super().__init__(slurm_conf=None)
        self.state_dir = state_dir
        #: ``job_known`` answer for jobs not in ``known_by_job`` (True: Slurm knows it, None: cannot ask).
        self.known = known
        self.known_by_job: dict[str, bool | None] = dict(known_by_job or {})
        self.scancel_result = scancel_result or CommandResult(0, "", "")
        self.scancel_calls: list[str] = []
        self.job_known_calls: list[str] = []
        #: ``job_statuses`` answer (None: slurmctld cannot be asked).
        self.statuses: dict[str, JobStatus] | None = None
        self.job_statuses_calls = 0
        #: Jobs whose start was noted (``note_start``: read nothing here).
        self.noted_starts: list[str] = []

    def state_save_location(self) -> Path:
        return self.state_dir

    async def run(self, *argv: str) -> CommandResult:
        raise AssertionError(f"RecordingSlurm must not run commands, got {argv!r}")

    def note_start(self, job_id: str) -> None:
        self.noted_starts.append(job_id)

    async def scancel_hurry(self, job_id: str) -> CommandResult:
        self.scancel_calls.append(job_id)
        return self.scancel_result

    async def job_known(self, job_id: str) -> bool | None:
        self.job_known_calls.append(job_id)
        return self.known_by_job.get(job_id, self.known)

    async def job_statuses(self) -> dict[str, JobStatus] | None:
        self.job_statuses_calls += 1
        return None if self.statuses is None else dict(self.statuses)


class SwitchableClient:
    """The gateway's view of the API, which a test can cut off and restore (``down = True/False``).

    While down, every call fails as HttpClient fails on a refused connection (``UnreachableError``,
    code 503) and open watch streams break, so the gateway sees a real outage while the controllers,
    which use the inner client, keep running.
    """

    def __init__(self, inner: Client) -> None:
        self.inner = inner
        self._down = asyncio.Event()

    @property
    def down(self) -> bool:
        return self._down.is_set()

    @down.setter
    def down(self, value: bool) -> None:
        if value:
            self._down.set()
        else:
            self._down.clear()

    def _check(self) -> None:
        if self.down:
            raise UnreachableError("in-process API", "connection refused (cut off by the test)")

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        self._check()
        return await self.inner.get(kind, namespace, name)

    async def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[Obj], str]:
        self._check()
        return await self.inner.list(kind, namespace, label_selector)

    async def create(self, kind: Kind, obj: Obj) -> Obj:
        self._check()
        return await self.inner.create(kind, obj)

    async def update(self, kind: Kind, obj: Obj) -> Obj:
        self._check()
        return await self.inner.update(kind, obj)

    async def patch(
        self, kind: Kind, namespace: str | None, name: str, patch: Any, content_type: str = MERGE
    ) -> Obj:
        self._check()
        return await self.inner.patch(kind, namespace, name, patch, content_type)

    async def delete(
        self, kind: Kind, namespace: str | None, name: str, *, propagation_policy: str | None = None
    ) -> Obj:
        self._check()
        return await self.inner.delete(kind, namespace, name, propagation_policy=propagation_policy)

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        resource_version: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        self._check()
        stream = await self.inner.watch(kind, namespace, resource_version, label_selector=label_selector)
        return self._guarded(stream)

    async def _guarded(self, stream: AsyncIterator[WatchEvent]) -> AsyncIterator[WatchEvent]:
        """Pass events through until the API is cut off, then fail like a broken connection."""
        following: asyncio.Future[WatchEvent] | None = None
        try:
            while True:
                following = asyncio.ensure_future(anext(stream))
                cut = asyncio.ensure_future(self._down.wait())
                try:
                    await asyncio.wait({following, cut}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    cut.cancel()
                if not following.done():
                    self._check()
                try:
                    event = following.result()
                except StopAsyncIteration:
                    return
                following = None
                yield event
        finally:
            # Never leave the pending read behind (the informer may be cancelled mid-wait).
            if following is not None:
                following.cancel()
                with contextlib.suppress(BaseException):
                    await following
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def http_request(
    socket_path: Path, method: str, path: str, body: bytes = b"", timeout: float = 20.0
) -> tuple[int, str]:
    """One HTTP/1.0 request over AF_UNIX, as LuaSocket sends it; returns (status, body text)."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        head = f"{method} {path} HTTP/1.0\r\nHost: slurmlink\r\n"
        if method == "POST":
            head += "Content-Type: application/x-www-form-urlencoded\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return parse_response(raw)


def parse_response(raw: bytes) -> tuple[int, str]:
    """Status and body of a complete HTTP/1.0 response (the server closes after it)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"incomplete HTTP response: {raw!r}")
    status_line = head.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("HTTP/1."), status_line
    return int(status_line.split()[1]), body.decode("utf-8")


def form(fields: dict[str, str]) -> bytes:
    """The url-encoded body burst_buffer.lua sends."""
    return urllib.parse.urlencode(fields).encode()


class GatewayHarness:
    """The whole in-process system plus a started Gateway; use as ``async with GatewayHarness() as h``.

    With ``client`` given, no store or controllers are built and the gateway talks to that client
    instead (e.g. an HttpClient pointed at a dead port); ``wait_healthy`` is then usually False.
    """

    def __init__(
        self,
        *,
        transient_grace: float = 30.0,
        api_timeout: float = 10.0,
        sweep_min_age: float = 0.0,
        slurm: RecordingSlurm | None = None,
        client: Client | None = None,
        wait_healthy: bool = True,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
        self.state_dir = self.dir / "state"
        self.state_dir.mkdir()
        self.socket_path = self.dir / "bb.sock"
        self.slurm = slurm or RecordingSlurm(self.state_dir)
        self.wait_healthy = wait_healthy
        self.store: SqlStore | None = None
        self.hub: WatchHub | None = None
        self._svc: ResourceService | None = None
        self.runners: list[ControllerRunner] = []
        if client is None:
            self.store = SqlStore(f"sqlite:///{self.dir}/db")
            self.hub = WatchHub(self.store)
            self._svc = ResourceService(self.store, default_registry(), self.hub)
            bootstrap(self._svc, ServerConfig(state_dir=self.dir))
            self.api_client: Client = InProcessClient(self._svc)
            #: What the gateway uses; ``self.switch.down = True`` cuts the gateway off from the API.
            self.switch: SwitchableClient | None = SwitchableClient(self.api_client)
            client = self.switch
        else:
            self.api_client = client
            self.switch = None
        self.client = client
        self.config = GatewayConfig(
            socket_path=self.socket_path,
            namespace=NAMESPACE,
            transient_grace=transient_grace,
            api_timeout=api_timeout,
            sweep_interval=0,
            sweep_min_age=sweep_min_age,
        )
        self.gateway = Gateway(client, self.config, slurm=self.slurm)

    @property
    def svc(self) -> ResourceService:
        """The resource service (only when the harness built the in-process system)."""
        assert self._svc is not None, "this harness has no in-process API"
        return self._svc

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.hub is not None:
            await self.hub.start()
            self.runners = [
                ControllerRunner(self.api_client, WorkflowReconciler(), workers=4),
                ControllerRunner(self.api_client, TestDriverReconciler(), workers=2),
            ]
            for runner in self.runners:
                runner.start()
            for runner in self.runners:
                await runner.wait_synced(10)
        await self.gateway.start()
        if self.wait_healthy:
            await self.wait_until_healthy()

    async def wait_until_healthy(self, timeout: float = 10.0) -> None:
        """``GET /v1/healthz`` answers 200: both informers have listed, so the caches are live."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status, text = await self.request("GET", "/v1/healthz")
            if status == 200:
                return
            if loop.time() > deadline:
                raise AssertionError(f"gateway not healthy after {timeout}s: {status} {text}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        try:
            await self.gateway.stop()
            for runner in self.runners:
                await runner.stop()
            if self.hub is not None:
                await self.hub.stop()
            await self.client.aclose()
            if self.store is not None:
                self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> GatewayHarness:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- talking to the gateway --------------------------------------------------------------

    async def call(self, op: str, **fields: str) -> tuple[int, str]:
        """``POST /v1/<op>`` with ``fields`` url-encoded, as the Lua sends it; (status, body)."""
        return await http_request(self.socket_path, "POST", f"/v1/{op}", form(fields))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
        return await http_request(self.socket_path, method, path, body)

    def write_script(self, job_id: int | str, text: str) -> str:
        """Write a job script where slurmctld keeps it (``state/hash.<id%10>/job.<id>/script``)."""
        number = int(job_id)
        job_dir = self.state_dir / f"hash.{number % 10}" / f"job.{number}"
        job_dir.mkdir(parents=True, exist_ok=True)
        path = job_dir / "script"
        path.write_text(text)
        return str(path)

    def job_fields(self, job_id: int | str, text: str, uid: int = 1001, gid: int = 1001) -> dict[str, str]:
        """Write the script and return the fields ``setup`` gets for it."""
        return {
            "job_id": str(job_id),
            "uid": str(uid),
            "gid": str(gid),
            "script": self.write_script(job_id, text),
        }

    # ---- the API, as an operator with kubectl would use it --------------------------------------

    def get(self, name: str, version: str = PATCH_VERSION) -> Obj | None:
        """The Workflow from the store (not the gateway's cache); None if it does not exist."""
        try:
            return self.svc.get(WORKFLOW, version, NAMESPACE, name)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def json_patch(self, name: str, ops: list[Obj]) -> Obj:
        """``kubectl patch workflow <name> --type=json -p <ops>`` on the v1alpha2 object."""
        return self.svc.patch(WORKFLOW, PATCH_VERSION, NAMESPACE, name, JSON_PATCH, ops, SYSTEM)

    def merge_patch(self, name: str, patch: Obj) -> Obj:
        return self.svc.patch(WORKFLOW, PATCH_VERSION, NAMESPACE, name, MERGE, patch, SYSTEM)

    def create_workflow(
        self,
        name: str,
        directives: list[str],
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        **spec: Any,
    ) -> Obj:
        """Create a Workflow directly (as an earlier job or another tool would have)."""
        metadata: Obj = {"name": name, "labels": {"origin": "burst_buffer.lua"} if labels is None else labels}
        if annotations:
            metadata["annotations"] = annotations
        body: Obj = {
            "apiVersion": f"{GROUP}/{PATCH_VERSION}",
            "kind": "Workflow",
            "metadata": metadata,
            "spec": {
                "desiredState": "Proposal",
                "dwDirectives": directives,
                "wlmID": "slurm",
                "jobID": name.removeprefix("bb"),
                "userID": 1001,
                "groupID": 1001,
                **spec,
            },
        }
        return self.svc.create(WORKFLOW, PATCH_VERSION, NAMESPACE, body, SYSTEM)

    async def status_is(self, name: str, state: str, status: str, timeout: float = 10.0) -> Obj:
        """Wait until the stored Workflow's ``status.state``/``status.status`` are as given."""

        def check() -> Obj | None:
            obj = self.get(name)
            st = (obj or {}).get("status") or {}
            return obj if st.get("state") == state and st.get("status") == status else None

        return await eventually(check, f"{name} to be {state}/{status}", timeout)

    async def cached(self, name: str, check: Callable[[Obj], bool], timeout: float = 10.0) -> Obj:
        """Wait until the gateway's informer cache holds ``name`` satisfying ``check``."""

        def probe() -> Obj | None:
            obj = self.gateway.workflows.cache.get(name)
            return obj if obj is not None and check(obj) else None

        return await eventually(probe, f"{name} in the gateway's cache", timeout)
