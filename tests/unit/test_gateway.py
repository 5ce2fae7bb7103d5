"""The burst buffer gateway (docs/slurm-plugin.md), driven exactly as burst_buffer.lua drives it.

Every gateway test runs the real system in one event loop (``support.gateway.GatewayHarness``: SQLite
store, watch hub, resource service, ``bootstrap``, the workflow controller and the test driver) and
talks to a real ``Gateway`` over its Unix socket with HTTP/1.0 form posts. Only Slurm's client commands
are replaced (``RecordingSlurm``), since there is no Slurm here. Waits use deadlines, never bare sleeps.
Expected texts come from the contract (docs/slurm-plugin.md) and the test driver (specs/dws.md §4).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from slurmlink.auth.kubeconfig import KubeconfigCredentials
from slurmlink.auth.roles import SYSTEM
from slurmlink.client.http import HttpClient
from slurmlink.resources.dws.directiverule import DW_DIRECTIVE_RULE
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.slurm.commands import JobStatus
from slurmlink.slurm.gateway import script as scripts
from slurmlink.slurm.gateway.activity import CallbackActivity
from slurmlink.slurm.gateway.config import JOB_RUN_ANNOTATION
from slurmlink.slurm.gateway.operations import datawarp_persistent_names
from slurmlink.slurm.gateway.sweeper import MIN_QUIET, OrphanSweeper
from support.gateway import GatewayHarness, eventually, form, parse_response

Obj = dict[str, Any]
STATES = ("Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown")
#: The async callbacks Slurm makes after setup, in order, with the state each one completes.
STAGES = (("data_in", "DataIn"), ("pre_run", "PreRun"), ("post_run", "PostRun"), ("data_out", "DataOut"))
#: Release a driver entry held by ``action=wait``: the seed's exercise 1 patch.
RELEASE: list[Obj] = [
    {"op": "replace", "path": "/status/drivers/0/status", "value": "Completed"},
    {"op": "replace", "path": "/status/drivers/0/completed", "value": True},
]
#: Clear a TransientCondition: the seed's exercise 2 patch (completed entries may not carry an error).
CLEAR_TRANSIENT: list[Obj] = [*RELEASE, {"op": "remove", "path": "/status/drivers/0/error"}]


def job_script(*directives: str) -> str:
    """A batch script like the seed's: shebang, the directives, then a command."""
    return "#!/bin/bash\n" + "".join(f"{d}\n" for d in directives) + "/bin/hostname\n"


ALL_COMPLETE = job_script(*(f"#DW {state} action=complete" for state in STATES))


def run(body: Callable[[GatewayHarness], Awaitable[None]], timeout: float = 20.0, **harness: Any) -> None:
    """Run ``body`` against a fresh started harness, bounded by ``timeout`` so a hang fails the test."""

    async def main() -> None:
        async with GatewayHarness(**harness) as h:
            await asyncio.wait_for(body(h), timeout)

    asyncio.run(main())


async def setup_job(h: GatewayHarness, job_id: int, text: str, uid: int = 1001) -> dict[str, str]:
    """Write the script, call ``setup`` as Slurm does, require success; returns the setup fields."""
    fields = h.job_fields(job_id, text, uid=uid, gid=uid)
    assert await h.call("setup", **fields) == (200, "")
    return fields


def test_a_state_slurm_skips_is_passed_through_in_order() -> None:
    """burst_buffer/datawarp calls no pre_run for a job without #DW buffers (a #BB create_persistent
    job), only post_run after data_in: the gateway completes PreRun on the way, as DWS allows no skip."""

    async def body(h: GatewayHarness) -> None:
        fields = await setup_job(h, 31, ALL_COMPLETE)
        assert await h.call("data_in", job_id="31", script=fields["script"]) == (200, "")
        assert await h.call("post_run", job_id="31", script=fields["script"]) == (200, "")
        wf = h.get("bb31")
        assert wf is not None
        assert (wf["spec"]["desiredState"], wf["status"]["state"], wf["status"]["status"]) == (
            "PostRun",
            "PostRun",
            "Completed",
        )
        completed = [d["watchState"] for d in wf["status"]["drivers"] if d["completed"]]
        assert "PreRun" in completed
        assert await h.call("teardown", job_id="31", script=fields["script"], hurry="false") == (200, "")

    run(body)


def test_sessions_list_each_job_workflow_for_burst_buffer_datawarp() -> None:
    """What ``dw_wlm_cli --function show_sessions`` reports: a job's Workflow from setup until teardown."""

    async def body(h: GatewayHarness) -> None:
        fields = await setup_job(h, 41, ALL_COMPLETE, uid=2041)
        status, text = await h.call("sessions")
        assert status == 200, text
        (session,) = json.loads(text)["sessions"]
        assert {k: session[k] for k in ("id", "token", "owner", "bytes", "nodes")} == {
            "id": 41,
            "token": "41",
            "owner": 2041,
            "bytes": 0,
            "nodes": 0,
        }
        assert abs(session["created"] - time.time()) < 60
        assert await h.call("teardown", job_id="41", script=fields["script"], hurry="true") == (200, "")
        assert await h.call("sessions") == (200, '{"sessions":[]}')

    run(body)


def test_datawarp_names_for_persistentdw_paths() -> None:
    workflow = {"spec": {"dwDirectives": ["#DW persistentdw name=team-data", "#DW jobdw type=xfs name=a"]}}
    env = {"DW_PERSISTENT_team_data": "/mnt/p", "DW_PERSISTENTS": "team-data:/mnt/p"}
    assert datawarp_persistent_names(workflow, env) == {"DW_PERSISTENT_STRIPED_team_data": "/mnt/p"}
    assert datawarp_persistent_names(workflow, {**env, "DW_PERSISTENT_STRIPED_team_data": "/x"}) == {}


