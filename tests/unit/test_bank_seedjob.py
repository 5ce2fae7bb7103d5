"""The seed's Job record and cost strings, checked as the seed's server checks them."""

from __future__ import annotations

import os
import pwd
from decimal import Decimal

import pytest

from slurmlink.bank.seedjob import JobInvalid, decimal_problem, parse_job

ME = pwd.getpwuid(os.getuid())


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", "0"), ("40", "40"), ("12.5", "12.5"), ("999999999.99", "999999999.99"), (".5", "0.5")],
)
def test_costs_the_seed_accepts(text: str, value: str) -> None:
    assert decimal_problem(text, "job_cost") == (Decimal(value), None)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("12.345", "greater than 2 decimal places"),
        ("-1", "is not nonnegative"),
        ("abc", "is not a decimal number"),
        ("1e5", "is not a decimal number"),
        ("1_000", "is not a decimal number"),
        ("NaN", "is not a decimal number"),
        ("123456789012", "greater than 11 digits"),
        ("1000000000.00", "greater than 11 digits"),
    ],
)
def test_costs_the_seed_refuses(text: str, words: str) -> None:
    value, problem = decimal_problem(text, "job_cost")
    assert value is None and problem is not None and words in problem


def test_a_job_is_normalised_and_keyed_by_its_submit_time() -> None:
    job = parse_job(
        {
            "jobslurmid": 17,
            "userid": str(ME.pw_uid),
            "accountid": "fc_a",
            "amount": "4",
            "jobstatus": "COMPLETED",
            "submitdate": "2021-03-17T12:00:00+02:00",
            "startdate": "2021-03-17T10:01:00Z",
        }
    )
    assert (job.job_id, job.login, job.account, job.amount) == (17, ME.pw_name, "fc_a", Decimal(4))
    assert job.fields["amount"] == "4.00" and job.fields["submitdate"] == "2021-03-17T10:00:00Z"
    assert job.submit_time == 1_615_975_200 and job.final


@pytest.mark.parametrize(("status", "final"), [("RUNNING", False), ("pending", False), ("TIMEOUT", True)])
def test_only_an_ended_job_is_final(status: str, final: bool) -> None:
    body = {"jobslurmid": "1", "userid": str(ME.pw_uid), "accountid": "a", "jobstatus": status}
    assert parse_job(body).final is final


def test_errors_come_per_field_as_the_seeds_server_sends_them() -> None:
    with pytest.raises(JobInvalid) as caught:
        parse_job(
            {
                "jobslurmid": "12a",
                "accountid": "fc_a",
                "amount": "1.001",
                "num_cpus": "four",
                "startdate": "2021-03-17T10:00:00Z",
                "enddate": "2021-03-17T09:00:00Z",
            }
        )
    errors = caught.value.errors
    assert errors["userid"] == ["This field is required."]
    assert set(errors) == {"jobslurmid", "userid", "amount", "num_cpus", "non_field_errors"}
    assert errors["non_field_errors"] == [
        "Job end date 2021-03-17T09:00:00Z occurs before Job start date 2021-03-17T10:00:00Z."
    ]
    with pytest.raises(JobInvalid) as caught:
        parse_job({"jobslurmid": "2", "userid": str(ME.pw_uid), "accountid": "a"}, url_id="3")
    assert "does not match the job id in the URL" in caught.value.errors["jobslurmid"][0]
    with pytest.raises(JobInvalid) as caught:
        parse_job(["not", "a", "job"])
    assert caught.value.errors == {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}
