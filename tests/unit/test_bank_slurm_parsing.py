"""What the bank's Slurm side reads: sacct -D records as runs, squeue --json as job records, the hook's
environment, and job_submit.lua's fields as a job request."""

from __future__ import annotations

import json
from pathlib import Path

from slurmlink.bank.tres import INFINITE
from slurmlink.slurm import bank_hook
from slurmlink.slurm.accounting import FIELDS, parse_sacct
from slurmlink.slurm.gateway.bank import job_request
from slurmlink.slurm.jobrecord import parse_run_time, parse_squeue_jobs, run_time_of


def sacct_line(**values: str) -> str:
    defaults = {
        "JobIDRaw": "7",
        "DBIndex": "1",
        "Cluster": "c1",
        "Account": "physics",
        "User": "alice",
        "Partition": "debug",
        "QOS": "normal",
        "State": "COMPLETED",
        "Submit": "1000",
        "Start": "1010",
        "End": "1070",
        "ElapsedRaw": "60",
        "AllocTRES": "cpu=2,node=1,billing=2",
    }
    defaults.update(values)
    return "|".join(defaults[name] for name in FIELDS)


def test_every_run_of_a_requeued_job_is_its_own_record_in_dbindex_order() -> None:
    text = "\n".join(
        [
            sacct_line(DBIndex="12", State="COMPLETED", Start="2000", ElapsedRaw="30"),
            sacct_line(DBIndex="5", State="REQUEUED", Start="1010"),
            sacct_line(JobIDRaw="8", State="CANCELLED by 1000", Start="0", ElapsedRaw="0"),  # never ran
            sacct_line(JobIDRaw="9", State="RUNNING"),  # not over
            sacct_line(JobIDRaw="10_3"),  # an array task's display id: not a raw id
            "garbage",
        ]
    )
    runs = parse_sacct(text)
    assert [(r.job_id, r.restart_count, r.state, r.elapsed) for r in runs] == [
        (7, 0, "REQUEUED", 60),
        (7, 1, "COMPLETED", 30),
    ]
    assert runs[0].tres_alloc == "cpu=2,node=1,billing=2" and runs[0].submit_time == 1000


def test_squeue_json_and_scontrol_run_time() -> None:
    job = {
        "job_id": 42,
        "cluster": "c1",
        "account": "physics",
        "user_name": "alice",
        "user_id": 1000,
        "partition": "debug",
        "qos": "normal",
        "job_state": "COMPLETED",
        "time_limit": None,
        "submit_time": 100,
        "start_time": 110,
        "end_time": 170,
        "restart_cnt": 2,
        "tres_alloc_str": "cpu=1,node=1",
        "admin_comment": "slurmlink-bank:estimate=1.00",
        "array_job_id": 0,
        "array_task_id": None,
    }
    later = {**job, "job_id": 43, "job_state": ["RUNNING"], "time_limit": {"set": True, "number": 30}}
    first, second = parse_squeue_jobs(json.dumps({"jobs": [job, later]}))
    assert first.time_limit is None and first.restart_count == 2 and first.state == "COMPLETED"
    assert second.time_limit == 30 and second.state == "RUNNING"
    assert parse_run_time("1-02:03:04") == 93784 and parse_run_time("00:00:07") == 7
    assert parse_run_time("Unknown") is None
    assert run_time_of("JobId=42 JobName=x RunTime=00:01:05 TimeLimit=UNLIMITED") == 65


def test_the_hook_sends_the_job_from_its_environment_and_needs_a_job() -> None:
    env = {"SLURM_JOB_ID": "42", "SLURM_CLUSTER_NAME": "c1", "SLURM_JOB_RESTART_COUNT": "1", "HOME": "/"}
    assert bank_hook.fields(env) == {"job_id": "42", "cluster": "c1", "restart": "1"}
    assert bank_hook.main(["prolog"], env={}) == 2
    assert bank_hook.main(["nonsense"], env=env) == 2
    # No gateway at that socket: a failure Slurm sees (exit 1), after the connect retries.
    assert (
        bank_hook.main(["--socket", "/nonexistent/slurmlink.sock", "epilog"], env=env, connect_retry=0.3) == 1
    )