# ==================================================================================================
# script.py: which #DW lines Slurm honours
# ==================================================================================================


def test_extract_directives_reads_only_the_leading_comment_block() -> None:
    text = (
        "#!/bin/bash\n"
        "#SBATCH -N 1\n"
        "#DW Proposal action=complete\n"
        "\n"
        "#SBATCH --time=5\n"
        "#DW    DataIn   action=wait   \n"
        "#DW\n"  # bare: makes it a burst buffer job, but is not a directive
        "#DW   \n"
        "#DWX Setup action=complete\n"  # another directive family
        "#DW\tPreRun action=complete\n"
        "hostname\n"
        "#DW DataOut action=complete\n"  # after the first command: Slurm does not look here
    )
    assert scripts.extract_directives(text) == [
        "#DW Proposal action=complete",
        "#DW DataIn   action=wait",
        "#DW PreRun action=complete",
    ]


def test_extract_directives_joins_continuations_and_handles_edges() -> None:
    assert scripts.extract_directives("#!/bin/sh\n#DW DataIn \\\naction=complete\n") == [
        "#DW DataIn action=complete"
    ]
    # a continuation at the very end of the script still counts
    assert scripts.extract_directives("#DW Setup \\\naction=wait\\") == ["#DW Setup action=wait"]
    # the shebang is skipped only as the first line; with no shebang the first line may be a directive
    assert scripts.extract_directives("#DW Proposal action=complete\n") == ["#DW Proposal action=complete"]
    assert scripts.extract_directives("") == []
    assert scripts.extract_directives("echo hi\n#DW Proposal action=complete\n") == []
    assert scripts.extract_directives("#!/bin/bash\n#DW\n#DW \n") == []
    assert scripts.extract_directives("#BB_LUA pool=x\n#DW A b=c\n", directive="BB_LUA") == ["#BB_LUA pool=x"]


@pytest.mark.parametrize("char", ['"', "'", "`", ";", "|", "&", "<", ">", "(", ")", "{", "}", "\\"])
def test_check_safe_rejects_quotes_and_shell_metacharacters(char: str) -> None:
    directive = f"#DW DataIn action=complete message=a{char}b"
    with pytest.raises(scripts.ScriptError) as info:
        scripts.check_safe(["#DW Proposal action=complete", directive])
    message = str(info.value)
    assert message.startswith(f"#DW directive 2 ({directive!r}) contains {char!r}")
    assert "not allowed" in message


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x0b", "\x1b", "\x1f", "\x7f"])
def test_check_safe_rejects_control_characters(char: str) -> None:
    with pytest.raises(scripts.ScriptError, match=rf"directive 1 .* contains \\x{ord(char):02x}"):
        scripts.check_safe([f"#DW DataIn action=complete{char}"])


def test_check_safe_allows_dollar_slash_and_tabs() -> None:
    scripts.check_safe(["#DW jobdw name=x type=xfs capacity=1GiB path=/lus/$USER/dir", "#DW a\tb=c"])
    scripts.check_safe([])


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028"])
def test_extract_directives_splits_lines_only_at_newline(separator: str) -> None:
    """Slurm (and bash) see one comment line here: the #DW after the separator is not a directive of
    its own, and the control character must reach check_safe instead of vanishing as a line break."""
    text = (
        f"#!/bin/bash\n#SBATCH -N1{separator}#DW Teardown action=wait\n"
        f"#DW Proposal action=complete{separator}x\n"
    )
    found = scripts.extract_directives(text)
    assert found == [f"#DW Proposal action=complete{separator}x"]


@pytest.mark.parametrize(
    ("path", "job_id"),
    [
        ("/var/spool/slurmctld/hash.2/job.12/script", "12"),
        ("hash.7/job.1234567/script", "1234567"),
        ("job.5/script", "5"),
        ("/var/spool/slurmctld/hash.2/job.12/script.bak", None),
        ("/var/spool/slurmctld/hash.2/job.12/environment", None),
        ("/var/spool/slurmctld/hash.2/myjob.12/script", None),
        ("/var/spool/slurmctld/hash.2/job.x12/script", None),
        ("", None),
    ],
)
def test_job_id_from_script_path(path: str, job_id: str | None) -> None:
    assert scripts.job_id_from_script_path(path) == job_id


def test_read_script_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(scripts.ScriptError, match=f"cannot read the job script {missing}"):
        scripts.read_script(missing)


# ==================================================================================================
# job_process (synchronous, inside slurmctld)
# ==================================================================================================


def test_job_process_accepts_good_directives_and_reads_the_job_id_from_the_path() -> None:
    async def body(h: GatewayHarness) -> None:
        path = h.write_script(12, ALL_COMPLETE)
        assert await h.call("job_process", script=path, job_id="12") == (200, "")
        # 22.05 sends no job_id: it comes from .../job.<id>/script
        assert await h.call("job_process", script=path) == (200, "")
        # nothing was created: without uid/gid that is setup's job
        assert not h.gateway.ops._background
        assert h.get("bb12") is None

    run(body)


