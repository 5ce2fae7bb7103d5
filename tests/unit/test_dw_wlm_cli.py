"""``slurmlink dw-wlm-cli``: the argument forms Slurm's burst_buffer/datawarp passes (specs §3.3-3.4),
sizes, the DataWarp JSON it reads back, and what each call asks the gateway.

The calls go over a real Unix socket to the gateway's real HTTP server (``GatewayServer``) whose
operations record their form fields and answer like the gateway does, so the transport and the
argv-to-request mapping are the ones Slurm gets.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from slurmlink.slurm import datawarp as dw
from slurmlink.slurm.gateway.datawarp import persistent_session_id
from slurmlink.slurm.gateway.operations import GatewayError
from slurmlink.slurm.gateway.server import GatewayServer
from slurmlink.slurm.plugin import datawarp_conf_text, render_datawarp_wrapper

GiB = 1 << 30


def words(text: str) -> list[str]:
    """An argv written as Slurm logs it."""
    return text.split()


# ---- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "function", "options"),
    [
        (["--function", "pools"], "pools", {}),
        (
            ["--function", "job_process", "--job", "/ss/hash.1/job.1/script"],
            "job_process",
            {"job": "/ss/hash.1/job.1/script"},
        ),
        (
            words(
                "--function setup --token 1 --caller SLURM --user 2001 --groupid 2001 --capacity default:3GB "
                "--job /ss/hash.1/job.1/script --nodehostnamefile /ss/hash.1/job.1/client_nids"
            ),
            "setup",
            {
                "token": "1",
                "caller": "SLURM",
                "user": "2001",
                "groupid": "2001",
                "capacity": "default:3GB",
                "job": "/ss/hash.1/job.1/script",
                "nodefile": "/ss/hash.1/job.1/client_nids",
            },
        ),
        (["--function", "real_size", "--token", "7"], "real_size", {"token": "7"}),
        (
            words("--function paths --job /s/script --token 1 --pathfile /s/path"),
            "paths",
            {"job": "/s/script", "token": "1", "pathfile": "/s/path"},
        ),
        (
            words("--function pre_run --token 1 --job /s/script --nidlistfile /s/client_nids"),
            "pre_run",
            {"token": "1", "job": "/s/script", "nodefile": "/s/client_nids"},
        ),
        (
            words("--function teardown --token mybuf --job /s/script --hurry"),
            "teardown",
            {"token": "mybuf", "job": "/s/script", "hurry": "true"},
        ),
        (
            words(
                "--function create_persistent -c CLI -t mybuf -u 2001 -C default:2147483648 "
                "-a striped -T scratch"
            ),
            "create_persistent",
            {
                "caller": "CLI",
                "token": "mybuf",
                "user": "2001",
                "capacity": "default:2147483648",
                "access": "striped",
                "type": "scratch",
            },
        ),
    ],
)
def test_the_plugins_argument_forms_parse(argv: list[str], function: str, options: dict[str, str]) -> None:
    call = dw.parse_args(argv)
    assert call.function == function and dict(call.options) == options


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], ["no function"]),
        (["--function", "swap"], ["invalid function", "'swap'"]),
        (["--function", "setup", "--token", "1"], ["missing", "--capacity", "--groupid", "--user"]),
        (["--function", "data_in", "--token", "1", "--bogus", "x"], ["unknown option", "--bogus"]),
        (["--function", "paths", "--token", "1", "--pathfile"], ["--pathfile needs a value"]),
    ],
)
def test_bad_arguments_are_one_clear_line(argv: list[str], words: list[str]) -> None:
    with pytest.raises(dw.DataWarpError) as caught:
        dw.parse_args(argv)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ---- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", (0, None)),
        ("2147483648", (2 * GiB, None)),
        ("4N", (0, 4)),
        ("1KiB", (1024, None)),
        ("3MiB", (3 << 20, None)),
        ("3MB", (3_000_000, None)),
        ("3GiB", (3 * GiB, None)),
        ("3GB", (3_000_000_000, None)),
        ("2TiB", (2 << 40, None)),
        ("2TB", (2 * 10**12, None)),
        ("1PiB", (1 << 50, None)),
        ("1PB", (10**15, None)),
        ("1.5TiB", (3 << 39, None)),
        ("1.5GB", (1_500_000_000, None)),
        ("10G", (10 * GiB, None)),  # a bare unit is binary, as in Slurm
    ],
)
def test_every_size_slurm_writes_parses(text: str, expected: tuple[int, int | None]) -> None:
    assert dw.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "1.5", "1.5N", "-1GiB", "1XB", "1 GiB"])
def test_what_is_not_a_size_is_refused(text: str) -> None:
    with pytest.raises(dw.DataWarpError, match=r"size|whole number"):
        dw.parse_size(text)


def test_capacity_is_pool_then_size() -> None:
    assert dw.parse_capacity("gluster:3GB") == dw.Capacity("gluster", 3_000_000_000)
    assert dw.parse_capacity("wlm_pool:2N") == dw.Capacity("wlm_pool", 0, 2)
    with pytest.raises(dw.DataWarpError, match="<pool>:<size>"):
        dw.parse_capacity("3GB")


# ---- JSON Slurm reads ---------------------------------------------------------------------------

SESSIONS = {
    "sessions": [
        {"id": 12, "token": "12", "owner": 2001, "created": 1700000000, "bytes": 2 * GiB, "nodes": 2},
        {"id": 3 << 30, "token": "keep", "owner": 2001, "created": 1700000001, "bytes": GiB, "nodes": 3},
    ]
}


def test_pools_json_has_datawarps_fields() -> None:
    answer = '{"pools":[{"id":"gluster","granularity":1073741824,"quantity":9,"free":7}]}'
    assert json.loads(dw.pools_json(answer)) == {
        "pools": [{"id": "gluster", "units": "bytes", "granularity": GiB, "quantity": 9, "free": 7}]
    }
    assert json.loads(dw.pools_json("")) == {"pools": []}


def test_sessions_and_instances_json_link_by_numeric_session_id() -> None:
    sessions = json.loads(dw.sessions_json(json.dumps(SESSIONS)))["sessions"]
    assert sessions == [
        {"id": 12, "created": 1700000000, "owner": 2001, "token": "12"},
        {"id": 3 << 30, "created": 1700000001, "owner": 2001, "token": "keep"},
    ]
    instances = json.loads(dw.instances_json(json.dumps(SESSIONS)))["instances"]
    assert instances == [
        {"id": 12, "capacity": {"bytes": 2 * GiB, "nodes": 2}, "links": {"session": 12}},
        {"id": 3 << 30, "capacity": {"bytes": GiB, "nodes": 3}, "links": {"session": 3 << 30}},
    ]


def test_real_size_json() -> None:
    assert json.loads(dw.real_size_json("5", str(3 * GiB))) == {
        "token": "5",
        "capacity": 3 * GiB,
        "units": "bytes",
    }
    assert json.loads(dw.real_size_json("5", "")) == {"token": "5", "capacity": 0, "units": "bytes"}


def test_persistent_session_ids_are_stable_and_apart_from_job_ids() -> None:
    first = persistent_session_id("0b7c-uid")
    assert first == persistent_session_id("0b7c-uid") != persistent_session_id("other-uid")
    assert (1 << 31) <= first < (1 << 32)


# ---- calls through the gateway's socket ---------------------------------------------------------


class RecordingGateway:
    """The gateway's HTTP server on a real socket, in a thread; operations record and answer."""

    def __init__(self, socket_path: Path, answers: Mapping[str, str | GatewayError]) -> None:
        self.socket_path = socket_path
        self.answers = dict(answers)
        self.calls: list[tuple[str, dict[str, str]]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _operation(self, name: str):  # type: ignore[no-untyped-def]
        async def operation(fields: Mapping[str, str]) -> str:
            self.calls.append((name, dict(fields)))
            answer = self.answers.get(name, "")
            if isinstance(answer, GatewayError):
                raise answer
            return answer

        return operation

    def _run(self) -> None:
        async def main() -> None:
            names = [
                "job_process",
                "pools",
                "setup",
                "data_in",
                "real_size",
                "paths",
                "pre_run",
                "post_run",
                "data_out",
                "teardown",
                "status",
                "sessions",
                "create_persistent",
                "destroy_persistent",
            ]
            server = GatewayServer(self.socket_path, {n: self._operation(n) for n in names}, self._healthy)
            await server.start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await server.stop()

        self._loop.run_until_complete(main())

    @staticmethod
    async def _healthy() -> None:
        return None

    def __enter__(self) -> RecordingGateway:
        self._thread.start()
        assert self._ready.wait(10), "gateway server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture()
def socket_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "gw.sock"


def _main(socket_path: Path, *argv: str) -> tuple[int, list[str]]:
    printed: list[str] = []
    code = dw.main(["--socket", str(socket_path), *argv], out=printed.append)
    return code, printed


def test_setup_then_the_job_callbacks_reach_the_gateways_operations(socket_path: Path) -> None:
    with RecordingGateway(socket_path, {"real_size": str(2 * GiB)}) as gw:
        script = "/ss/hash.4/job.4/script"
        setup = words("--token 4 --caller SLURM --user 2001 --groupid 2002 --capacity gluster:1536MiB --job")
        assert _main(socket_path, "--function", "setup", *setup, script) == (0, [])
        assert _main(socket_path, "--function", "data_in", "--token", "4", "--job", script) == (0, [])
        code, out = _main(socket_path, "--function", "real_size", "--token", "4")
        assert code == 0 and json.loads(out[0]) == {"token": "4", "capacity": 2 * GiB, "units": "bytes"}
        assert _main(socket_path, "--function", "pre_run", "--token", "4", "--job", script) == (0, [])
        assert _main(socket_path, "--function", "teardown", "--token", "4", "--job", script) == (0, [])
    assert gw.calls == [
        (
            "setup",
            {
                "job_id": "4",
                "uid": "2001",
                "gid": "2002",
                "pool": "gluster",
                "size": str(1536 << 20),
                "script": script,
            },
        ),
        ("data_in", {"job_id": "4", "script": script}),
        ("real_size", {"job_id": "4"}),
        ("pre_run", {"job_id": "4", "script": script}),
        ("teardown", {"job_id": "4", "script": script, "hurry": "false"}),
    ]


def test_paths_writes_the_pathfile(socket_path: Path, tmp_path: Path) -> None:
    env = "DW_JOB_STRIPED=/mnt/slurmlink/bb9/job/striped\nDW_WORKFLOW_NAME=bb9\n"
    pathfile = tmp_path / "path"
    with RecordingGateway(socket_path, {"paths": env}):
        code, _ = _main(
            socket_path,
            "--function",
            "paths",
            "--job",
            "/s/script",
            "--token",
            "9",
            "--pathfile",
            str(pathfile),
        )
    assert code == 0 and pathfile.read_text() == env


def test_persistent_buffers_are_created_and_destroyed_by_name(socket_path: Path) -> None:
    create = "--function create_persistent -c CLI -t keep -u 2001 -C gluster:1073741824 -a striped -T scratch"
    with RecordingGateway(socket_path, {}) as gw:
        assert _main(socket_path, *words(create)) == (0, ["created keep"])
        assert _main(socket_path, *words("--function teardown --token keep --job /s/script --hurry")) == (
            0,
            [],
        )
    assert gw.calls == [
        (
            "create_persistent",
            {
                "name": "keep",
                "uid": "2001",
                "pool": "gluster",
                "size": str(GiB),
                "access": "striped",
                "type": "scratch",
            },
        ),
        ("destroy_persistent", {"name": "keep", "hurry": "true"}),
    ]


def test_show_functions_and_status(socket_path: Path) -> None:
    with RecordingGateway(socket_path, {"sessions": json.dumps(SESSIONS), "status": "POOL  TYPES\n"}) as gw:
        code, out = _main(socket_path, "--function", "show_sessions")
        assert code == 0 and [s["token"] for s in json.loads(out[0])["sessions"]] == ["12", "keep"]
        code, out = _main(socket_path, "--function", "show_instances")
        assert code == 0 and [i["capacity"]["bytes"] for i in json.loads(out[0])["instances"]] == [
            2 * GiB,
            GiB,
        ]
        assert _main(socket_path, "--function", "show_configurations") == (0, ['{"configurations": []}'])
        assert _main(socket_path, "--status", "pools") == (0, ["POOL  TYPES"])
    assert ("status", {"args": "pools"}) in gw.calls


def test_a_refusal_is_exit_1_and_the_gateways_line_on_stderr(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = GatewayError("capacity=100GiB is more than pool gluster can ever provide (12GiB)")
    with RecordingGateway(socket_path, {"job_process": refusal}):
        code, out = _main(socket_path, "--function", "job_process", "--job", "/ss/hash.3/job.3/script")
    assert (code, out) == (1, [])
    assert capsys.readouterr().err == "capacity=100GiB is more than pool gluster can ever provide (12GiB)\n"


def test_no_gateway_is_a_clear_error(socket_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(socket_path, "--function", "pools") == (1, [])
    err = capsys.readouterr().err
    assert "cannot reach the slurmlink gateway" in err and str(socket_path) in err


# ---- what the dev cluster writes for Slurm ------------------------------------------------------


def test_wrapper_and_conf_hold_only_checked_paths() -> None:
    text = render_datawarp_wrapper("/usr/bin/python3", "/opt/sl/src", "/run/sl/gw.sock", status=True)
    assert text.startswith("#!/bin/sh\n")
    exec_line = 'exec /usr/bin/python3 -S -m slurmlink.slurm.datawarp --socket /run/sl/gw.sock --status "$@"'
    assert exec_line in text
    with pytest.raises(ValueError, match=r"plain|letters"):
        render_datawarp_wrapper("/usr/bin/python3", "/opt/sl/src", "/run/x;rm -rf /")
    conf = datawarp_conf_text("/etc/sl/dw_wlm_cli", "/etc/sl/dwstat", "gluster")
    assert "GetSysState=/etc/sl/dw_wlm_cli\n" in conf and "DefaultPool=gluster\n" in conf
    assert "Flags=EnablePersistent,TeardownFailure\n" in conf