def test_job_submit_fields_arrive_as_text_with_slurms_sentinels() -> None:
    request = job_request(
        {
            "partition": "debug",
            "default_account": "physics",
            "num_tasks": "4294967294",  # NO_VAL: not given
            "cpus_per_task": "65534",  # NO_VAL16
            "time_limit": "30",
            "shared": "0",  # --exclusive
            "array_inx": "1-10%2",
        }
    )
    assert request.account == "physics" and request.num_tasks is None and request.cpus_per_task is None
    assert request.time_limit == 30 and request.exclusive and request.array_inx == "1-10%2"
    assert job_request({"time_limit": str(INFINITE)}).time_limit == INFINITE


def test_the_submit_check_counts_pending_jobs_from_the_queue_and_acceptances_since() -> None:
    import asyncio
    from decimal import Decimal

    from slurmlink.slurm.gateway.bank import BankView, PendingJobs
    from slurmlink.slurm.gateway.banksettings import BankSettings
    from slurmlink.slurm.jobrecord import JobRecord

    view = BankView(None, BankSettings())  # type: ignore[arg-type]
    first = view.record("physics", Decimal("10.00"))
    second = view.record("physics", Decimal("20.00"))
    assert len(first) == 16 and second > first
    assert view.exposure("physics") == Decimal(30)  # the queue shows neither yet

    def job(job_id: int, state: str, comment: str, tasks: str = "") -> JobRecord:
        return JobRecord(
            job_id,
            "c1",
            "physics",
            "alice",
            1000,
            "debug",
            "",
            state,
            5,
            0,
            0,
            0,
            0,
            "",
            comment,
            0,
            None,
            array_task_string=tasks,
        )

    view.pending = PendingJobs.from_jobs(
        [
            job(1, "PENDING", f"slurmlink-bank:estimate=10.00:{first}"),
            job(2, "RUNNING", "note slurmlink-bank:estimate=7.00:0000000000000001"),  # held by now
            job(3, "PENDING", "slurmlink-bank:estimate=2.50:0000000000000002", tasks="1-4"),  # an array
            job(4, "PENDING", "no stamp: accepted while the gateway was away"),
        ]
    )
    # Job 1 is seen (10), the array counts 4 x 2.50, the second acceptance is not in the queue yet.
    assert view.pending.newest_token == first
    assert view.exposure("physics") == Decimal(10) + Decimal(10) + Decimal(20)
    assert view.exposure("physics", modified_job=1) == Decimal(30)  # its new estimate replaces it
    assert view.exposure("chemistry") == 0
    asyncio.run(view.poll_pending())  # without Slurm commands: nothing changes
    assert view.pending.newest_token == first


def test_a_spooled_charge_stays_in_the_spool_until_the_bank_takes_it(tmp_path: Path) -> None:
    import asyncio

    from slurmlink.client.http import UnreachableError
    from slurmlink.slurm.gateway.bank import BankHooks
    from slurmlink.slurm.gateway.banksettings import BankSettings

    class DownBank:
        """The bank's API while the server is stopped."""

        async def call(self, method: str, path: str, body: object = None, **_: object) -> object:
            raise UnreachableError("https://127.0.0.1:1", "connection refused")

    hooks = BankHooks(DownBank(), None, BankSettings(spool_dir=tmp_path))  # type: ignore[arg-type]
    spooled = tmp_path / "c1_7_0_5.json"
    spooled.write_text(
        json.dumps({"run": "c1:7:0:5", "body": {"account": "a", "user": "u", "amount": "1.00"}})
    )
    assert asyncio.run(hooks.send_spooled()) == 0
    assert spooled.exists()  # kept for the next round
