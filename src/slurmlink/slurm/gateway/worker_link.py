"""The front's connection to the gateway worker: the Lua's protocol, one request per connection.

Using the Lua's protocol keeps one server implementation for both sockets, and keeps its cancellation
rule: when the Lua caller hangs up, the front's forwarding task is cancelled, which closes the forwarded
connection, which makes the worker cancel the operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlencode

import h11

from slurmlink.slurm.gateway.operations import GatewayError

#: How long a forwarded callback waits for a worker that is (re)starting before it fails.
DEFAULT_CONNECT_WAIT = 10.0
MAX_RESPONSE = 1 << 20
_FORM = "application/x-www-form-urlencoded"


class WorkerLink:
    """Sends callbacks to the worker listening on ``socket_path``."""

    def __init__(self, socket_path: Path, connect_wait: float = DEFAULT_CONNECT_WAIT) -> None:
        self.socket_path = socket_path
        self.connect_wait = connect_wait

    async def _connect(self, wait: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            try:
                return await asyncio.open_unix_connection(str(self.socket_path))
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise GatewayError(
                        f"the slurmlink gateway's worker is not answering on {self.socket_path} ({exc}); "
                        "see the gateway's log",
                        503,
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def request(
        self,
        method: str,
        path: str,
        fields: Mapping[str, str] | None = None,
        *,
        connect_wait: float | None = None,
    ) -> tuple[int, str]:
        """(status, body text) of one request; raises GatewayError when the worker cannot be reached."""
        reader, writer = await self._connect(self.connect_wait if connect_wait is None else connect_wait)
        try:
            body = urlencode(dict(fields or {})).encode()
            head = [("Host", "slurmlink-gateway-worker"), ("Connection", "close")]
            if method == "POST":
                head += [
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Content-Length", str(len(body))),
                ]
            conn = h11.Connection(h11.CLIENT)
            out = conn.send(h11.Request(method=method, target=path, headers=head))
            if method == "POST":
                out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            writer.write(out)
            await writer.drain()
            return await _read_response(conn, reader)
        except (ConnectionError, h11.ProtocolError) as exc:
            raise GatewayError(f"the slurmlink gateway's worker dropped the request: {exc}", 502) from exc
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def call(self, operation: str, fields: Mapping[str, str]) -> str:
        """Run ``operation`` on the worker: its text, or GatewayError with the worker's status and message."""
        status, text = await self.request("POST", f"/v1/{operation}", fields)
        if status != 200:
            raise GatewayError(text, status)
        return text

    async def healthy(self) -> str | None:
        """None when the worker answers its health check with 200, else why not."""
        try:
            status, text = await asyncio.wait_for(self.request("GET", "/v1/healthz", connect_wait=0), 2.0)
        except (GatewayError, TimeoutError) as exc:
            return f"gateway worker: {exc}"
        return None if status == 200 else f"gateway worker: {text}"


async def _read_response(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[int, str]:
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_RESPONSE:
                raise h11.RemoteProtocolError("response too large")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, body.decode("utf-8", errors="replace")
