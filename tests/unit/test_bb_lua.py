"""slurmlink's burst_buffer.lua run in real Lua 5.1 + LuaSocket against a fault-injecting fake gateway.

The fake gateway stands in for ``slurmlink slurm gateway`` only so that every transport branch of the script
(missing socket, stalls, garbage, early close) can be provoked on demand; the gateway's own behaviour is
tested elsewhere.
"""

from __future__ import annotations

import json
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from slurmlink.slurm import plugin
from slurmlink.slurm.devcluster import placeholder_burst_buffer
from support.lua import BBScript, lua51, require_luasocket
from support.waiting import wait_for

SUCCESS, ERROR = 0, -1
SCRIPT_12 = "/var/spool/slurmctld/hash.2/job.12/script"
INSTALL_HINT = "slurmlink: LuaSocket is not installed (apt-get install lua-socket)"


# --------------------------------------------------------------------------------------------------------
# Fake gateway
# --------------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """Answer with this status and body (optionally only after ``delay`` seconds)."""

    status: int = 200
    body: str = ""
    delay: float = 0.0


@dataclass
class Raw:
    """Write these bytes verbatim, then close (garbage / truncated answers)."""

    data: bytes


@dataclass
class Close:
    """Read the request, then close without answering."""


@dataclass
class Stall:
    """Read the request and never answer (until the test ends)."""


Action = Reply | Raw | Close | Stall


@dataclass
class Recorded:
    """One request as the gateway saw it."""

    method: str
    path: str
    version: str
    headers: dict[str, str]
    raw_body: bytes
    fields: dict[str, str] = field(default_factory=dict)


class FakeGateway:
    """A threaded HTTP/1.0-over-Unix-socket server answering from a per-test script of actions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[Recorded] = []
        self.actions: list[Action] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def answer(self, *actions: Action) -> None:
        """Queue the answers to the next requests (a plain empty 200 once the queue is empty)."""
        with self._lock:
            self.actions.extend(actions)

    def start(self) -> None:
        gateway = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                gateway._handle(self.rfile, self.wfile)

        server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.path.unlink(missing_ok=True)

    def _handle(self, rfile: Any, wfile: Any) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            chunk = rfile.readline()
            if not chunk:
                return
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        raw_body = rfile.read(int(headers.get("content-length", "0")))
        pairs = urllib.parse.parse_qsl(
            raw_body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(raw_body), errors="strict"
        )
        recorded = Recorded(method, path, version, headers, raw_body, dict(pairs))
        assert len(recorded.fields) == len(pairs), f"duplicate form fields: {pairs}"
        with self._lock:
            self.requests.append(recorded)
            action = self.actions.pop(0) if self.actions else Reply()
        if isinstance(action, Reply):
            if action.delay:
                self.release.wait(action.delay)
            body = action.body.encode("utf-8")
            wfile.write(
                f"HTTP/1.0 {action.status} X\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode("ascii")
                + body
            )
        elif isinstance(action, Raw):
            wfile.write(action.data)
        elif isinstance(action, Stall):
            self.release.wait(30)

    def only_request(self) -> Recorded:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


# --------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for the socket (AF_UNIX paths are limited to ~107 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="slbb", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gateway(short_dir: Path) -> Iterator[FakeGateway]:
    gw = FakeGateway(short_dir / "gw.sock")
    gw.start()
    yield gw
    gw.stop()


ScriptFactory = Callable[..., BBScript]


@pytest.fixture
def make_script(short_dir: Path) -> ScriptFactory:
    """Render the plugin for the fixture's socket path and load it into a fresh Lua state."""
    require_luasocket()

    def make(*, prelude: str = "", socket_path: Path | None = None, **render: Any) -> BBScript:
        text = plugin.render_burst_buffer_lua(socket_path or short_dir / "gw.sock", **render)
        return BBScript(text, prelude=prelude)

    return make


@pytest.fixture
def bb(make_script: ScriptFactory, gateway: FakeGateway) -> BBScript:
    return make_script()


