"""HTTP/1.0 over a Unix socket, for burst_buffer.lua (see docs/slurm-plugin.md, "Transport").

h11 parses the requests. Each request runs its operation as a task; if the Lua side goes away (Slurm
killed the callback on a timeout or ``scancel``), the task is cancelled so nothing keeps waiting for
a job Slurm has given up on. Only the gateway's own user and root may connect (``SO_PEERCRED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl

import h11

from slurmlink.slurm.gateway.activity import CallbackActivity
from slurmlink.slurm.gateway.operations import GatewayError

log = logging.getLogger(__name__)

Operation = Callable[[Mapping[str, str]], Awaitable[str]]
MAX_BODY = 64 * 1024
#: Callbacks answered from memory (job_process waits at most a moment for the first rules list).
QUICK_OPERATIONS = frozenset(
    {"job_process", "pools", "real_size", "paths", "status", "bank_submit", "bank_extend"}
)
_READ_TIMEOUT = 10.0


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


class GatewayServer:
    """Serves ``POST /v1/<operation>`` and ``GET /v1/healthz`` on ``socket_path``."""

    def __init__(
        self,
        socket_path: Path,
        operations: Mapping[str, Operation],
        healthy: Callable[[], Awaitable[str | None]],
        activity: CallbackActivity | None = None,
        quick: frozenset[str] = frozenset(),
    ) -> None:
        self.socket_path = socket_path
        self.operations = dict(operations)
        #: Operations that answer from memory at once: run inline, without watching for a hangup (a
        #: caller gone by then costs nothing), which saves a few event-loop turns on every sbatch.
        self.quick = quick
        #: Returns None when healthy, else the reason it is not.
        self.healthy = healthy
        #: Which jobs have a callback open (the sweeper leaves those alone).
        self.activity = activity or CallbackActivity()
        self._server: asyncio.AbstractServer | None = None
        self._allowed_uids = {0, os.geteuid()}

    async def start(self) -> None:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
            else:
                raise RuntimeError(f"{path} exists and is not a socket; remove it or pick another --socket")
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(path), limit=MAX_BODY * 2)
        finally:
            os.umask(old_umask)
        path.chmod(0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer)
            if uid is not None and uid not in self._allowed_uids:
                await self._respond(writer, 403, f"uid {uid} may not use the slurmlink gateway")
                return
            request = await asyncio.wait_for(self._read_request(reader), _READ_TIMEOUT)
            if request is None:
                return
            method, target, body = request
            status, text = await self._dispatch(method, target, body, reader)
            if status is not None:
                await self._respond(writer, status, text)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except h11.RemoteProtocolError as exc:
            with contextlib.suppress(Exception):
                await self._respond(writer, 400, f"bad request: {exc}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
        conn = h11.Connection(h11.SERVER)
        method = target = ""
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return None
                continue
            if isinstance(event, h11.Request):
                method, target = event.method.decode(), event.target.decode()
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return method, target, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _dispatch(
        self, method: str, target: str, body: bytes, reader: asyncio.StreamReader
    ) -> tuple[int | None, str]:
        path = target.split("?", 1)[0]
        if path == "/v1/healthz" and method in ("GET", "HEAD"):
            reason = await self.healthy()
            return (200, "ok") if reason is None else (503, reason)
        if not path.startswith("/v1/") or method != "POST":
            return 404, f"unknown endpoint {method} {path}"
        name = path[len("/v1/") :]
        operation = self.operations.get(name)
        if operation is None:
            return 404, f"unknown operation {name!r}"
        fields = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        job_id = fields.get("job_id", "")
        self.activity.begin(job_id)
        try:
            if name in self.quick:
                return await self._outcome(name, operation, fields, time.monotonic())
            return await self._run(name, operation, fields, reader)
        finally:
            self.activity.end(job_id)

    async def _run(
        self, name: str, operation: Operation, fields: dict[str, str], reader: asyncio.StreamReader
    ) -> tuple[int | None, str]:
        started = time.monotonic()
        task = asyncio.ensure_future(operation(fields))
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({task, hangup}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            if not hangup.done():
                hangup.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            log.info(
                "%s job %s: caller went away after %.1f s; stopped",
                name,
                fields.get("job_id", ""),
                time.monotonic() - started,
            )
            return None, ""
        return await self._outcome(name, lambda _fields: task, fields, started)

    @staticmethod
    async def _outcome(
        name: str, operation: Operation, fields: Mapping[str, str], started: float
    ) -> tuple[int | None, str]:
        """Status and text for the operation's result (or its GatewayError), logged."""
        try:
            text = await operation(fields)
        except GatewayError as exc:
            log.info("%s job %s failed: %s", name, fields.get("job_id", ""), exc.message)
            return max(exc.status, 400) if exc.status < 600 else 500, exc.message
        except Exception as exc:
            log.exception("%s job %s: internal error", name, fields.get("job_id", ""))
            return 500, f"slurmlink gateway internal error in {name}: {exc}"
        log.debug("%s job %s ok in %.3f s", name, fields.get("job_id", ""), time.monotonic() - started)
        return 200, text

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, text: str) -> None:
        body = text.encode("utf-8", errors="replace")
        reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(status, "Error")
        head = (
            f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