@pytest.mark.parametrize(
    ("directive", "expected"),
    [
        ("#DW Bogus x=y", "#DW directives rejected: invalid directive '#DW Bogus x=y'"),
        ("#DW DataIn message=x", "#DW directives rejected: missing required argument 'action'"),
        ("#DW DataIn action=complete colour=red", "#DW directives rejected: unsupported argument 'colour'"),
        (
            "#DW DataIn action=complete message=`id`",
            "#DW directive 2 ('#DW DataIn action=complete message=`id`') contains '`'",
        ),
        (
            "#DW DataIn action=complete message=a;reboot",
            "#DW directive 2 ('#DW DataIn action=complete message=a;reboot') contains ';'",
        ),
    ],
)
def test_job_process_rejects_bad_directives(directive: str, expected: str) -> None:
    async def body(h: GatewayHarness) -> None:
        path = h.write_script(7, job_script("#DW Proposal action=complete", directive))
        status, text = await h.call("job_process", script=path, job_id="7", uid="1001", gid="1001")
        assert status == 400
        assert text.startswith(expected), text
        assert not h.gateway.ops._background  # a rejected job gets no Workflow
        assert h.get("bb7") is None

    run(body)


def test_job_process_follows_changes_to_the_directive_rules() -> None:
    async def body(h: GatewayHarness) -> None:
        path = h.write_script(9, job_script("#DW Greet name=ada"))

        async def job_process() -> tuple[int, str]:
            return await h.call("job_process", script=path, job_id="9")

        status, text = await job_process()
        assert status == 400 and "invalid directive '#DW Greet name=ada'" in text, text
        rule: dict[str, Any] = {
            "apiVersion": DW_DIRECTIVE_RULE.api_version(DW_DIRECTIVE_RULE.storage_version),
            "kind": "DWDirectiveRule",
            "metadata": {"name": "greeter", "namespace": "dws-system"},
            "spec": [
                {
                    "command": "Greet",
                    "watchStates": "Proposal",
                    "ruleDefs": [
                        {"key": "name", "type": "string", "pattern": "^[a-z]+$", "isRequired": True}
                    ],
                }
            ],
        }
        created = await h.api_client.create(DW_DIRECTIVE_RULE, rule)
        await eventually(lambda: "greeter" in h.gateway.rules.cache, "the rule in the gateway's cache")
        assert await job_process() == (200, "")

        rule["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
        rule["spec"][0]["ruleDefs"][0]["pattern"] = "^[0-9]+$"
        updated = await h.api_client.update(DW_DIRECTIVE_RULE, rule)
        version = updated["metadata"]["resourceVersion"]
        await eventually(
            lambda: h.gateway.rules.cache["greeter"]["metadata"]["resourceVersion"] == version, "the update"
        )
        status, text = await job_process()
        assert status == 400 and "name" in text, text

        await h.api_client.delete(DW_DIRECTIVE_RULE, "dws-system", "greeter")
        await eventually(lambda: "greeter" not in h.gateway.rules.cache, "the deletion")
        status, text = await job_process()
        assert status == 400 and "invalid directive '#DW Greet name=ada'" in text, text

    run(body)


def test_job_process_bad_requests() -> None:
    async def body(h: GatewayHarness) -> None:
        status, text = await h.call("job_process", script="/tmp/elsewhere/script")
        assert (status, text) == (400, "cannot tell the job id from the script path '/tmp/elsewhere/script'")
        missing = str(h.state_dir / "hash.3" / "job.3" / "script")
        status, text = await h.call("job_process", script=missing, job_id="3")
        assert status == 400 and text.startswith(f"cannot read the job script {missing}"), text

    run(body)


def test_job_process_without_directives_succeeds() -> None:
    async def body(h: GatewayHarness) -> None:
        path = h.write_script(8, "#!/bin/bash\n#SBATCH -N1\n#DW\nsrun hostname\n#DW Bogus x=y\n")
        assert await h.call("job_process", script=path, job_id="8") == (200, "")

    run(body)


def test_job_process_with_uid_creates_the_workflow_in_the_background() -> None:
    async def body(h: GatewayHarness) -> None:
        path = h.write_script(9, ALL_COMPLETE)
        assert await h.call("job_process", script=path, job_id="9", uid="1001", gid="1002") == (200, "")
        wf = await eventually(lambda: h.get("bb9"), "bb9 to be created by job_process")
        assert wf["spec"]["userID"] == 1001 and wf["spec"]["groupID"] == 1002
        assert wf["spec"]["desiredState"] == "Proposal"
        await h.status_is("bb9", "Proposal", "Completed")
        # setup adopts it rather than replacing it
        assert await h.call("setup", job_id="9", uid="1001", gid="1002", script=path) == (200, "")
        after = h.get("bb9")
        assert after is not None and after["metadata"]["uid"] == wf["metadata"]["uid"]

    run(body)


# ==================================================================================================
# The whole life of a job
# ==================================================================================================


def test_lifecycle_of_a_clean_job() -> None:
    async def body(h: GatewayHarness) -> None:
        fields = h.job_fields(12, ALL_COMPLETE, uid=1001, gid=1002)
        assert await h.call("job_process", script=fields["script"], job_id="12") == (200, "")
        assert await h.call("pools") == (200, "")
        assert await h.call("setup", **fields) == (200, "")

        wf = h.get("bb12")
        assert wf is not None
        meta, spec, st = wf["metadata"], wf["spec"], wf["status"]
        assert meta["namespace"] == "slurm"
        assert meta["labels"]["origin"] == "burst_buffer.lua"
        assert meta["annotations"][JOB_RUN_ANNOTATION] == f"12/{os.stat(fields['script']).st_ctime_ns}"
        assert spec["userID"] == 1001 and spec["groupID"] == 1002
        assert spec["jobID"] == "12" and spec["wlmID"] == "slurm"
        assert spec["dwDirectives"] == [f"#DW {state} action=complete" for state in STATES]
        assert spec["desiredState"] == "Setup"
        assert (st["state"], st["status"], st["ready"]) == ("Setup", "Completed", True)
        proposal = [d for d in st["drivers"] if d["watchState"] == "Proposal"]
        assert [(d["status"], d["completed"]) for d in proposal] == [("Completed", True)]

        assert await h.call("real_size", job_id="12") == (200, "")
        for op, state in STAGES:
            assert await h.call(op, job_id="12", script=fields["script"]) == (200, ""), op
            wf = h.get("bb12")
            assert wf is not None
            assert (wf["spec"]["desiredState"], wf["status"]["state"], wf["status"]["status"]) == (
                state,
                state,
                "Completed",
            )
            if op == "data_in":
                assert await h.call("test_data_in", job_id="12") == (200, "")
                assert await h.call("paths", job_id="12", script=fields["script"], path_file="/x") == (
                    200,
                    "DW_WORKFLOW_NAME=bb12\nDW_WORKFLOW_NAMESPACE=slurm\n",
                )
        assert await h.call("test_data_out", job_id="12") == (200, "")
        # a second call for a state already completed returns at once and moves nothing back
        assert await h.call("data_in", job_id="12") == (200, "")
        assert h.get("bb12")["spec"]["desiredState"] == "DataOut"  # type: ignore[index]

        assert await h.call("teardown", job_id="12", script=fields["script"], hurry="false") == (200, "")
        assert h.get("bb12") is None
        assert "bb12" not in h.gateway.workflows.cache
        assert await h.call("teardown", job_id="12", script=fields["script"], hurry="false") == (200, "")
        assert h.slurm.scancel_calls == []  # a clean job is never cancelled

    run(body)


def test_operations_on_a_missing_workflow_fail() -> None:
    async def body(h: GatewayHarness) -> None:
        assert await h.call("data_in", job_id="40") == (
            410,
            "workflow bb40 does not exist (was it torn down?)",
        )
        assert await h.call("test_data_in", job_id="40") == (410, "workflow bb40 no longer exists")
        assert await h.call("data_in", job_id="4x") == (400, "a numeric job_id is required, got '4x'")
        status, text = await h.call("setup", job_id="40", script="/nonexistent")
        assert (status, text) == (400, "a numeric uid is required, got ''")

    run(body)


def test_data_in_waits_for_a_held_driver() -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 14, job_script("#DW DataIn action=wait"))
        data_in = asyncio.create_task(h.call("data_in", job_id="14"))
        await h.status_is("bb14", "DataIn", "DriverWait")
        assert await h.call("status", args="workflow 14") == (
            200,
            "desiredState=DataIn currentState=DataIn status=DriverWait",
        )
        assert await h.call("test_data_in", job_id="14") == (200, "BUSY")
        assert not data_in.done()

        h.json_patch("bb14", RELEASE)
        assert await asyncio.wait_for(data_in, 10) == (200, "")
        assert await h.call("test_data_in", job_id="14") == (200, "")
        assert await h.call("status", args="workflow 14") == (
            200,
            "desiredState=DataIn currentState=DataIn status=Completed",
        )

    run(body)


