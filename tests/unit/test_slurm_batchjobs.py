"""The job bridge's Slurm knowledge: sbatch's command line, scontrol's and sacct's job records (lines
captured from Slurm 22.05.8), array jobs folded into one state, and Slurm states read as phases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from slurmlink.slurm import batchjobs
from slurmlink.slurm.batchjobs import BatchRequest, JobRecord

FAILED_LINE = (
    "JobId=1 JobName=t1 UserId=slurmlink-job(23001) GroupId=slurmlink-job(23001) MCS_label=N/A "
    "Priority=4294901759 Nice=0 Account=default QOS=normal JobState=FAILED Reason=NonZeroExitCode "
    "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 "
    "TimeLimit=365-00:00:00 TimeMin=N/A SubmitTime=2026-12-04T17:55:27 EligibleTime=2026-12-04T17:55:27 "
    "AccrueTime=2026-12-04T17:55:27 StartTime=2026-12-04T17:55:28 EndTime=2026-12-04T17:55:28 Deadline=N/A "
    "SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-04T17:55:28 Scheduler=Backfill Partition=debug "
    "AllocNode:Sid=localhost:18622 ReqNodeList=(null) ExcNodeList=(null) NodeList=compute1 "
    "BatchHost=compute1 "
    "NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* "
    "NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) "
    "DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) "
    "Command=/var/tmp/bxjobs/t.sh WorkDir=/var/tmp/bxjobs Comment=slurmlink:abc  "
    "StdErr=/var/tmp/bxjobs/slurm-1.out StdIn=/dev/null StdOut=/var/tmp/bxjobs/slurm-1.out Power= "
)
PENDING_ARRAY_LINE = (
    "JobId=4 ArrayJobId=4 ArrayTaskId=0-2 JobName=t.sh UserId=slurmlink-job(23001) "
    "GroupId=slurmlink-job(23001) "
    "JobState=PENDING Reason=Resources Dependency=(null) ExitCode=0:0 TimeLimit=UNLIMITED "
    "SubmitTime=2026-12-04T17:55:27 StartTime=Unknown EndTime=Unknown Partition=debug NodeList= "
    "SchedNodeList=compute1 TRES=cpu=1,mem=23081M,node=1,billing=1 Command=/var/tmp/bxjobs/t.sh "
    "WorkDir=/var/tmp/bxjobs StdErr=/var/tmp/bxjobs/slurm-4_4294967294.out StdIn=/dev/null "
    "StdOut=/var/tmp/bxjobs/slurm-4_4294967294.out Power= "
)
SACCT = """\
1|t1|FAILED|3:0|2026-12-04T17:55:27|2026-12-04T17:55:28|2026-12-04T17:55:28|compute1|debug
2|slow.sh|TIMEOUT|0:15|2026-12-04T17:55:27|2026-12-04T17:55:28|2026-12-04T17:56:29|compute1|debug
4_0|t.sh|COMPLETED|0:0|2026-12-04T17:55:27|2026-12-04T17:55:49|2026-12-04T17:55:49|compute1|debug
4_1|t.sh|FAILED|3:0|2026-12-04T17:55:27|2026-12-04T17:55:49|2026-12-04T17:55:49|compute1|debug
4_2|t.sh|CANCELLED by 23001|0:0|2026-12-04T17:55:27|2026-12-04T17:55:50|2026-12-04T17:55:50|compute1|debug
"""


def test_scontrol_line_gives_state_exit_code_signal_comment_and_output() -> None:
    (record,) = batchjobs.parse_scontrol_jobs(FAILED_LINE + "\n")
    assert record.job_id == "1"
    assert record.state == "FAILED"
    assert (record.exit_code, record.signal) == (3, 0)
    assert record.comment == "slurmlink:abc"
    assert record.user_id == 23001
    assert record.std_out == "/var/tmp/bxjobs/slurm-1.out"
    assert record.nodes == "compute1"
    assert record.reason == "NonZeroExitCode"
    assert record.start_time is not None and record.start_time.endswith("Z")


def test_no_jobs_is_an_empty_list() -> None:
    assert batchjobs.parse_scontrol_jobs("No jobs in the system\n") == []


def test_pending_array_has_no_nodes_and_no_times() -> None:
    (record,) = batchjobs.parse_scontrol_jobs(PENDING_ARRAY_LINE)
    assert record.nodes is None
    assert record.start_time is None and record.end_time is None
    summary = batchjobs.summarize("4", [record])
    assert summary is not None and summary.phase == "Queued" and summary.reason == "Resources"


def test_local_times_are_converted_to_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert batchjobs.slurm_time("2026-12-04T12:00:00") == "2026-12-04T17:00:00Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert batchjobs.slurm_time("Unknown") is None


def test_sacct_array_folds_into_its_most_telling_failure() -> None:
    records = batchjobs.parse_sacct_jobs(SACCT)
    timeout = batchjobs.summarize("2", records)
    assert timeout is not None and timeout.phase == "Failed" and timeout.reason == "TIMEOUT"
    assert (timeout.exit_code, timeout.signal) == (0, 15)
    array = batchjobs.summarize("4", records)
    assert array is not None
    assert array.state == "FAILED" and array.exit_code == 3 and array.ended
    assert array.tasks == ("4_0", "4_1", "4_2")
    assert batchjobs.summarize("9", records) is None


def test_array_runs_while_any_task_runs() -> None:
    tasks = [
        JobRecord("5", "COMPLETED", exit_code=0, signal=0),
        JobRecord("6", "RUNNING", array_job_id="5"),
        JobRecord("7", "PENDING", array_job_id="5", reason="Resources"),
    ]
    summary = batchjobs.summarize("5", tasks)
    assert summary is not None and summary.phase == "Running" and not summary.ended


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        ("PENDING", "Queued"),
        ("REQUEUED", "Queued"),
        ("RUNNING", "Running"),
        ("COMPLETING", "Running"),
        ("SUSPENDED", "Running"),
        ("COMPLETED", "Succeeded"),
        ("CANCELLED by 0", "Cancelled"),
        ("TIMEOUT", "Failed"),
        ("OUT_OF_MEMORY", "Failed"),
        ("NODE_FAIL", "Failed"),
        ("BOOT_FAIL", "Failed"),
        ("PREEMPTED", "Failed"),
        ("DEADLINE", "Failed"),
    ],
)
def test_every_state_has_a_phase(state: str, phase: str) -> None:
    assert batchjobs.phase_of(state) == phase


def test_sbatch_argv_is_one_argument_per_option_and_spec_wins() -> None:
    request = BatchRequest(
        script=Path("/jobs/1000/ns.a.1234/.slurmlink/job.sh"),
        work_dir=Path("/jobs/1000/ns.a.1234"),
        job_name="a",
        comment="slurmlink:1234",
        partitions=("cpu", "GPU_Short"),
        nodes=2,
        memory_per_node_mib=4096,
        time_limit=math.inf,
        constraints="avx2&ib",
        account="physics; rm -rf /",
        exclusive=True,
    )
    argv = batchjobs.sbatch_argv(request)
    assert argv[:2] == ["sbatch", "--parsable"]
    assert "--partition=cpu,GPU_Short" in argv
    assert "--mem=4096M" in argv and "--nodes=2" in argv and "--time=UNLIMITED" in argv
    assert "--constraint=avx2&ib" in argv and "--exclusive" in argv
    assert "--account=physics; rm -rf /" in argv  # one argument: no shell ever reads it
    assert argv[-1] == str(request.script)
    assert "--time=90" in batchjobs.sbatch_argv(
        BatchRequest(request.script, request.work_dir, "a", "c", time_limit=90)
    )


def test_parsable_job_id() -> None:
    assert batchjobs.parse_job_id("123\n") == "123"
    assert batchjobs.parse_job_id("124;minikube\n") == "124"
    assert batchjobs.parse_job_id("") is None
