"""A client of the gateway's Unix socket using the standard library only.

The programs Slurm starts for every job (``dw_wlm_cli`` for burst_buffer/datawarp, the bank's
PrologSlurmctld and EpilogSlurmctld) talk to the running gateway through this: one ``POST /v1/<operation>``
(HTTP/1.0, URL-encoded fields) per connection. Importing nothing beyond the standard library keeps their
start-up short; slurmctld waits for some of them under its job lock.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from urllib.parse import urlencode

#: Sync calls: one connect attempt, answer within this many seconds.
_SYNC_TIMEOUT = 5.0
#: How long the other calls retry connecting, so a gateway restart fails no job.
_CONNECT_RETRY = 10.0


class GatewayCallError(Exception):
    """The call failed; ``str(e)`` is the one line to show (the gateway's message when it answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Gateway:
    """``POST /v1/<operation>`` over the gateway's Unix socket (HTTP/1.0, one request per connection)."""

    def __init__(self, socket_path: str, *, connect_retry: float = _CONNECT_RETRY) -> None:
        self.socket_path = socket_path
        self.connect_retry = connect_retry

    def call(self, operation: str, fields: Mapping[str, str], *, sync: bool) -> str:
        body = urlencode(dict(fields)).encode()
        request = (
            f"POST /v1/{operation} HTTP/1.0\r\nHost: slurmlink\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        deadline = time.monotonic() + (0 if sync else self.connect_retry)
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(_SYNC_TIMEOUT if sync else None)
                sock.connect(self.socket_path)
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise GatewayCallError(
                        f"slurmlink: cannot reach the slurmlink gateway at {self.socket_path}: "
                        f"{exc.strerror or exc} (is 'slurmlink slurm gateway' running?)"
                    ) from None
                time.sleep(0.2)
        with sock:
            try:
                sock.sendall(request)
                chunks = []
                while data := sock.recv(65536):
                    chunks.append(data)
            except OSError as exc:
                raise GatewayCallError(f"slurmlink gateway: {operation}: {exc.strerror or exc}") from None
        head, _, reply = b"".join(chunks).partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise GatewayCallError(f"slurmlink gateway: {operation}: no answer (did the gateway restart?)")
        text = reply.decode("utf-8", errors="replace")
        if int(parts[1]) != 200:
            message = " ".join(text.split()) or f"slurmlink gateway: {operation} failed"
            raise GatewayCallError(message, int(parts[1]))
        return text