FAILING_OP = {
    "Proposal": "setup",
    "Setup": "setup",
    "DataIn": "data_in",
    "PreRun": "pre_run",
    "PostRun": "post_run",
    "DataOut": "data_out",
}


@pytest.mark.parametrize("state", list(FAILING_OP))
def test_fatal_driver_error_fails_the_state_then_teardown_cancels_the_job(state: str) -> None:
    async def body(h: GatewayHarness) -> None:
        fields = h.job_fields(
            21, job_script(f"#DW {state} action=error message=TEST_FATAL_ERROR severity=Fatal")
        )
        ops = ["setup", *(op for op, _ in STAGES)]
        for op in ops:
            call_fields = fields if op == "setup" else {"job_id": "21", "script": fields["script"]}
            status, text = await h.call(op, **call_fields)
            if op != FAILING_OP[state]:
                assert (status, text) == (200, ""), op
                continue
            assert status != 200
            assert text.startswith("DWS driver error(s):"), text
            assert "tester: TEST FATAL ERROR" in text
            break
        assert await h.call("status", args="workflow 21") == (
            200,
            f"desiredState={state} currentState={state} status=Error",
        )
        assert h.slurm.scancel_calls == []
        assert await h.call("teardown", job_id="21", script=fields["script"], hurry="false") == (200, "")
        assert h.get("bb21") is None
        assert h.slurm.scancel_calls == ["21"]
        assert await h.call("teardown", job_id="21", hurry="false") == (200, "")
        assert h.slurm.scancel_calls == ["21"]  # the second (idempotent) teardown does not cancel again

    run(body)


def test_a_fatal_teardown_driver_fails_teardown_but_still_deletes_and_cancels() -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 28, job_script("#DW Teardown action=error message=LOST_THE_KEYS severity=Fatal"))
        status, text = await h.call("teardown", job_id="28", hurry="false")
        assert status == 500
        assert text.startswith("teardown of bb28: DWS driver error(s):"), text
        assert "tester: LOST THE KEYS" in text and text.endswith("(the workflow was deleted)")
        assert h.get("bb28") is None
        assert h.slurm.scancel_calls == ["28"]
        assert await h.call("teardown", job_id="28", hurry="false") == (200, "")  # Slurm's retry

    run(body)


