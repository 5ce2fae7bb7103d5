"""``HttpClient`` against a real ``slurmlink serve``, and controllers running remotely through it.

pytest-asyncio is not available: each test drives its coroutine with ``asyncio.run``. Waits are
watches or polls bounded by timeouts; the only fixed windows are the "nothing happens" checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from slurmlink.auth.kubeconfig import KubeconfigCredentials, load_kubeconfig
from slurmlink.auth.pki import CertificateAuthority
from slurmlink.client.http import HttpClient, UnreachableError
from slurmlink.resources.core import NAMESPACE
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.group import GROUP, WORKFLOW_FINALIZER
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.patching import JSON_PATCH, MERGE
from slurmlink.resources.watch import WatchEvent
from support.postgres import free_port
from support.server import ServerProcess

T = TypeVar("T")
GV = f"{GROUP}/v1alpha7"


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def workflow(name: str, namespace: str = "default", directive: str = "#DW Proposal action=complete") -> Obj:
    return {
        "apiVersion": GV,
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "desiredState": "Proposal",
            "wlmID": "slurm",
            "jobID": 42,
            "userID": 1000,
            "groupID": 1000,
            "dwDirectives": [directive],
        },
    }


def computes(name: str, namespace: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": GV,
        "kind": "Computes",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "data": [{"name": "node-1"}],
    }


def rv(obj: Obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


async def next_event(events: AsyncIterator[WatchEvent], timeout: float = 10.0) -> WatchEvent:
    """The next non-BOOKMARK event, failing the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        async for event in events:
            if event.type != "BOOKMARK":
                return event
    raise AssertionError("the watch ended")


async def wait_until(
    client: HttpClient,
    kind: Kind,
    namespace: str,
    name: str,
    predicate: Callable[[Obj], bool],
    timeout: float = 20.0,
) -> Obj:
    """Watch one object until ``predicate`` holds; fails with the last state seen after ``timeout``."""
    last = await client.get(kind, namespace, name)
    if predicate(last):
        return last
    events = await client.watch(kind, namespace, last["metadata"]["resourceVersion"])
    try:
        async with asyncio.timeout(timeout):
            async for event in events:
                if event.type in ("ADDED", "MODIFIED") and event.object["metadata"]["name"] == name:
                    last = event.object
                    if predicate(last):
                        return last
    except TimeoutError:
        pass
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    raise AssertionError(f"{kind.kind} {namespace}/{name} did not get there in {timeout}s: {last}")