# --------------------------------------------------------------------------------------------------------
# plugin.py
# --------------------------------------------------------------------------------------------------------


def test_render_fills_every_placeholder() -> None:
    text = plugin.render_burst_buffer_lua(
        "/run/x/bb.sock", sync_timeout=2.5, connect_retry=7, release_after=0.25, slurm_api="23.02"
    )
    assert "@" not in text.split("--]]", 1)[1]
    assert 'local SOCKET_PATH = "/run/x/bb.sock"\n' in text
    assert "local SYNC_TIMEOUT = 2.5\n" in text
    assert "local CONNECT_RETRY = 7.0\n" in text
    assert "local RELEASE_AFTER = 0.25\n" in text
    assert 'local SLURM_API = "23.02"\n' in text
    default = plugin.render_burst_buffer_lua(plugin.DEFAULT_SOCKET_PATH)
    assert 'local SOCKET_PATH = "/run/slurmlink/slurm-bb.sock"\n' in default
    assert "local SYNC_TIMEOUT = 5.0\n" in default and "local CONNECT_RETRY = 10.0\n" in default
    assert "local RELEASE_AFTER = 0.5\n" in default
    assert 'local SLURM_API = "22.05"\n' in default


def test_rendered_script_parses_with_luac(tmp_path: Path) -> None:
    luac = shutil.which("luac5.1")
    if luac is None:
        pytest.skip("luac5.1 is not installed (apt-get install lua5.1)")
    target = tmp_path / "burst_buffer.lua"
    target.write_text(plugin.render_burst_buffer_lua('/run/a b/"q"\n.sock'), encoding="utf-8")
    result = subprocess.run([luac, "-p", str(target)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "text",
    [
        "",
        'a "quoted" value',
        "back\\slash\\",
        "lines\nand\r\ttabs",
        "nul \x00 inside",
        "\x01" + "23 escape followed by digits",
        "del\x7f",
        "ünïcødé ✓ 日本",
        "]]==] long bracket",
        "@SOCKET_PATH@",
        "'single' quotes",
    ],
)
def test_lua_string_literal_round_trips_through_lua(text: str) -> None:
    literal = plugin.lua_string_literal(text)
    assert literal.isascii() and literal.isprintable()
    runtime = lua51().LuaRuntime()
    assert runtime.eval(literal) == text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slurm_api": "22"}, "slurm_api"),
        ({"slurm_api": "22.05.8"}, "slurm_api"),
        ({"slurm_api": "v22.05"}, "slurm_api"),
        ({"slurm_api": ""}, "slurm_api"),
        ({"sync_timeout": 0}, "sync_timeout"),
        ({"sync_timeout": -1}, "sync_timeout"),
        ({"sync_timeout": float("inf")}, "sync_timeout"),
        ({"connect_retry": 0}, "connect_retry"),
        ({"connect_retry": float("nan")}, "connect_retry"),
        ({"release_after": 0}, "release_after"),
        ({"socket_path": "relative.sock"}, "absolute"),
        ({"socket_path": "/" + "x" * 107}, "longer"),
        ({"socket_path": "/a\x00b"}, "invalid"),
        ({"socket_path": ""}, "invalid"),
    ],
)
def test_render_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    socket_path = kwargs.pop("socket_path", "/run/x.sock")
    with pytest.raises(ValueError, match=match):
        plugin.render_burst_buffer_lua(socket_path, **kwargs)