def test_driver_errors_are_reported_on_one_line() -> None:
    async def body(h: GatewayHarness) -> None:
        fields = h.job_fields(
            29,
            job_script(
                "#DW Proposal action=error message=FIRST_PROBLEM severity=Fatal",
                "#DW Proposal action=error message=SECOND_PROBLEM severity=Fatal",
            ),
        )
        status, text = await h.call("setup", **fields)
        assert status != 200
        assert text == "DWS driver error(s): tester: FIRST PROBLEM; tester: SECOND PROBLEM"

    run(body)


async def reach_data_out(h: GatewayHarness, job_id: int, text: str) -> None:
    await setup_job(h, job_id, text)
    for op, _ in STAGES[:-1]:
        assert await h.call(op, job_id=str(job_id)) == (200, ""), op


MAJOR = "#DW DataOut action=error message=johnson_rod_misalignment severity=Major"


def test_transient_condition_fails_after_the_grace_period() -> None:
    async def body(h: GatewayHarness) -> None:
        await reach_data_out(h, 22, job_script(MAJOR))
        started = time.monotonic()
        status, text = await h.call("data_out", job_id="22")
        assert time.monotonic() - started >= 0.5
        assert (status, text) == (
            500,
            "TransientCondition for 0.5 s in DataOut: tester: johnson rod misalignment",
        )
        assert await h.call("teardown", job_id="22", hurry="false") == (200, "")
        assert h.get("bb22") is None

    run(body, transient_grace=0.5)


def test_transient_condition_cleared_within_the_grace_period_succeeds() -> None:
    async def body(h: GatewayHarness) -> None:
        await reach_data_out(h, 23, job_script(MAJOR))
        data_out = asyncio.create_task(h.call("data_out", job_id="23"))
        await h.cached("bb23", lambda o: (o.get("status") or {}).get("status") == "TransientCondition")
        assert not data_out.done()
        h.json_patch("bb23", CLEAR_TRANSIENT)
        assert await asyncio.wait_for(data_out, 10) == (200, "")
        assert await h.call("teardown", job_id="23", hurry="false") == (200, "")
        assert h.slurm.scancel_calls == []

    run(body, transient_grace=30)


@pytest.mark.parametrize("hurry", [True, False])
def test_teardown_passes_hurry_to_the_workflow(hurry: bool) -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 24, job_script("#DW Teardown action=wait"))
        teardown = asyncio.create_task(h.call("teardown", job_id="24", hurry="true" if hurry else "false"))
        held = await h.status_is("bb24", "Teardown", "DriverWait")
        assert held["spec"]["desiredState"] == "Teardown"
        assert bool(held["spec"].get("hurry")) is hurry
        assert not teardown.done()
        h.json_patch("bb24", RELEASE)
        assert await asyncio.wait_for(teardown, 10) == (200, "")
        assert h.get("bb24") is None

    run(body)


def test_paths_include_the_workflow_env_with_bad_entries_skipped() -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 25, ALL_COMPLETE)
        env = {
            "DW_JOB_striped": "/lus/scratch/x",
            "_OK2": "a b=c",
            "bad-name": "x",
            "9LIVES": "x",
            "MULTI": "line1\nline2",
        }
        h.merge_patch("bb25", {"status": {"env": env}})
        await h.cached("bb25", lambda o: "MULTI" in ((o.get("status") or {}).get("env") or {}))
        assert await h.call("paths", job_id="25", path_file="/x") == (
            200,
            "DW_WORKFLOW_NAME=bb25\nDW_WORKFLOW_NAMESPACE=slurm\nDW_JOB_striped=/lus/scratch/x\n_OK2=a b=c\n",
        )

    run(body)


def test_status_forms() -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 26, ALL_COMPLETE, uid=1001)
        await setup_job(h, 3, ALL_COMPLETE, uid=1002)
        await h.cached("bb3", lambda o: o["spec"]["desiredState"] == "Setup")

        assert await h.call("status", args="workflow abc") == (400, "A job ID must contain only digits.")
        status, text = await h.call("status", args="workflow 999")
        assert status != 200 and "bb999" in text

        status, table = await h.call("status", args="workflows")
        assert status == 200
        lines = table.splitlines()
        assert lines[0].split() == ["JOBID", "WORKFLOW", "UID", "DESIRED", "STATE", "STATUS", "READY"]
        assert [line.split() for line in lines[1:]] == [
            ["3", "bb3", "1002", "Setup", "Setup", "Completed", "true"],
            ["26", "bb26", "1001", "Setup", "Setup", "Completed", "true"],
        ]
        status, table = await h.call("status", args="workflows uid=1002")
        assert status == 200 and [line.split()[1] for line in table.splitlines()[1:]] == ["bb3"]
        # the caller's uid (23.02+) selects the caller's workflows
        status, table = await h.call("status", args="workflows", uid="1001", gid="1001")
        assert status == 200 and [line.split()[1] for line in table.splitlines()[1:]] == ["bb26"]
        status, table = await h.call("status", args="workflows uid=4242")
        assert status == 200 and table.splitlines()[1:] == ["(no workflows)"]

        for args in ("", "bogus", "workflow", "workflow 1 2", "workflows uid=abc", "workflows gid=1"):
            status, text = await h.call("status", args=args)
            assert status == 400 and text.startswith("Usage: scontrol show bbstat"), (args, text)

    run(body)