async def wait_gone(client: HttpClient, kind: Kind, namespace: str, name: str, timeout: float = 20.0) -> None:
    try:
        obj = await client.get(kind, namespace, name)
    except ApiError as exc:
        assert exc.code == 404
        return
    events = await client.watch(kind, namespace, obj["metadata"]["resourceVersion"])
    try:
        async with asyncio.timeout(timeout):
            async for event in events:
                if event.type == "DELETED" and event.object["metadata"]["name"] == name:
                    return
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def stays_quiet(client: HttpClient, kind: Kind, obj: Obj, window: float) -> None:
    """Assert nothing changes ``obj`` during ``window`` seconds."""
    m = obj["metadata"]
    events = await client.watch(kind, m["namespace"], m["resourceVersion"])
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window):
                async for event in events:
                    if event.type != "BOOKMARK" and event.object["metadata"]["name"] == m["name"]:
                        raise AssertionError(f"{m['name']} changed with nobody reconciling: {event}")
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert rv(await client.get(kind, m["namespace"], m["name"])) == rv(obj)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An API server without controllers: objects change only when the test changes them."""
    srv = ServerProcess(tmp_path_factory.mktemp("http") / "state", extra_args=("--no-controllers",))
    srv.start()
    yield srv
    srv.stop()


def client_for(server: ServerProcess, **kw: Any) -> HttpClient:
    return HttpClient.from_kubeconfig(server.kubeconfig, **kw)


# ---- every method --------------------------------------------------------------------------------


def test_crud_round_trip_in_storage_version(server: ServerProcess) -> None:
    async def body() -> None:
        async with client_for(server) as client:
            assert client.namespace == "default"
            # Core group (/api/v1): a cluster-scoped Namespace.
            ns = await client.create(
                NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "crud"}}
            )
            assert ns["metadata"]["name"] == "crud"
            assert (await client.get(NAMESPACE, None, "crud"))["metadata"]["uid"] == ns["metadata"]["uid"]
            namespaces, ns_rv = await client.list(NAMESPACE)
            assert {"default", "dws-system", "slurm", "crud"} <= {n["metadata"]["name"] for n in namespaces}
            assert int(ns_rv) >= rv(ns)

            # Named group, namespaced.
            created = await client.create(COMPUTES, computes("c1", "crud", {"app": "a"}))
            await client.create(COMPUTES, computes("c2", "crud", {"app": "b"}))
            assert created["apiVersion"] == GV and created["kind"] == "Computes"
            got = await client.get(COMPUTES, "crud", "c1")
            assert got == created

            items, list_rv = await client.list(COMPUTES, "crud")
            assert sorted(i["metadata"]["name"] for i in items) == ["c1", "c2"]
            assert int(list_rv) >= rv(created)
            selected, _ = await client.list(COMPUTES, "crud", label_selector="app=b")
            assert [i["metadata"]["name"] for i in selected] == ["c2"]
            everywhere, _ = await client.list(COMPUTES, None, label_selector="app")
            assert {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere} >= {
                ("crud", "c1"),
                ("crud", "c2"),
            }

            got["data"] = [{"name": "node-1"}, {"name": "node-2"}]
            updated = await client.update(COMPUTES, got)
            assert updated["data"] == got["data"] and rv(updated) > rv(got)

            merged = await client.patch(COMPUTES, "crud", "c1", {"metadata": {"labels": {"tier": "gold"}}})
            assert merged["metadata"]["labels"] == {"app": "a", "tier": "gold"}
            assert rv(merged) > rv(updated)
            assert (
                await client.patch(COMPUTES, "crud", "c1", {"metadata": {"labels": {"tier": None}}}, MERGE)
            )["metadata"]["labels"] == {"app": "a"}
            jp = await client.patch(
                COMPUTES,
                "crud",
                "c1",
                [{"op": "add", "path": "/data/-", "value": {"name": "node-3"}}],
                JSON_PATCH,
            )
            assert [d["name"] for d in jp["data"]] == ["node-1", "node-2", "node-3"]

            deleted = await client.delete(COMPUTES, "crud", "c1")
            assert deleted["metadata"]["name"] == "c1"
            with pytest.raises(ApiError) as info:
                await client.get(COMPUTES, "crud", "c1")
            assert info.value.code == 404

            # Workflows come back in the storage version, storage-only fields included.
            wf = await client.create(WORKFLOW, workflow("crud-wf", "crud"))
            assert wf["apiVersion"] == GV
            assert wf["spec"]["forceReady"] is False
            assert [d["driverID"] for d in wf["status"]["drivers"]] == ["tester"]

            # A status write changes status only; kinds without /status refuse it.
            wf = await client.get(WORKFLOW, "crud", "crud-wf")
            wf["spec"]["wlmID"] = "ignored"
            wf["status"]["message"] = "from update_status"
            written = await client.update_status(WORKFLOW, wf)
            assert written["status"]["message"] == "from update_status"
            assert written["spec"]["wlmID"] == "slurm"
            with pytest.raises(ApiError) as info:
                await client.update_status(COMPUTES, await client.get(COMPUTES, "crud", "c2"))
            assert info.value.code == 404

    run(body())


def test_stale_update_is_a_409_conflict(server: ServerProcess) -> None:
    async def body() -> None:
        async with client_for(server) as client:
            original = await client.create(COMPUTES, computes("stale", "default"))
            first = dict(original, data=[{"name": "a"}])
            assert rv(await client.update(COMPUTES, first)) > rv(original)
            second = dict(original, data=[{"name": "b"}])  # still carries the old resourceVersion
            with pytest.raises(ApiError) as info:
                await client.update(COMPUTES, second)
            err = info.value
            assert (err.code, err.reason) == (409, "Conflict")
            assert err.message == (
                f'Operation cannot be fulfilled on computes.{GROUP} "stale": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            assert err.details == {"name": "stale", "group": GROUP, "kind": "computes"}

            with pytest.raises(ApiError) as info:
                await client.create(COMPUTES, computes("stale", "default"))
            assert (info.value.code, info.value.reason) == (409, "AlreadyExists")

    run(body())


def test_not_found_and_other_errors_carry_the_status(server: ServerProcess) -> None:
    async def body() -> None:
        async with client_for(server) as client:
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: client.get(WORKFLOW, "default", "missing"),
                lambda: client.delete(WORKFLOW, "default", "missing"),
                lambda: client.patch(WORKFLOW, "default", "missing", {"metadata": {"labels": {"a": "b"}}}),
            ]
            for call in calls:
                with pytest.raises(ApiError) as info:
                    await call()
                err = info.value
                assert (err.code, err.reason) == (404, "NotFound")
                assert err.message == f'workflows.{GROUP} "missing" not found'
                assert err.details == {"name": "missing", "group": GROUP, "kind": "workflows"}
                assert str(err) == err.message

            # 422 with field causes.
            bad = computes("bad", "default")
            bad["data"] = [{"nope": 1}]
            with pytest.raises(ApiError) as info:
                await client.create(COMPUTES, bad)
            assert (info.value.code, info.value.reason) == (422, "Invalid")
            assert info.value.details and info.value.details["causes"][0]["field"].startswith("data")

            # Admission denial (the validating webhook's 403).
            wf = workflow("skipping")
            wf["spec"]["desiredState"] = "Setup"
            with pytest.raises(ApiError) as info:
                await client.create(WORKFLOW, wf)
            assert info.value.code == 403
            assert "desired state must start in Proposal" in info.value.message

            # Unsupported patch type, and a watch the server refuses.
            with pytest.raises(ApiError) as info:
                await client.patch(WORKFLOW, "default", "x", {}, "application/strategic-merge-patch+json")
            assert info.value.code == 415
            with pytest.raises(ApiError) as info:
                await client.watch(WORKFLOW, "default", "not-a-number")
            assert (info.value.code, info.value.reason) == (400, "BadRequest")

            with pytest.raises(ValueError, match="namespace"):
                await client.create(WORKFLOW, {"metadata": {"name": "no-ns"}})

    run(body())


def test_watch_delivers_events_in_order(server: ServerProcess) -> None:
    async def body() -> None:
        async with client_for(server) as client:
            await client.create(NAMESPACE, {"metadata": {"name": "watched"}})
            await client.create(COMPUTES, computes("before", "watched"))
            _, start = await client.list(COMPUTES, "watched")

            events = await client.watch(COMPUTES, "watched", start)
            created = await client.create(COMPUTES, computes("w", "watched"))
            patched = await client.patch(COMPUTES, "watched", "w", {"metadata": {"labels": {"step": "2"}}})
            deleted = await client.delete(COMPUTES, "watched", "w")
            seen = [await next_event(events) for _ in range(3)]
            assert [(e.type, e.object["metadata"]["name"]) for e in seen] == [
                ("ADDED", "w"),
                ("MODIFIED", "w"),
                ("DELETED", "w"),
            ]
            assert [rv(e.object) for e in seen] == [rv(created), rv(patched), rv(deleted)]
            assert rv(created) < rv(patched) < rv(deleted)
            assert seen[1].object["metadata"]["labels"] == {"step": "2"}
            assert all(e.object["apiVersion"] == GV for e in seen)
            await events.aclose()  # type: ignore[attr-defined]

            # Without a resourceVersion the watch starts with the existing objects as ADDED.
            fresh = await client.watch(COMPUTES, "watched")
            first = await next_event(fresh)
            assert (first.type, first.object["metadata"]["name"]) == ("ADDED", "before")
            await fresh.aclose()  # type: ignore[attr-defined]

            # An all-namespaces watch sees other namespaces too.
            everywhere = await client.watch(COMPUTES, None, deleted["metadata"]["resourceVersion"])
            await client.create(COMPUTES, computes("other", "default"))
            event = await next_event(everywhere)
            assert (event.type, event.object["metadata"]["namespace"]) == ("ADDED", "default")
            await everywhere.aclose()  # type: ignore[attr-defined]

    run(body())


# ---- credentials -------------------------------------------------------------------------------


def _issue(server: ServerProcess, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "kubeconfig",
            "--state-dir",
            str(server.state_dir),
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_bearer_token_kubeconfig(server: ServerProcess, tmp_path: Path) -> None:
    admin, viewer = tmp_path / "admin-token.kubeconfig", tmp_path / "viewer-token.kubeconfig"
    _issue(server, admin, "--user", "u", "--role", "admin", "--token")
    _issue(server, viewer, "--user", "v", "--role", "viewer", "--token")
    creds = load_kubeconfig(admin)
    assert creds.token and creds.cert_pem is None and creds.key_pem is None

    async def body() -> None:
        async with HttpClient.from_kubeconfig(admin) as client:
            made = await client.create(COMPUTES, computes("by-token", "default"))
            assert made["metadata"]["name"] == "by-token"
        async with HttpClient.from_kubeconfig(viewer) as client:
            assert (await client.get(COMPUTES, "default", "by-token"))["metadata"]["name"] == "by-token"
            with pytest.raises(ApiError) as info:
                await client.delete(COMPUTES, "default", "by-token")
            assert (info.value.code, info.value.reason) == (403, "Forbidden")
            assert 'User "v" cannot delete resource "computes"' in info.value.message
        anonymous = KubeconfigCredentials(server.url, creds.ca_pem, None, None, None, None, False)
        async with HttpClient(anonymous) as client:
            with pytest.raises(ApiError) as info:
                await client.list(WORKFLOW)
            assert (info.value.code, info.value.reason) == (401, "Unauthorized")
        wrong = KubeconfigCredentials(server.url, creds.ca_pem, None, None, "not-a-token", None, False)
        async with HttpClient(wrong) as client:
            with pytest.raises(ApiError) as info:
                await client.list(WORKFLOW)
            assert info.value.code == 401

    run(body())


def test_client_key_does_not_stay_on_disk(server: ServerProcess) -> None:
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("slurmlink-client-*"))

    async def body() -> None:
        async with client_for(server) as client:
            assert (await client.get(NAMESPACE, None, "default"))["metadata"]["name"] == "default"
            assert set(tmp.glob("slurmlink-client-*")) - before == set()

    run(body())


def test_server_certificate_from_another_ca_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    creds = load_kubeconfig(server.kubeconfig)
    impostor = KubeconfigCredentials(
        server.url, other.cert_pem, creds.cert_pem, creds.key_pem, None, None, False
    )

    async def body() -> None:
        async with HttpClient(impostor, connect_timeout=5.0) as client:
            with pytest.raises(UnreachableError) as info:
                await client.list(WORKFLOW)
            assert info.value.message.startswith(
                f"cannot reach the slurmlink API at {server.url}: TLS certificate verification failed"
            )

    run(body())


# ---- unreachable servers -------------------------------------------------------------------------


def _creds(server: ServerProcess, url: str) -> KubeconfigCredentials:
    c = load_kubeconfig(server.kubeconfig)
    return KubeconfigCredentials(url, c.ca_pem, c.cert_pem, c.key_pem, None, "default", False)


def test_connection_refused_is_reported_quickly(server: ServerProcess) -> None:
    url = f"https://127.0.0.1:{free_port()}"

    async def body() -> None:
        async with HttpClient(_creds(server, url)) as client:
            for call in (lambda: client.list(WORKFLOW), lambda: client.watch(WORKFLOW, "default")):
                start = time.monotonic()
                with pytest.raises(UnreachableError) as info:
                    await call()
                assert time.monotonic() - start < 3.0
                err = info.value
                assert isinstance(err, ApiError) and err.code == 503
                assert err.message == f"cannot reach the slurmlink API at {url}: connection refused"

    run(body())


def test_connect_timeout_is_bounded() -> None:
    """A peer that accepts TCP but never answers TLS: the connect timeout ends the wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # never accept()ed: the kernel completes the handshake, nobody speaks TLS
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        creds = KubeconfigCredentials(url, None, None, None, "t", None, False)

        async def body() -> float:
            async with HttpClient(creds, connect_timeout=0.5) as client:
                start = time.monotonic()
                with pytest.raises(UnreachableError) as info:
                    await client.get(WORKFLOW, "default", "x")
                assert info.value.message == (
                    f"cannot reach the slurmlink API at {url}: no connection within 0.5s (connect timeout)"
                )
                return time.monotonic() - start

        elapsed = run(body())
    assert 0.4 < elapsed < 3.0