def test_render_rejects_unknown_or_missing_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    good = "@SOCKET_PATH@ @SYNC_TIMEOUT@ @CONNECT_RETRY@ @RELEASE_AFTER@ @SLURM_API@ @GATEWAY_CLIENT@"

    def resources(template: str) -> Callable[[str], str]:
        return lambda name: "client" if name == "gateway_client.lua" else template

    monkeypatch.setattr(plugin, "_read_resource", resources(good + " @EXTRA@"))
    with pytest.raises(ValueError, match="@EXTRA@"):
        plugin.render_burst_buffer_lua("/run/x.sock")
    monkeypatch.setattr(plugin, "_read_resource", resources("@SOCKET_PATH@ @SYNC_TIMEOUT@"))
    with pytest.raises(ValueError, match="@CONNECT_RETRY@"):
        plugin.render_burst_buffer_lua("/run/x.sock")
    # A value that looks like a placeholder is inserted verbatim, never expanded again.
    monkeypatch.setattr(plugin, "_read_resource", resources(good))
    rendered = plugin.render_burst_buffer_lua("/run/@SLURM_API@")
    assert rendered == '"/run/@SLURM_API@" 5.0 10.0 0.5 "22.05" client'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("slurm-wlm 22.05.8", "22.05"),
        ("slurm 23.02.7\n", "23.02"),
        ("slurm 24.05.0-0rc1", "24.05"),
        ("  slurm 25.11", "25.11"),
    ],
)
def test_slurm_api_version_parses(text: str, expected: str) -> None:
    assert plugin.slurm_api_version(text) == expected


@pytest.mark.parametrize("text", ["", "22.05.8", "slurm", "slurm x.y", "munge 0.5.15", "slurm 2205"])
def test_slurm_api_version_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a Slurm version"):
        plugin.slurm_api_version(text)


def test_burst_buffer_conf_text() -> None:
    text = plugin.burst_buffer_conf_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    assert settings == {
        "Directive": "DW",
        "Flags": "TeardownFailure",
        "StageInTimeout": "86400",
        "StageOutTimeout": "86400",
        "OtherTimeout": "300",
    }
    assert "STAGE_OUT" in text  # says why TeardownFailure matters


# --------------------------------------------------------------------------------------------------------
# Requests and callbacks
# --------------------------------------------------------------------------------------------------------


def test_job_process_22_05_sends_script_and_job_id_from_path(bb: BBScript, gateway: FakeGateway) -> None:
    assert bb.call("slurm_bb_job_process", SCRIPT_12) == (SUCCESS,)
    req = gateway.only_request()
    assert (req.method, req.path, req.version) == ("POST", "/v1/job_process", "HTTP/1.0")
    assert req.headers["host"] == "slurmlink"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert int(req.headers["content-length"]) == len(req.raw_body)
    assert req.fields == {"script": SCRIPT_12, "job_id": "12"}
    assert req.raw_body == b"script=%2Fvar%2Fspool%2Fslurmctld%2Fhash.2%2Fjob.12%2Fscript&job_id=12"
    assert bb.log == []  # quiet on the hot path


def test_job_process_23_02_uses_job_info_and_ids(bb: BBScript, gateway: FakeGateway) -> None:
    job_info = bb.table({"job_id": 4242, "user_id": 1001})
    assert bb.call("slurm_bb_job_process", SCRIPT_12, "1001", "1002", job_info) == (SUCCESS,)
    assert gateway.only_request().fields == {
        "script": SCRIPT_12,
        "job_id": "4242",
        "uid": "1001",
        "gid": "1002",
    }


def test_job_process_without_a_job_id_omits_it(bb: BBScript, gateway: FakeGateway) -> None:
    assert bb.call("slurm_bb_job_process", "/tmp/other/script.sh", None, None, bb.table({})) == (SUCCESS,)
    assert gateway.only_request().fields == {"script": "/tmp/other/script.sh"}