def test_setup_replaces_a_stale_workflow_of_an_earlier_job() -> None:
    async def body(h: GatewayHarness) -> None:
        old = h.create_workflow(
            "bb27", ["#DW Proposal action=complete"], annotations={JOB_RUN_ANNOTATION: "27/1"}
        )
        await h.cached("bb27", lambda o: o["metadata"]["uid"] == old["metadata"]["uid"])
        fields = await setup_job(h, 27, ALL_COMPLETE)
        new = h.get("bb27")
        assert new is not None
        assert new["metadata"]["uid"] != old["metadata"]["uid"]
        assert new["metadata"]["annotations"][JOB_RUN_ANNOTATION] == (
            f"27/{os.stat(fields['script']).st_ctime_ns}"
        )
        assert new["spec"]["dwDirectives"] == [f"#DW {state} action=complete" for state in STATES]
        assert (new["status"]["state"], new["status"]["status"]) == ("Setup", "Completed")

    run(body)


# ==================================================================================================
# Failures around the gateway: the API, the caller
# ==================================================================================================


def dead_api_client() -> HttpClient:
    """An HttpClient for a loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    creds = KubeconfigCredentials(
        server=f"http://127.0.0.1:{port}",
        ca_pem=None,
        cert_pem=None,
        key_pem=None,
        token="t",
        namespace="slurm",
        insecure_skip_tls_verify=False,
    )
    return HttpClient(creds, connect_timeout=1, timeout=1)


def test_api_unreachable_fails_fast_with_clear_messages() -> None:
    async def body(h: GatewayHarness) -> None:
        status, text = await h.request("GET", "/v1/healthz")
        assert status == 503 and "slurmlink API" in text, text

        # no directives: nothing to check against the API, so slurmctld is not held up
        plain = h.write_script(31, "#!/bin/bash\nhostname\n")
        assert await h.call("job_process", script=plain, job_id="31") == (200, "")

        path = h.write_script(32, ALL_COMPLETE)
        started = time.monotonic()
        status, text = await h.call("job_process", script=path, job_id="32", uid="1001", gid="1001")
        assert time.monotonic() - started < 4.5  # inside the Lua's 5 s SYNC_TIMEOUT
        assert status == 503 and "unreachable" in text, text

        started = time.monotonic()
        status, text = await h.call("setup", job_id="32", uid="1001", gid="1001", script=path)
        assert time.monotonic() - started < 5
        assert status == 503 and "unreachable" in text, text

        status, _ = await h.request("GET", "/v1/healthz")
        assert status == 503

    run(body, client=dead_api_client(), api_timeout=1, wait_healthy=False)


def test_caller_going_away_cancels_the_operation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="slurmlink.slurm.gateway.server")

    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 33, job_script("#DW DataIn action=wait"))
        _reader, writer = await asyncio.open_unix_connection(str(h.socket_path))
        request = form({"job_id": "33"})
        writer.write(
            b"POST /v1/data_in HTTP/1.0\r\nHost: slurmlink\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(request)}\r\n\r\n".encode()
            + request
        )
        await writer.drain()
        await h.status_is("bb33", "DataIn", "DriverWait")
        writer.close()  # Slurm killed the callback (StageInTimeout, scancel)
        await writer.wait_closed()

        await eventually(
            lambda: [r for r in caplog.records if "caller went away" in r.getMessage()],
            "the gateway to log that it stopped data_in",
        )
        assert await h.request("GET", "/v1/healthz") == (200, "ok")
        assert await h.call("test_data_in", job_id="33") == (200, "BUSY")
        h.json_patch("bb33", RELEASE)
        assert await h.call("data_in", job_id="33") == (200, "")

    run(body)


def test_losing_the_api_during_a_wait_fails_after_api_timeout() -> None:
    async def body(h: GatewayHarness) -> None:
        assert h.switch is not None
        await setup_job(h, 35, job_script("#DW DataIn action=wait"))
        data_in = asyncio.create_task(h.call("data_in", job_id="35"))
        await h.cached("bb35", lambda o: (o.get("status") or {}).get("state") == "DataIn")
        h.switch.down = True
        started = time.monotonic()
        status, text = await asyncio.wait_for(data_in, 10)
        assert time.monotonic() - started < 5
        assert status == 503 and text.startswith("slurmlink API unreachable for "), text
        assert "while waiting for bb35 to complete DataIn" in text and "connection refused" in text
        status, text = await h.request("GET", "/v1/healthz")
        assert status == 503 and "unreachable" in text

        h.switch.down = False
        await h.wait_until_healthy()
        h.json_patch("bb35", RELEASE)
        assert await h.call("data_in", job_id="35") == (200, "")

    run(body, api_timeout=1)


def test_a_short_api_outage_does_not_fail_a_wait() -> None:
    async def body(h: GatewayHarness) -> None:
        assert h.switch is not None
        await setup_job(h, 36, job_script("#DW DataIn action=wait"))
        data_in = asyncio.create_task(h.call("data_in", job_id="36"))
        await h.cached("bb36", lambda o: (o.get("status") or {}).get("state") == "DataIn")
        h.switch.down = True
        await eventually(lambda: h.gateway.workflows.unreachable_since is not None, "the outage to be seen")
        h.json_patch("bb36", RELEASE)  # completes while the gateway cannot see it
        h.switch.down = False
        assert await asyncio.wait_for(data_in, 10) == (200, "")

    run(body, api_timeout=20)


def test_a_workflow_deleted_during_a_wait_fails_the_wait() -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 37, job_script("#DW DataIn action=wait"))
        data_in = asyncio.create_task(h.call("data_in", job_id="37"))
        await h.cached("bb37", lambda o: (o.get("status") or {}).get("state") == "DataIn")
        h.svc.delete(WORKFLOW, "v1alpha2", "slurm", "bb37", SYSTEM)
        status, text = await asyncio.wait_for(data_in, 10)
        assert status == 410 and "bb37" in text, text
        await eventually(lambda: h.get("bb37") is None, "bb37 to be gone")
        assert await h.call("teardown", job_id="37", hurry="false") == (200, "")

    run(body)


def test_concurrent_teardowns_both_succeed() -> None:
    """Slurm may call teardown again while the first one is still waiting on a Teardown driver."""

    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 38, job_script("#DW Teardown action=wait"))
        first = asyncio.create_task(h.call("teardown", job_id="38", hurry="false"))
        await h.cached("bb38", lambda o: (o.get("status") or {}).get("state") == "Teardown")
        second = asyncio.create_task(h.call("teardown", job_id="38", hurry="true"))
        held = await h.cached("bb38", lambda o: bool(o["spec"].get("hurry")))
        assert held["spec"]["desiredState"] == "Teardown"
        h.json_patch("bb38", RELEASE)
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [(200, ""), (200, "")]
        assert h.get("bb38") is None

    run(body)


def test_teardown_during_the_background_create_leaves_no_workflow() -> None:
    async def body(h: GatewayHarness) -> None:
        assert h.switch is not None
        gate = asyncio.Event()
        create = h.switch.create

        async def slow_create(kind: Any, obj: Obj) -> Obj:  # an API that is slow to answer
            await gate.wait()
            return await create(kind, obj)

        h.switch.create = slow_create  # type: ignore[method-assign]
        path = h.write_script(41, ALL_COMPLETE)
        assert await h.call("job_process", script=path, job_id="41", uid="1001", gid="1001") == (200, "")
        teardown = asyncio.create_task(h.call("teardown", job_id="41", hurry="true"))
        # Slurm may be told the job is cleaned up only once nothing can create its Workflow any more. A
        # fixed gateway cannot answer before the gate opens, so this bounded wait is not a synchronisation
        # stand-in: it only gives a buggy gateway the chance to answer "already removed" first.
        await asyncio.wait({teardown}, timeout=0.5)
        gate.set()
        assert await asyncio.wait_for(teardown, 10) == (200, "")
        if h.gateway.ops._background:
            await asyncio.wait(list(h.gateway.ops._background.values()), timeout=10)
        assert h.get("bb41") is None

    run(body)


def test_paths_skip_env_keys_ending_in_a_newline() -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 39, ALL_COMPLETE)
        h.merge_patch("bb39", {"status": {"env": {"EVIL\n": "x", "OK": "1"}}})
        await h.cached("bb39", lambda o: "OK" in ((o.get("status") or {}).get("env") or {}))
        assert await h.call("paths", job_id="39") == (
            200,
            "DW_WORKFLOW_NAME=bb39\nDW_WORKFLOW_NAMESPACE=slurm\nOK=1\n",
        )

    run(body)


def test_paths_waits_for_the_cache_to_show_data_in_completed() -> None:
    """A cache one watch event behind must not drop the env set by the update that completes DataIn."""

    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 41, job_script("#DW DataIn action=wait"))
        data_in = asyncio.create_task(h.call("data_in", job_id="41"))
        await h.status_is("bb41", "DataIn", "DriverWait")
        await h.cached("bb41", lambda o: (o.get("status") or {}).get("status") == "DriverWait")
        paths = asyncio.create_task(h.call("paths", job_id="41"))
        # Bounded look for a wrong early answer, not a synchronisation stand-in: a correct gateway cannot
        # answer before the release below, so nothing here waits for it to happen.
        await asyncio.wait({paths}, timeout=0.3)
        assert not paths.done()
        h.merge_patch("bb41", {"status": {"env": {"SCRATCH": "/bb/41"}}})
        h.json_patch("bb41", RELEASE)
        assert await asyncio.wait_for(data_in, 10) == (200, "")
        assert await asyncio.wait_for(paths, 10) == (
            200,
            "DW_WORKFLOW_NAME=bb41\nDW_WORKFLOW_NAMESPACE=slurm\nSCRATCH=/bb/41\n",
        )

    run(body)


def test_job_ids_with_a_trailing_newline_are_rejected() -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 39, ALL_COMPLETE)
        assert await h.call("teardown", job_id="39\n", hurry="false") == (
            400,
            "a numeric job_id is required, got '39\\n'",
        )

    run(body)


# ==================================================================================================
# The orphan sweeper
# ==================================================================================================


def test_sweeper_removes_only_workflows_of_jobs_slurm_forgot() -> None:
    async def body(h: GatewayHarness) -> None:
        h.slurm.known = True
        h.slurm.known_by_job.update({"101": False, "102": False, "103": False, "104": None, "105": True})
        directives = ["#DW Proposal action=complete"]
        h.create_workflow("bb101", directives)  # ours, job dir gone, Slurm says invalid: an orphan
        h.create_workflow("bb102", directives, labels={})  # not created by burst_buffer.lua
        h.create_workflow("bb103", directives)  # the job's directory still exists
        h.write_script(103, ALL_COMPLETE)
        h.create_workflow("bb104", directives)  # Slurm cannot be asked
        h.create_workflow("bb105", directives)  # Slurm still knows the job
        names = [f"bb{n}" for n in range(101, 106)]
        await eventually(
            lambda: all(n in h.gateway.workflows.cache for n in names), "the informer to list all"
        )

        patient = OrphanSweeper(
            h.gateway.ops, h.gateway.workflows, h.slurm, dataclasses.replace(h.config, sweep_min_age=3600)
        )
        assert await patient.sweep_once() == []  # too young to be considered
        assert h.slurm.job_known_calls == []

        assert await h.gateway.sweeper.sweep_once() == ["bb101"]
        assert h.get("bb101") is None
        assert [n for n in names[1:] if h.get(n) is None] == []
        assert sorted(h.slurm.job_known_calls) == ["101", "104", "105"]
        assert h.slurm.scancel_calls == []

    run(body)


def test_sweeper_tears_down_workflows_of_ended_jobs_slurm_will_not_tear_down() -> None:
    async def body(h: GatewayHarness) -> None:
        statuses = {
            "201": JobStatus("CANCELLED", "teardown"),  # Slurm's cancel flushed its own teardown
            "202": JobStatus("COMPLETED", "complete"),  # torn down while the gateway was away
            "203": JobStatus("CANCELLED", "pending"),  # cancelled before stage-in (Workflow from submit)
            "204": JobStatus("RUNNING", "running"),
            "205": JobStatus("PENDING", "staging-in"),  # e.g. held after a stage-in error
            "206": JobStatus("COMPLETED", "staging-out"),
            "207": JobStatus("CANCELLED", "teardown"),  # teardown callback open right now
            "208": JobStatus("CANCELLED", "teardown"),  # teardown called a moment ago
        }
        h.slurm.statuses = statuses
        names = [f"bb{n}" for n in range(201, 210)]  # bb209: Slurm's list does not have the job
        for name in names:
            h.create_workflow(name, ["#DW Proposal action=complete"])
            h.write_script(name[2:], ALL_COMPLETE)
        await eventually(
            lambda: all(n in h.gateway.workflows.cache for n in names), "the informer to list all"
        )
        now = [1000.0]
        activity = CallbackActivity(clock=lambda: now[0])
        activity.begin("207")
        now[0] += 100
        activity.begin("208")
        activity.end("208")
        now[0] += 1
        sweeper = OrphanSweeper(h.gateway.ops, h.gateway.workflows, h.slurm, h.config, activity)

        assert sorted(await sweeper.sweep_once()) == ["bb201", "bb202", "bb203"]
        assert [n for n in names if h.get(n) is None] == ["bb201", "bb202", "bb203"]
        assert h.slurm.job_statuses_calls == 1
        assert h.slurm.job_known_calls == []  # every job directory exists: no orphan checks
        assert h.slurm.scancel_calls == []

        activity.end("207")  # the open teardown answered; a quiet moment later the job is settled
        now[0] += 10
        assert sorted(await sweeper.sweep_once()) == ["bb207", "bb208"]

    run(body)


def test_sweeper_waits_for_a_quiet_job_and_an_answer_from_slurm() -> None:
    async def body(h: GatewayHarness) -> None:
        h.create_workflow("bb301", ["#DW Proposal action=complete"])
        h.write_script(301, ALL_COMPLETE)
        await h.cached("bb301", lambda o: True)
        now = [1000.0]
        activity = CallbackActivity(clock=lambda: now[0])
        now[0] += MIN_QUIET - 1
        sweeper = OrphanSweeper(h.gateway.ops, h.gateway.workflows, h.slurm, h.config, activity)
        assert h.config.sweep_min_age < MIN_QUIET
        h.slurm.statuses = {"301": JobStatus("CANCELLED", "teardown")}
        assert await sweeper.sweep_once() == []  # quiet for less than MIN_QUIET
        assert h.slurm.job_statuses_calls == 0
        now[0] += 2
        h.slurm.statuses = None
        assert await sweeper.sweep_once() == []  # slurmctld cannot be asked
        assert h.slurm.job_statuses_calls == 1
        assert h.get("bb301") is not None
        h.slurm.statuses = {"301": JobStatus("CANCELLED", "teardown")}
        assert await sweeper.sweep_once() == ["bb301"]

    run(body)


def test_an_open_callback_marks_its_job_active() -> None:
    async def body(h: GatewayHarness) -> None:
        await setup_job(h, 311, job_script("#DW DataIn action=wait"))
        activity = h.gateway.activity
        quiet_before = activity.quiet_for("311")
        assert quiet_before is not None and quiet_before < 5
        data_in = asyncio.create_task(h.call("data_in", job_id="311"))
        await eventually(lambda: activity.quiet_for("311") is None, "the callback to be open")
        h.json_patch("bb311", RELEASE)
        assert await asyncio.wait_for(data_in, 10) == (200, "")
        assert activity.quiet_for("311") is not None

    run(body)


def test_sweeper_holds_off_while_the_api_is_unreachable() -> None:
    async def body(h: GatewayHarness) -> None:
        h.slurm.known = False
        assert await h.gateway.sweeper.sweep_once() == []
        assert h.slurm.job_known_calls == []

    run(body, client=dead_api_client(), api_timeout=1, wait_healthy=False)


# ==================================================================================================
# Transport
# ==================================================================================================


def test_transport_endpoints_and_socket_mode() -> None:
    async def body(h: GatewayHarness) -> None:
        assert stat.S_IMODE(os.stat(h.socket_path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(h.socket_path).st_mode)
        assert await h.request("GET", "/v1/healthz") == (200, "ok")
        assert await h.call("frobnicate", job_id="1") == (404, "unknown operation 'frobnicate'")
        assert await h.request("GET", "/v1/setup") == (404, "unknown endpoint GET /v1/setup")
        assert await h.request("POST", "/v2/setup") == (404, "unknown endpoint POST /v2/setup")

        reader, writer = await asyncio.open_unix_connection(str(h.socket_path))
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        status, text = parse_response(await asyncio.wait_for(reader.read(), 10))
        writer.close()
        assert status == 400 and text.startswith("bad request"), text

    run(body)