# ---- the same controllers, remotely --------------------------------------------------------------


def _start_controller(kubeconfig: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "controller",
            "--kubeconfig",
            str(kubeconfig),
            "--log-format",
            "console",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _wait_for_log(proc: subprocess.Popen[bytes], log_path: Path, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"controller log lacks {text!r} (exit {proc.poll()}):\n{log_path.read_text(errors='replace')}"
    )


def _proposal_done(wf: Obj) -> bool:
    status = wf.get("status") or {}
    return (
        status.get("state") == "Proposal"
        and status.get("ready") is True
        and status.get("status") == "Completed"
        and bool(status.get("computes"))
    )


def test_controllers_run_remotely_through_the_client(tmp_path: Path) -> None:
    """The acceptance point: the same controller code runs in serve and as `slurmlink controller`."""
    api = ServerProcess(tmp_path / "state", extra_args=("--no-controllers",)).start()
    log_path = tmp_path / "controller.log"
    controller: subprocess.Popen[bytes] | None = None
    try:

        async def before_controller() -> Obj:
            async with client_for(api) as client:
                waiting = await client.create(WORKFLOW, workflow("waiting"))
                await stays_quiet(client, WORKFLOW, waiting, 1.0)  # no controller in the API server
                return waiting

        waiting = run(before_controller())
        assert "state" not in waiting["status"]

        controller = _start_controller(api.kubeconfig, log_path)
        _wait_for_log(controller, log_path, "controllers synced: workflow, test-driver")

        async def with_controller() -> None:
            async with client_for(api) as client:
                # The workflow created while no controller ran is picked up from the initial list...
                await wait_until(client, WORKFLOW, "default", "waiting", _proposal_done)
                # ...and a new one is driven through its watch.
                await client.create(WORKFLOW, workflow("remote"))
                done = await wait_until(client, WORKFLOW, "default", "remote", _proposal_done)
                assert done["metadata"]["finalizers"] == [WORKFLOW_FINALIZER]
                assert done["status"]["computes"] == {
                    "kind": "Computes",
                    "name": "remote",
                    "namespace": "default",
                }
                assert done["status"]["drivers"][0]["completed"] is True
                assert done["status"]["elapsedTimeLastState"]
                child = await client.get(COMPUTES, "default", "remote")
                assert child["metadata"]["labels"][f"{GROUP}/owner.uid"] == done["metadata"]["uid"]
                assert child["metadata"]["ownerReferences"][0]["name"] == "remote"
                # Deletion: the remote controller deletes the Computes and drops its finalizer.
                await client.delete(WORKFLOW, "default", "remote")
                await wait_gone(client, WORKFLOW, "default", "remote")
                with pytest.raises(ApiError) as info:
                    await client.get(COMPUTES, "default", "remote")
                assert info.value.code == 404

        run(with_controller())

        controller.send_signal(signal.SIGTERM)
        assert controller.wait(timeout=15) == 0
        logged = log_path.read_text(errors="replace")
        assert "stopping controllers" in logged and "controller stopped" in logged
        assert "Traceback" not in logged

        async def after_controller() -> None:
            async with client_for(api) as client:
                orphan = await client.create(WORKFLOW, workflow("orphan"))
                await stays_quiet(client, WORKFLOW, orphan, 1.5)
                current = await client.get(WORKFLOW, "default", "orphan")
                assert "finalizers" not in current["metadata"]
                assert "state" not in current["status"]

        run(after_controller())
    finally:
        if controller is not None and controller.poll() is None:
            controller.kill()
            controller.wait(10)
        api.stop()


def test_remote_controller_survives_an_api_restart(tmp_path: Path) -> None:
    """The controller's watches break when the API stops; it re-lists and carries on when it is back."""
    api = ServerProcess(tmp_path / "state", extra_args=("--no-controllers",)).start()
    log_path = tmp_path / "controller.log"
    controller = _start_controller(api.kubeconfig, log_path)
    try:
        _wait_for_log(controller, log_path, "controllers synced")
        api.stop()
        _wait_for_log(controller, log_path, "list/watch failed: cannot reach the slurmlink API at")
        api.start()

        async def body() -> None:
            async with client_for(api) as client:
                await client.create(WORKFLOW, workflow("after-restart"))
                await wait_until(client, WORKFLOW, "default", "after-restart", _proposal_done)

        run(body())
        assert controller.poll() is None
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(timeout=15) == 0
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait(10)
        api.stop()


def test_controller_refuses_rejected_credentials(server: ServerProcess, tmp_path: Path) -> None:
    creds = load_kubeconfig(server.kubeconfig)
    bad = tmp_path / "bad.kubeconfig"
    from slurmlink.auth.kubeconfig import build_kubeconfig, write_kubeconfig

    write_kubeconfig(bad, build_kubeconfig(server.url, creds.ca_pem or b"", "nobody", token="wrong"))
    result = subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", "controller", "--kubeconfig", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Error from server (Unauthorized): Unauthorized" in result.stderr


def _client_ports(server_port: int) -> set[int]:
    """Local ports of this host's established TCP connections to ``server_port`` (the client ends)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(remote.rsplit(":", 1)[1], 16) == server_port:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_a_burst_of_requests_shares_a_few_kept_alive_connections(server: ServerProcess) -> None:
    from slurmlink.client.http import MAX_REQUESTS

    async def body() -> None:
        before = _client_ports(server.port)
        async with client_for(server) as client:
            first = await asyncio.gather(*(client.get(NAMESPACE, None, "default") for _ in range(40)))
            opened = _client_ports(server.port) - before
            second = await asyncio.gather(*(client.get(NAMESPACE, None, "default") for _ in range(40)))
            reused = _client_ports(server.port) - before
        assert len(first) == len(second) == 40
        # Bounded: at most the client's request slots, far fewer than the 40 requests of the burst.
        assert 1 <= len(opened) <= MAX_REQUESTS < 20, opened
        assert reused == opened  # the second burst opened no connection (and no TLS handshake)

    asyncio.run(body())


def test_list_and_watch_with_a_label_selector(server: ServerProcess) -> None:
    """``labelSelector`` reaches the server on list and watch: only matching objects come back."""

    def labelled(name: str, pick: str) -> Obj:
        obj = workflow(name, "slurm")
        obj["metadata"]["labels"] = {"pick": pick}
        return obj

    async def body() -> None:
        async with client_for(server) as client:
            _, revision = await client.list(WORKFLOW, "slurm")
            events = await client.watch(WORKFLOW, "slurm", revision, label_selector="pick=yes")
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                for name, pick in (
                    ("sel-no1", "no"),
                    ("sel-yes1", "yes"),
                    ("sel-no2", "no"),
                    ("sel-yes2", "yes"),
                ):
                    await client.create(WORKFLOW, labelled(name, pick))
                seen: list[str] = []
                async with asyncio.timeout(10):
                    async for event in events:
                        if event.type != "BOOKMARK":
                            seen.append(event.object["metadata"]["name"])
                        if len(seen) == 2:
                            break
            assert seen == ["sel-yes1", "sel-yes2"]
            items, _ = await client.list(WORKFLOW, "slurm", "pick=yes")
            assert sorted(o["metadata"]["name"] for o in items) == ["sel-yes1", "sel-yes2"]
            for name in ("sel-no1", "sel-yes1", "sel-no2", "sel-yes2"):
                await client.delete(WORKFLOW, "slurm", name)

    run(body())
