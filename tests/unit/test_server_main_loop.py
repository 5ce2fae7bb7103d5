"""The API server's housekeeping loop: a once-a-second tick, and a stop request that wakes it."""

from __future__ import annotations

import asyncio
import signal
import time

import uvicorn

from slurmlink.server import _Server


async def _app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("no request is made")


def test_a_stop_request_ends_the_loop_before_its_next_tick() -> None:
    async def main() -> float:
        server = _Server(uvicorn.Config(_app, log_config=None), on_shutdown=lambda: None)
        loop_task = asyncio.create_task(server.main_loop())
        await asyncio.sleep(0)  # the loop has started and waits for its tick
        assert not loop_task.done()
        asked = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        await asyncio.wait_for(loop_task, timeout=0.5)  # the tick is a second away
        return time.monotonic() - asked

    assert asyncio.run(main()) < 0.5


def test_the_date_header_is_set_at_the_first_tick() -> None:
    async def main() -> list[tuple[bytes, bytes]]:
        server = _Server(uvicorn.Config(_app, log_config=None), on_shutdown=lambda: None)
        loop_task = asyncio.create_task(server.main_loop())
        await asyncio.sleep(0)
        headers = list(server.server_state.default_headers)
        server.handle_exit(signal.SIGINT, None)
        await asyncio.wait_for(loop_task, timeout=0.5)
        return headers

    assert [name for name, _ in asyncio.run(main())] == [b"date"]