def test_job_process_rejection_returns_the_message(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(Reply(400, "unknown #DW directive 'foo'"))
    assert bb.call("slurm_bb_job_process", SCRIPT_12) == (ERROR, "unknown #DW directive 'foo'")
    assert [level for level, _ in bb.log] == ["info"]
    assert bb.log[0][1].startswith("slurmlink: job_process failed (HTTP 400)")


def test_pools(bb: BBScript, gateway: FakeGateway) -> None:
    pools = '{"pools":[{"id":"pool1","quantity":10,"granularity":1}]}'
    gateway.answer(Reply(200, pools), Reply(200, ""), Reply(500, ""))
    assert bb.call("slurm_bb_pools") == (SUCCESS, pools)
    assert bb.call("slurm_bb_pools") == (SUCCESS,)
    assert bb.call("slurm_bb_pools") == (ERROR, "slurmlink gateway: HTTP 500")
    assert [(r.path, r.raw_body, r.headers["content-length"]) for r in gateway.requests] == [
        ("/v1/pools", b"", "0")
    ] * 3


def test_setup_forwards_all_fields(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(Reply(200, "ignored"), Reply(409, "proposal failed"))
    args = ("12", "1001", "1002", "(null)", "0", SCRIPT_12)
    assert bb.call("slurm_bb_setup", *args) == (SUCCESS,)
    assert bb.call("slurm_bb_setup", *args, bb.table({"job_id": 12})) == (ERROR, "proposal failed")
    expected = {
        "job_id": "12",
        "uid": "1001",
        "gid": "1002",
        "pool": "(null)",
        "size": "0",
        "script": SCRIPT_12,
    }
    assert [(r.path, r.fields) for r in gateway.requests] == [("/v1/setup", expected)] * 2


@pytest.mark.parametrize("op", ["data_in", "pre_run", "post_run", "data_out"])
def test_stage_callbacks(bb: BBScript, gateway: FakeGateway, op: str) -> None:
    gateway.answer(Reply(200, ""), Reply(200, ""), Reply(500, f"DWS driver error(s):\n{op} broke"))
    assert bb.call(f"slurm_bb_{op}", "12", SCRIPT_12) == (SUCCESS,)
    assert bb.call(f"slurm_bb_{op}", "12", SCRIPT_12, "1001", "1002", bb.table({"job_id": 12})) == (SUCCESS,)
    assert bb.call(f"slurm_bb_{op}", "12", SCRIPT_12) == (ERROR, f"DWS driver error(s):\n{op} broke")
    assert [r.path for r in gateway.requests] == [f"/v1/{op}"] * 3
    assert [r.fields for r in gateway.requests] == [
        {"job_id": "12", "script": SCRIPT_12},
        {"job_id": "12", "script": SCRIPT_12, "uid": "1001", "gid": "1002"},
        {"job_id": "12", "script": SCRIPT_12},
    ]


@pytest.mark.parametrize("op", ["test_data_in", "test_data_out"])
def test_test_data_callbacks(bb: BBScript, gateway: FakeGateway, op: str) -> None:
    gateway.answer(Reply(200, "BUSY"), Reply(200, ""), Reply(500, "boom"))
    args = ("12", SCRIPT_12, "1001", "1002", bb.table({"job_id": 12}))
    assert bb.call(f"slurm_bb_{op}", *args) == (SUCCESS, "BUSY")
    assert bb.call(f"slurm_bb_{op}", *args) == (SUCCESS,)
    assert bb.call(f"slurm_bb_{op}", *args) == (ERROR, "boom")
    assert [(r.path, r.fields) for r in gateway.requests] == [
        (f"/v1/{op}", {"job_id": "12", "script": SCRIPT_12, "uid": "1001", "gid": "1002"})
    ] * 3


def test_real_size(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(Reply(200, "150"), Reply(200, "150\n"), Reply(200, ""), Reply(200, "lots"), Reply(500, ""))
    assert bb.call("slurm_bb_real_size", "12") == (SUCCESS, "150")
    assert bb.call("slurm_bb_real_size", "12", "1001", "1002", bb.table({})) == (SUCCESS, "150")
    assert bb.call("slurm_bb_real_size", "12") == (SUCCESS,)
    rc, msg = bb.call("slurm_bb_real_size", "12")
    assert rc == ERROR and "invalid size for job 12" in msg and "lots" in msg
    assert bb.call("slurm_bb_real_size", "12") == (ERROR, "slurmlink gateway: HTTP 500")
    assert [r.fields for r in gateway.requests[:2]] == [
        {"job_id": "12"},
        {"job_id": "12", "uid": "1001", "gid": "1002"},
    ]
    assert {r.path for r in gateway.requests} == {"/v1/real_size"}


def test_paths_writes_the_body_to_the_path_file(bb: BBScript, gateway: FakeGateway, tmp_path: Path) -> None:
    path_file = tmp_path / "path"
    path_file.write_text("stale content that must go\n")
    body = "DW_WORKFLOW_NAME=bb12\nDW_WORKFLOW_NAMESPACE=slurm\nDW_JOB_x=/mnt/ünï\n"
    gateway.answer(Reply(200, body))
    assert bb.call("slurm_bb_paths", "12", SCRIPT_12, str(path_file)) == (SUCCESS,)
    assert path_file.read_text(encoding="utf-8") == body
    req = gateway.only_request()
    assert req.path == "/v1/paths"
    assert req.fields == {"job_id": "12", "script": SCRIPT_12, "path_file": str(path_file)}


def test_paths_forwards_23_02_ids(bb: BBScript, gateway: FakeGateway, tmp_path: Path) -> None:
    path_file = tmp_path / "path"
    assert bb.call("slurm_bb_paths", "12", SCRIPT_12, str(path_file), "1001", "1002", bb.table({})) == (
        SUCCESS,
    )
    assert path_file.read_text() == ""
    assert gateway.only_request().fields == {
        "job_id": "12",
        "script": SCRIPT_12,
        "path_file": str(path_file),
        "uid": "1001",
        "gid": "1002",
    }


def test_paths_errors(bb: BBScript, gateway: FakeGateway, tmp_path: Path) -> None:
    unwritable = tmp_path / "missing-dir" / "path"
    gateway.answer(Reply(200, "A=1\n"), Reply(500, "workflow bb12 was deleted"))
    rc, msg = bb.call("slurm_bb_paths", "12", SCRIPT_12, str(unwritable))
    assert rc == ERROR
    assert msg.startswith(f"slurmlink: cannot write the burst buffer paths of job 12 to {unwritable}: ")
    assert "No such file or directory" in msg
    path_file = tmp_path / "path"
    assert bb.call("slurm_bb_paths", "12", SCRIPT_12, str(path_file)) == (ERROR, "workflow bb12 was deleted")
    assert not path_file.exists()
    assert [level for level, _ in bb.log] == ["info", "info"]


@pytest.mark.parametrize(
    ("hurry", "sent"),
    [
        ("true", "true"),
        ("false", "false"),
        ("TRUE", "false"),
        ("yes", "false"),
        ("", "false"),
        (None, "false"),
    ],
)
def test_teardown_normalises_hurry(bb: BBScript, gateway: FakeGateway, hurry: str | None, sent: str) -> None:
    assert bb.call("slurm_bb_job_teardown", "12", SCRIPT_12, hurry) == (SUCCESS,)
    req = gateway.only_request()
    assert req.path == "/v1/teardown"
    assert req.fields == {"job_id": "12", "script": SCRIPT_12, "hurry": sent}


def test_teardown_23_02_and_error(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(Reply(500, "TransientCondition for 30 s in Teardown: d: e"))
    rc = bb.call("slurm_bb_job_teardown", "12", SCRIPT_12, "true", "1001", "1002", bb.table({"job_id": 12}))
    assert rc == (ERROR, "TransientCondition for 30 s in Teardown: d: e")
    assert gateway.only_request().fields == {
        "job_id": "12",
        "script": SCRIPT_12,
        "hurry": "true",
        "uid": "1001",
        "gid": "1002",
    }


def test_get_status_22_05_all_args_are_words(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(
        Reply(200, "desiredState=DataIn currentState=DataIn status=Completed\n"), Reply(400, "usage")
    )
    assert bb.call("slurm_bb_get_status", "workflow", "12") == (
        SUCCESS,
        "desiredState=DataIn currentState=DataIn status=Completed\n",
    )
    assert bb.call("slurm_bb_get_status", "1001", "bogus") == (ERROR, "usage")
    assert [(r.path, r.fields) for r in gateway.requests] == [
        ("/v1/status", {"args": "workflow 12"}),
        ("/v1/status", {"args": "1001 bogus"}),
    ]


@pytest.mark.parametrize("api", ["23.02", "24.05", "100.00"])
def test_get_status_23_02_takes_uid_gid_first(
    make_script: ScriptFactory, gateway: FakeGateway, api: str
) -> None:
    bb = make_script(slurm_api=api)
    gateway.answer(Reply(200, "table"), Reply(200, ""))
    assert bb.call("slurm_bb_get_status", "1001", "1002", "workflows") == (SUCCESS, "table")
    assert bb.call("slurm_bb_get_status", "0", "0") == (SUCCESS, "")
    assert [r.fields for r in gateway.requests] == [
        {"args": "workflows", "uid": "1001", "gid": "1002"},
        {"args": "", "uid": "0", "gid": "0"},
    ]


def test_get_status_old_api_versions_are_22_05_style(
    make_script: ScriptFactory, gateway: FakeGateway
) -> None:
    bb = make_script(slurm_api="9.99")
    assert bb.call("slurm_bb_get_status", "1001", "1002", "workflows") == (SUCCESS, "")
    assert gateway.only_request().fields == {"args": "1001 1002 workflows"}


def test_values_are_url_encoded_and_decode_back_exactly(bb: BBScript, gateway: FakeGateway) -> None:
    nasty = "/tmp/a b&c=d%e+f\"g'h\ni\tj\r;ü✓日本~._-\\/job.77/script"
    assert bb.call("slurm_bb_job_process", nasty) == (SUCCESS,)
    req = gateway.only_request()
    assert req.fields == {"script": nasty, "job_id": "77"}
    raw = req.raw_body.decode("ascii")
    assert set(raw) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-%&=")
    for encoded in ("%20", "%26", "%3D", "%25", "%2B", "%22", "%27", "%0A", "%0D", "%C3%BC", "~._-"):
        assert encoded in raw


def test_script_never_shells_out(make_script: ScriptFactory, gateway: FakeGateway, tmp_path: Path) -> None:
    bb = make_script(
        prelude='os.execute = function() error("os.execute used") end\n'
        'io.popen = function() error("io.popen used") end\n'
    )
    calls: list[tuple[Any, ...]] = [
        ("slurm_bb_job_process", SCRIPT_12),
        ("slurm_bb_pools",),
        ("slurm_bb_setup", "12", "1", "1", "(null)", "0", SCRIPT_12),
        ("slurm_bb_data_in", "12", SCRIPT_12),
        ("slurm_bb_test_data_in", "12", SCRIPT_12),
        ("slurm_bb_real_size", "12"),
        ("slurm_bb_paths", "12", SCRIPT_12, str(tmp_path / "path")),
        ("slurm_bb_pre_run", "12", SCRIPT_12),
        ("slurm_bb_post_run", "12", SCRIPT_12),
        ("slurm_bb_data_out", "12", SCRIPT_12),
        ("slurm_bb_test_data_out", "12", SCRIPT_12),
        ("slurm_bb_job_teardown", "12", SCRIPT_12, "false"),
        ("slurm_bb_get_status", "workflows"),
    ]
    for call in calls:
        assert bb.call(*call)[0] == SUCCESS, call
    assert len(gateway.requests) == len(calls)
    assert bb.log == []


# --------------------------------------------------------------------------------------------------------
# Transport failures
# --------------------------------------------------------------------------------------------------------


def _unreachable(path: Path, err: str) -> str:
    hint = "(is 'slurmlink slurm gateway' running?)"
    return f"slurmlink: cannot reach the slurmlink gateway at {path}: {err} {hint}"


def test_missing_socket_sync_callback_tries_once(make_script: ScriptFactory, short_dir: Path) -> None:
    bb = make_script(connect_retry=5)
    sleeps: list[float] = []
    bb.hook_socket_sleep(sleeps.append)
    start = time.monotonic()
    result = bb.call("slurm_bb_job_process", SCRIPT_12)
    assert time.monotonic() - start < 1
    assert result == (ERROR, _unreachable(short_dir / "gw.sock", "No such file or directory"))
    assert sleeps == []
    assert bb.log == [("error", result[1] + " [job_process]")]


def test_not_listening_socket_reports_connection_refused(make_script: ScriptFactory, short_dir: Path) -> None:
    path = short_dir / "gw.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # exists, but nobody listens
        bb = make_script()
        assert bb.call("slurm_bb_paths", "12", SCRIPT_12, str(short_dir / "p")) == (
            ERROR,
            _unreachable(path, "connection refused"),
        )
    assert not (short_dir / "p").exists()


def test_missing_socket_async_callback_retries(make_script: ScriptFactory, short_dir: Path) -> None:
    bb = make_script(connect_retry=0.5)
    sleeps: list[float] = []
    bb.hook_socket_sleep(sleeps.append)
    start = time.monotonic()
    result = bb.call("slurm_bb_data_in", "12", SCRIPT_12)
    elapsed = time.monotonic() - start
    assert result == (ERROR, _unreachable(short_dir / "gw.sock", "No such file or directory"))
    assert 0.45 <= elapsed < 1.5, elapsed
    assert len(sleeps) >= 2 and all(0 < s <= 0.2 for s in sleeps), sleeps


def test_gateway_starting_during_the_retry_window_is_used(
    make_script: ScriptFactory, short_dir: Path
) -> None:
    late = FakeGateway(short_dir / "gw.sock")
    bb = make_script(connect_retry=5)
    bb.hook_socket_sleep(lambda seconds: None if late._server else late.start())
    try:
        late.answer(Reply(200, ""))
        start = time.monotonic()
        assert bb.call("slurm_bb_setup", "12", "1", "1", "(null)", "0", SCRIPT_12) == (SUCCESS,)
        assert time.monotonic() - start < 2
        assert late.only_request().path == "/v1/setup"
        assert bb.log == []
    finally:
        late.stop()


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("slurm_bb_job_process", (SCRIPT_12,)),
        ("slurm_bb_pools", ()),
        ("slurm_bb_paths", ("12", SCRIPT_12, "/x")),
    ],
)
def test_sync_callbacks_time_out(
    make_script: ScriptFactory, gateway: FakeGateway, short_dir: Path, call: str, args: tuple[str, ...]
) -> None:
    bb = make_script(sync_timeout=0.3)
    gateway.answer(Stall())
    start = time.monotonic()
    result = bb.call(call, *args)
    elapsed = time.monotonic() - start
    assert result == (
        ERROR,
        f"slurmlink: the slurmlink gateway at {short_dir / 'gw.sock'} did not answer within 0.3 s",
    )
    assert 0.25 <= elapsed < 1.0, elapsed
    assert len(gateway.requests) == 1
    assert bb.log[0][0] == "error"


def test_slow_answer_fails_sync_but_not_async_callbacks(
    make_script: ScriptFactory, gateway: FakeGateway
) -> None:
    bb = make_script(sync_timeout=0.3)
    gateway.answer(Reply(200, "", delay=0.6), Reply(200, "", delay=0.6))
    rc, msg = bb.call("slurm_bb_job_process", SCRIPT_12)
    assert rc == ERROR and "did not answer within 0.3 s" in msg
    start = time.monotonic()
    assert bb.call("slurm_bb_pre_run", "12", SCRIPT_12) == (SUCCESS,)
    assert time.monotonic() - start >= 0.55
    wait_for(lambda: len(gateway.requests) == 2, timeout=2, message="both requests recorded")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (
            Raw(b"garbage\r\n\r\n"),
            'unreadable answer from the slurmlink gateway at {path}: bad status line "garbage"',
        ),
        (
            Raw(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain"),
            "unreadable answer from the slurmlink gateway at {path}: no end of headers",
        ),
        (Raw(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nshort"), "truncated body (5 of 10 bytes)"),
    ],
)
def test_broken_answers(bb: BBScript, gateway: FakeGateway, action: Action, expected: str) -> None:
    gateway.answer(action)
    rc, msg = bb.call("slurm_bb_data_out", "12", SCRIPT_12)
    assert rc == ERROR
    assert msg.startswith("slurmlink: ")
    assert expected.format(path=gateway.path) in msg
    assert bb.log == [("error", msg + " [data_out]")]


def test_async_callback_is_sent_again_when_the_gateway_drops_it(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(Close(), Reply(502, "the slurmlink gateway's worker dropped the request"), Reply())
    assert bb.call("slurm_bb_data_out", "12", SCRIPT_12) == (SUCCESS,)
    assert [r.path for r in gateway.requests] == ["/v1/data_out"] * 3
    assert [level for level, _ in bb.log] == ["info", "info"]


def test_async_callback_gives_up_after_three_drops(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(Close(), Close(), Close())
    rc, msg = bb.call("slurm_bb_setup", "12", "1001", "1001", "(null)", "0", SCRIPT_12)
    assert rc == ERROR and "closed the connection without answering" in msg
    assert len(gateway.requests) == 3


def test_sync_callback_is_never_sent_twice(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(Close())
    rc, msg = bb.call("slurm_bb_job_process", SCRIPT_12)
    assert rc == ERROR and "closed the connection without answering" in msg
    assert len(gateway.requests) == 1


def test_answers_without_content_length_and_http_1_1(bb: BBScript, gateway: FakeGateway) -> None:
    gateway.answer(Raw(b"HTTP/1.1 200 OK\r\n\r\nBUSY"), Raw(b"HTTP/1.0 404 Not Found\n\nno such op"))
    assert bb.call("slurm_bb_test_data_in", "12", SCRIPT_12) == (SUCCESS, "BUSY")
    assert bb.call("slurm_bb_test_data_in", "12", SCRIPT_12) == (ERROR, "no such op")


CALLBACK_ARGS: list[tuple[Any, ...]] = [
    ("slurm_bb_job_process", SCRIPT_12),
    ("slurm_bb_pools",),
    ("slurm_bb_setup", "12", "1", "1", "(null)", "0", SCRIPT_12),
    ("slurm_bb_data_in", "12", SCRIPT_12),
    ("slurm_bb_test_data_in", "12", SCRIPT_12),
    ("slurm_bb_real_size", "12"),
    ("slurm_bb_paths", "12", SCRIPT_12, "/nonexistent/path"),
    ("slurm_bb_pre_run", "12", SCRIPT_12),
    ("slurm_bb_post_run", "12", SCRIPT_12),
    ("slurm_bb_data_out", "12", SCRIPT_12),
    ("slurm_bb_test_data_out", "12", SCRIPT_12),
    ("slurm_bb_job_teardown", "12", SCRIPT_12, "true"),
    ("slurm_bb_get_status", "workflows"),
]


@pytest.mark.parametrize("module", ["socket.core", "socket.unix"])
def test_missing_luasocket_fails_every_callback_with_the_install_hint(
    make_script: ScriptFactory, gateway: FakeGateway, module: str
) -> None:
    bb = make_script(prelude=f'package.preload["{module}"] = function() error("not installed") end')
    for call in CALLBACK_ARGS:
        assert bb.call(*call) == (ERROR, INSTALL_HINT), call
    assert gateway.requests == []


@pytest.mark.parametrize("capacity", [None, 1000])
def test_the_dev_clusters_placeholder_plugin_succeeds_everywhere_and_lists_its_pool(
    capacity: int | None,
) -> None:
    runtime = lua51().LuaRuntime()
    runtime.execute("slurm = {SUCCESS = 0, ERROR = -1}")
    runtime.execute(placeholder_burst_buffer(pool_capacity=capacity).lua_source)
    g = runtime.globals()
    for name in (
        "job_process",
        "setup",
        "data_in",
        "paths",
        "pre_run",
        "post_run",
        "data_out",
        "job_teardown",
    ):
        assert g[f"slurm_bb_{name}"]() == 0, name
    pools = g.slurm_bb_pools()
    if capacity is None:
        assert pools == 0
    else:
        rc, listing = pools
        assert rc == 0
        assert json.loads(listing) == {"pools": [{"id": "testpool", "quantity": 1000, "granularity": 1}]}
