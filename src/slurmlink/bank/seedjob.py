"""The seed's ``Job`` record (myBRC REST API): checked as its server checks it, and mapped to a run.

slurm-banking-plugins send a Job from two places: at job start (``POST /jobs/``, the estimate) and
at completion (``PUT /jobs/{id}/``, the actual cost). The fields, their limits and the error shapes
follow the seed's server (Django REST framework): field errors as ``{"field": ["message"]}``, the
rest under ``non_field_errors``, amounts as nonnegative decimals of at most 11 digits and 2 decimal
places. A Job names its user by Unix uid, which this module turns into the login the ledger keys
users by, with the server host's user database, as the ``user`` role resolves logins.
"""

from __future__ import annotations

import datetime as dt
import pwd
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: The seed's server: DECIMAL_MAX_DIGITS and DECIMAL_MAX_PLACES.
MAX_DIGITS, MAX_PLACES = 11, 2
#: Slurm job states in which a job has not ended: a PUT with one of them changes nothing.
NOT_FINAL = frozenset({"PENDING", "RUNNING", "SUSPENDED", "CONFIGURING", "RESIZING", "STOPPED"})
_DECIMAL = re.compile(r"\+?(\d+\.?\d*|\.\d+)")
_DATES = ("submitdate", "startdate", "enddate")
_TEXTS = {"jobstatus": 50, "partition": 50, "qos": 50}
_INTEGERS = ("num_cpus", "num_req_nodes", "num_alloc_nodes")
_NUMBERS = ("raw_time", "cpu_time")


class JobInvalid(Exception):
    """A request the seed's server would refuse with 400: ``errors`` is the body it would send."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def decimal_problem(text: str, what: str) -> tuple[Decimal | None, str | None]:
    """``text`` as a nonnegative decimal within the seed's limits, or why it is not one.

    Only plain digits with an optional point: no exponent, no digit separators, as the plugins
    write amounts. Digits are counted as the seed's server counts them (all of them, both sides).
    """
    if text.startswith("-") and _DECIMAL.fullmatch(text[1:]):
        return None, f"{what} {text} is not nonnegative."
    if not _DECIMAL.fullmatch(text):
        return None, f"{what} {text} is not a decimal number."
    value = Decimal(text)
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    places = max(-exponent, 0)
    if len(digits) > MAX_DIGITS:
        return None, f"{what} {text} has greater than {MAX_DIGITS} digits."
    if places > MAX_PLACES:
        return None, f"{what} {text} has greater than {MAX_PLACES} decimal places."
    return value, None


def login_of(uid: str) -> str | None:
    """The login of Unix uid ``uid`` on this host, or None when there is none."""
    if not uid.isdigit():
        return None
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, OverflowError):
        return None


def uid_of(login: str) -> str | None:
    try:
        return str(pwd.getpwnam(login).pw_uid)
    except KeyError:
        return None


def _text(value: Any) -> str | None:
    """A string field as DRF's CharField takes it: strings and numbers, not lists or objects."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value).strip()


def _date(value: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


@dataclass(frozen=True)
class SeedJob:
    """A checked Job: ``fields`` is the record echoed back and kept with the run."""

    fields: dict[str, Any]
    job_id: int
    login: str
    account: str
    amount: Decimal | None
    submitted: dt.datetime | None

    @property
    def final(self) -> bool:
        """Whether the job has ended (its jobstatus is not one of a job still queued or running)."""
        status = self.fields.get("jobstatus")
        return not status or status.upper() not in NOT_FINAL

    @property
    def submit_time(self) -> int:
        """Seconds since the epoch of the submit time (0 when the Job has none): part of the run key."""
        return int(self.submitted.timestamp()) if self.submitted else 0


def parse_job(body: Any, *, url_id: str | None = None) -> SeedJob:
    """Check a Job body as the seed's server does; JobInvalid with its error body otherwise."""
    if not isinstance(body, dict):
        got = type(body).__name__
        raise JobInvalid({"non_field_errors": [f"Invalid data. Expected a dictionary, but got {got}."]})
    errors: dict[str, list[str]] = {}
    fields: dict[str, Any] = {}
    if url_id is not None and body.get("jobslurmid") is None:
        body = {**body, "jobslurmid": url_id}
    for name in ("jobslurmid", "userid", "accountid"):
        value = _text(body.get(name))
        if not value:
            errors[name] = ["This field is required." if body.get(name) is None else "Not a valid string."]
        else:
            fields[name] = value
    job_id = fields.get("jobslurmid", "")
    if job_id and (not job_id.isdigit() or int(job_id) == 0 or len(job_id) > 150):
        errors["jobslurmid"] = [f"{job_id} is not a Slurm job id (a whole number greater than 0)."]
    if url_id is not None and job_id and job_id != url_id:
        errors["jobslurmid"] = [f"{job_id} does not match the job id in the URL ({url_id})."]
    login = None
    if "userid" in fields:
        login = login_of(fields["userid"])
        if login is None:
            errors["userid"] = [f"No user exists with user_id {fields['userid']}."]
    amount = None
    if body.get("amount") is not None:
        text = _text(body["amount"]) or ""
        amount, problem = decimal_problem(text, "amount")
        if problem:
            errors["amount"] = [problem]
        else:
            assert amount is not None
            fields["amount"] = str(amount.quantize(Decimal(1).scaleb(-MAX_PLACES)))
    dates: dict[str, dt.datetime] = {}
    for name in _DATES:
        value = body.get(name)
        if value is None:
            fields[name] = None
            continue
        moment = _date(value) if isinstance(value, str) else None
        if moment is None:
            errors[name] = ["Datetime has wrong format. Use ISO 8601, e.g. 2021-03-17T10:00:00+00:00."]
        else:
            dates[name] = moment
            fields[name] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, limit in _TEXTS.items():
        value = body.get(name)
        given = _text(value) if value is not None else None
        if value is not None and (given is None or len(given) > limit):
            errors[name] = [f"Ensure this field is a string of no more than {limit} characters."]
        fields[name] = given
    for name in _INTEGERS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            errors[name] = ["A valid integer is required."]
        fields[name] = value
    for name in _NUMBERS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            errors[name] = ["A valid number is required."]
        fields[name] = value
    nodes = body.get("nodes")
    if nodes is not None:
        if not isinstance(nodes, list) or not all(
            isinstance(n, dict) and isinstance(n.get("name"), str) and 0 < len(n["name"]) <= 30 for n in nodes
        ):
            errors["nodes"] = ['Expected a list of nodes, each {"name": "<1-30 characters>"}.']
        else:
            fields["nodes"] = [{"name": n["name"]} for n in nodes]
    order = [
        ("submitdate", "startdate", "start"),
        ("startdate", "enddate", "end"),
        ("submitdate", "enddate", "end"),
    ]
    for earlier, later, what in order:
        if earlier in dates and later in dates and dates[later] < dates[earlier]:
            errors.setdefault("non_field_errors", []).append(
                f"Job {what} date {fields[later]} occurs before Job {earlier[:-4]} date {fields[earlier]}."
            )
    if errors:
        raise JobInvalid(errors)
    assert login is not None
    return SeedJob(
        fields=fields,
        job_id=int(job_id),
        login=login,
        account=fields["accountid"],
        amount=amount,
        submitted=dates.get("submitdate"),
    )
