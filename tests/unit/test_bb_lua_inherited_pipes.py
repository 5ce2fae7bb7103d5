"""burst_buffer.lua, run as Slurm 22.05 runs an async call, lets go of the pipes of other calls.

Slurm 22.05's slurmscriptd forks a child per async call without closing what it has open, so a child
holds the write end of the pipe of every call forked at the same moment, and slurmscriptd sees those
calls end only once this child has ended too. The script closes such write ends in a forked script
child (named slurmscriptd, leader of its process group) before it waits for the gateway, and nowhere
else. Here the real ``lua5.1`` (Slurm links liblua5.1) runs the rendered script with the descriptors
such a child has: another call's pipe (both ends, inherited), its own answer pipe (the write end only),
and /dev/null open for reading and for writing. Once the call, unanswered for ``release_after``
seconds, waits on without a timeout, the test reads the child's descriptor table from /proc.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slurmlink.slurm import plugin
from support.lua import require_luasocket
from support.waiting import wait_for

#: The poll system call's number on x86-64 (LuaSocket waits with poll).
POLL = 7

HARNESS = """
if arg[2] == "slurmscriptd" then
    local comm = assert(io.open("/proc/self/comm", "w"))
    comm:write("slurmscriptd")
    comm:close()
end
slurm = {
    SUCCESS = 0, ERROR = -1,
    log_info = function() end,
    log_error = function(fmt, ...) io.stderr:write(string.format(fmt, ...), "\\n") end,
}
dofile(arg[1])
local rc = slurm_bb_data_in("7", "/var/spool/slurmctld/hash.7/job.7/script")
io.stdout:write(tostring(rc), "\\n")
"""


class HeldGateway:
    """A gateway socket that takes one request and answers 200 only when released."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.received = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            self.received.set()
            self.release.wait(30)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.release.set()
        self.server.close()


def _waits_without_timeout(pid: int) -> bool:
    """Whether ``pid`` sits in ``poll`` with no timeout: the call's wait after ``release_after``."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return len(fields) > 3 and fields[0] == str(POLL) and int(fields[3], 16) & 0xFFFFFFFF == 0xFFFFFFFF


@dataclass
class Descriptors:
    """What the parent hands the child, numbered as in the child."""

    other_read: int
    other_write: int
    own_write: int
    null_read: int
    null_write: int

    def all(self) -> tuple[int, ...]:
        return (self.other_read, self.other_write, self.own_write, self.null_read, self.null_write)


@pytest.fixture
def lua_dir() -> Iterator[Path]:
    require_luasocket()
    if shutil.which("lua5.1") is None:
        pytest.skip("lua5.1 is not installed (apt-get install lua5.1)")
    path = Path(tempfile.mkdtemp(prefix="sl-lua-", dir="/tmp"))  # short: a Unix socket lives here
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_call(lua_dir: Path, name: str, *, group_leader: bool) -> tuple[Descriptors, set[int], int, str]:
    """Run one data_in call as described above; returns (fds, fds open in the child while it waited,
    its exit code, its stdout)."""
    sock = lua_dir / "gw.sock"
    script = lua_dir / "burst_buffer.lua"
    script.write_text(plugin.render_burst_buffer_lua(sock, release_after=0.01))
    harness = lua_dir / "harness.lua"
    harness.write_text(HARNESS)
    gateway = HeldGateway(sock)
    other_read, other_write = os.pipe()
    own_read, own_write = os.pipe()
    os.close(own_read)  # slurmscriptd closes the child's read end of its own pipe
    null_read = os.open(os.devnull, os.O_RDONLY)
    null_write = os.open(os.devnull, os.O_WRONLY)
    fds = Descriptors(other_read, other_write, own_write, null_read, null_write)
    still_open = set(fds.all())
    try:
        proc = subprocess.Popen(
            ["lua5.1", str(harness), str(script), name],
            pass_fds=fds.all(),
            start_new_session=group_leader,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert gateway.received.wait(20), "the call never reached the gateway"
            wait_for(lambda: _waits_without_timeout(proc.pid), timeout=20, interval=0.01, message="the wait")
            open_in_child = {int(n) for n in os.listdir(f"/proc/{proc.pid}/fd")}
            if name == "slurmscriptd" and group_leader and other_write not in open_in_child:
                # The other call's pipe has no writer left but the parent's copy: once the parent
                # closes that too, its reader sees the end at once, while this call still waits.
                os.close(other_write)
                still_open.discard(other_write)
                ready, _, _ = select.select([other_read], [], [], 5)
                assert ready and os.read(other_read, 1) == b""
                assert proc.poll() is None
            gateway.release.set()
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        return fds, open_in_child, proc.returncode, out + err
    finally:
        gateway.close()
        for fd in still_open:
            os.close(fd)


def test_a_forked_script_child_lets_go_of_other_calls_pipes(lua_dir: Path) -> None:
    fds, open_in_child, code, output = _run_call(lua_dir, "slurmscriptd", group_leader=True)
    assert code == 0 and output.strip() == "0", output
    assert fds.other_write not in open_in_child
    # Its own answer pipe, the other pipe's read end and files stay open.
    assert {fds.other_read, fds.own_write, fds.null_read, fds.null_write} <= open_in_child


@pytest.mark.parametrize(
    ("name", "group_leader"),
    [("lua5.1", True), ("slurmscriptd", False)],
    ids=["not-named-slurmscriptd", "not-its-own-process-group"],
)
def test_nothing_is_closed_outside_a_forked_script_child(
    lua_dir: Path, name: str, group_leader: bool
) -> None:
    fds, open_in_child, code, output = _run_call(lua_dir, name, group_leader=group_leader)
    assert code == 0 and output.strip() == "0", output
    assert set(fds.all()) <= open_in_child
