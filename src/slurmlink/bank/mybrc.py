"""The seed's banking API under ``/mybrc-rest``, so slurm-banking-plugins can use slurmlink's ledger.

A site running the seed's plugins points their ``[API] url`` here and keeps its Slurm configuration.
The endpoints take the seed's requests and answer in its shapes (Django REST framework's), backed
by the same ledger as ``/bank/v1``, with one deliberate difference: nothing is overdrawn.

- ``GET can_submit_job/{cost}/{uid}/{account}/`` answers whether the account's available units (and
  the user's cap, if any) cover the cost. An unknown uid or account is ``success: false`` with 200,
  so the seed's submit plugin rejects the job (it lets any non-200 answer through).
- ``POST jobs/`` (sent when the job starts) places a hold for the run; an account that cannot cover
  it is refused with 400, where the seed's server would overdraw. The seed's start plugin ignores
  errors, so the job runs anyway, unheld; its ``PUT`` then charges what the account still covers and
  the ledger records the rest on the run as ``unbilled``.
- ``PUT jobs/{id}/`` with a final jobstatus settles the run: charges the actual amount and releases
  its hold (a run never POSTed is charged directly). A jobstatus of a job still queued or running
  changes nothing.
- ``GET jobs/?page=N`` lists the ledger's runs as Jobs, 100 a page, as DRF paginates.

The run of a Job is (ledger cluster, jobslurmid, restart 0, submitdate): the plugins send the same
submitdate from start and completion, and Slurm gives a requeued job a new one. Replays are
idempotent because the ledger's keys are run-derived. Callers authenticate with ``Authorization:
Token <t>`` (a token from ``slurmlink kubeconfig --token``) and need the admin, accountant or
workload-manager role.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from slurmlink import jsonutil
from slurmlink.api.component import ApiRoute, Component
from slurmlink.api.status import json_response
from slurmlink.auth.identity import Identity
from slurmlink.bank.books import ACTIVE
from slurmlink.bank.errors import BankError, IdempotencyConflict, NotFound
from slurmlink.bank.ledger import HELD, RELEASED, SETTLED, Actor, Ledger
from slurmlink.bank.runs import RunKey
from slurmlink.bank.seedjob import JobInvalid, SeedJob, decimal_problem, login_of, parse_job, uid_of

PREFIX = "/mybrc-rest"
ROLES = frozenset({"admin", "accountant", "workload-manager"})
PAGE_SIZE = 100
#: The ``source`` the ledger records for operations that came this way.
SOURCE = "mybrc"
#: A run's jobstatus when its Job record does not say (runs held and settled through ``/bank/v1``).
_STATUS_OF_STATE = {HELD: "RUNNING", SETTLED: "COMPLETED", RELEASED: "CANCELLED"}
T = TypeVar("T")


#: What a settle records as the charge's inputs (the plugin computed the amount with its own prices).
_SETTLE_INPUTS = ("partition", "qos", "num_cpus", "raw_time", "cpu_time", "startdate", "enddate")


def _required(amount: Decimal | None) -> Decimal:
    if amount is None:
        raise JobInvalid({"amount": ["This field is required."]})
    return amount


def _answer(status: int, success: bool, message: str) -> Response:
    return json_response({"success": success, "message": message}, status)


def _invalid(errors: dict[str, Any]) -> Response:
    return json_response(errors, 400)


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return jsonutil.loads(raw)
    except ValueError as exc:
        raise JobInvalid({"detail": f"JSON parse error - {exc}"}) from None


def _job_of_run(run: dict[str, Any]) -> dict[str, Any]:
    """A ledger run as the seed's Job: the record its plugin sent, else what the ledger knows."""
    job = dict((run.get("details") or {}).get("mybrc") or {})
    job["jobslurmid"] = str(run["jobId"])
    job["accountid"] = run["account"]
    job["userid"] = job.get("userid") or uid_of(run["user"])
    if not job.get("amount"):
        amount = Decimal(run["held"]) + Decimal(run["charged"]) + Decimal(run["unbilled"])
        job["amount"] = str(amount.quantize(Decimal("0.01")))
    if run["state"] == RELEASED or not job.get("jobstatus"):
        job["jobstatus"] = _STATUS_OF_STATE.get(run["state"], run["state"].upper())
    return job


def mybrc_component(ledger: Ledger) -> Component:
    """The seed-compatible routes over ``ledger``."""

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await ledger.store.call(fn, *args, **kwargs)

    def run_of(job: SeedJob) -> RunKey:
        return RunKey(ledger.cluster, job.job_id, 0, job.submit_time)

    async def can_submit_job(request: Request, identity: Identity) -> Any:
        """Whether the account (and the user's cap) covers a job's estimated cost."""
        p = request.path_params
        cost_text, uid, account = (p[k].strip() for k in ("job_cost", "user_id", "account_id"))
        for name, value in (("job_cost", cost_text), ("user_id", uid), ("account_id", account)):
            if not value:
                return _answer(400, False, f"{name} {value} is not a nonempty string.")
        cost, problem = decimal_problem(cost_text, "job_cost")
        if problem or cost is None:
            return _answer(400, False, problem or "job_cost is not a decimal number.")
        login = login_of(uid)
        if login is None:
            return _answer(200, False, f"No user exists with user_id {uid}.")
        try:
            balance = await call(ledger.balance, account)
            cap, used = await call(ledger.user_usage, account, login)
        except NotFound:
            return _answer(200, False, f"No account exists with account_id {account}.")
        if balance.status != ACTIVE:
            return _answer(200, False, f"Account {account} is {balance.status}: no new jobs may run on it.")
        if cost > balance.available:
            return _answer(
                200,
                False,
                f"Adding job_cost {cost_text} to account {account} would exceed its available balance "
                f"{balance.available} ({balance.held} held by running jobs).",
            )
        if cap is not None and used + cost > cap:
            return _answer(
                200,
                False,
                f"Adding job_cost {cost_text} to user {login}'s usage {used} of account {account} would "
                f"exceed the user's cap {cap}.",
            )
        return _answer(200, True, f"A job with job_cost {cost_text} can be submitted.")

    async def create_job(request: Request, identity: Identity) -> Any:
        """A job started: hold its estimated amount for the run."""
        try:
            job = parse_job(await _body(request))
            amount = _required(job.amount)
        except JobInvalid as exc:
            return _invalid(exc.errors)
        try:
            await call(
                ledger.hold,
                run_of(job),
                job.account,
                job.login,
                amount,
                actor=Actor(identity.user, SOURCE),
                details={"mybrc": job.fields},
            )
        except NotFound:
            return _invalid({"accountid": [f"Object with name={job.account} does not exist."]})
        except IdempotencyConflict:
            message = "job with this jobslurmid already exists (held with another amount, account or user)."
            return _invalid({"jobslurmid": [message]})
        except BankError as exc:  # cannot cover it, locked account, ...: refused, never overdrawn
            return _invalid({"non_field_errors": [str(exc)]})
        return json_response(job.fields, 201)

    async def update_job(request: Request, identity: Identity) -> Any:
        """A job ended: charge its actual amount to the run and release the hold."""
        try:
            job = parse_job(await _body(request), url_id=request.path_params["jobslurmid"])
            if not job.final:
                return json_response(job.fields)
            amount = _required(job.amount)
        except JobInvalid as exc:
            return _invalid(exc.errors)
        inputs = {k: job.fields[k] for k in _SETTLE_INPUTS if job.fields.get(k) is not None}
        try:
            await call(
                ledger.settle,
                await held_run(job),
                job.account,
                job.login,
                amount,
                actor=Actor(identity.user, SOURCE),
                inputs={"source": "slurm-banking-plugins", **inputs},
                details={"mybrc": job.fields},
            )
        except NotFound:
            return _invalid({"accountid": [f"Object with name={job.account} does not exist."]})
        except IdempotencyConflict:
            message = (
                f"job {job.job_id} was already settled with another amount; the first settlement "
                "stands (correct it with slurmlink bank refund or adjust)."
            )
            return _invalid({"non_field_errors": [message]})
        except BankError as exc:
            return _invalid({"non_field_errors": [str(exc)]})
        return json_response(job.fields)

    async def held_run(job: SeedJob) -> RunKey:
        """The Job's run; when that is unknown but the account holds exactly one open run of the same
        job id (its start came without a submitdate), that one, so its hold is not left behind."""
        run = run_of(job)
        if await call(ledger.run, run) is not None:
            return run
        held = await call(ledger.runs, account=job.account, state=HELD)
        same = [r for r in held if r["jobId"] == job.job_id]
        return RunKey.parse(same[0]["run"]) if len(same) == 1 else run

    async def list_jobs(request: Request, identity: Identity) -> Any:
        """The ledger's runs as the seed's Jobs, 100 a page."""
        runs = await call(ledger.runs)
        pages = max(1, math.ceil(len(runs) / PAGE_SIZE))
        given = request.query_params.get("page", "1")
        page = pages if given == "last" else (int(given) if given.isdigit() else 0)
        if not 1 <= page <= pages:
            return json_response({"detail": "Invalid page."}, 404)
        url = request.url
        previous = None
        if page > 1:
            previous = (
                url.remove_query_params("page") if page == 2 else url.include_query_params(page=page - 1)
            )
        following = url.include_query_params(page=page + 1) if page < pages else None
        window = runs[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        return {
            "count": len(runs),
            "next": str(following) if following else None,
            "previous": str(previous) if previous else None,
            "results": [_job_of_run(run) for run in window],
        }

    routes = [
        ApiRoute("/can_submit_job/{job_cost}/{user_id}/{account_id}/", can_submit_job, ("GET",), ROLES),
        ApiRoute("/jobs/", list_jobs, ("GET",), ROLES),
        ApiRoute("/jobs/", create_job, ("POST",), ROLES),
        ApiRoute("/jobs/{jobslurmid}/", update_job, ("PUT",), ROLES),
    ]
    return Component(name="mybrc-rest", prefix=PREFIX, routes=routes, openapi=openapi_document())


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    """The seed's API (its Swagger 2.0 ``spec/swagger.json``, the parts served) as OpenAPI 3."""
    nullable_text = {"type": "string", "maxLength": 50, "nullable": True}
    job = {
        "type": "object",
        "required": ["jobslurmid", "userid", "accountid"],
        "properties": {
            "jobslurmid": {"type": "string", "minLength": 1, "maxLength": 150, "pattern": "^[0-9]+$"},
            "userid": {"type": "string", "pattern": "^[0-9]+$", "description": "the user's Unix uid"},
            "accountid": {"type": "string", "description": "the Slurm (and bank) account"},
            "submitdate": {"type": "string", "format": "date-time", "nullable": True},
            "startdate": {"type": "string", "format": "date-time", "nullable": True},
            "enddate": {"type": "string", "format": "date-time", "nullable": True},
            "amount": {"type": "string", "format": "decimal", "description": "≤ 11 digits, ≤ 2 places"},
            "jobstatus": nullable_text,
            "partition": nullable_text,
            "qos": nullable_text,
            "nodes": {"type": "array", "items": _ref("Node")},
            "num_cpus": {"type": "integer", "format": "int32", "nullable": True},
            "num_req_nodes": {"type": "integer", "format": "int32", "nullable": True},
            "num_alloc_nodes": {"type": "integer", "format": "int32", "nullable": True},
            "raw_time": {"type": "number", "nullable": True},
            "cpu_time": {"type": "number", "nullable": True},
        },
    }
    answer = {
        "type": "object",
        "properties": {"success": {"type": "boolean"}, "message": {"type": "string", "nullable": True}},
    }
    errors = {"description": "Invalid (Django REST framework's shape)", **_json_content(_ref("Errors"))}
    auth = {"401": {"description": "No or unknown token"}, "403": {"description": "Role not allowed"}}
    roles = sorted(ROLES)
    job_id = {"name": "jobslurmid", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "info": {"title": "myBRC REST API (slurmlink's seed-compatible banking API)", "version": "v1"},
        "security": [{"Token": []}],
        "components": {
            "securitySchemes": {
                "Token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Token <t>, t issued by slurmlink kubeconfig --token",
                }
            },
            "schemas": {
                "Job": job,
                "Node": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}}},
                "CanSubmitJob": answer,
                "Errors": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
                "JobPage": {
                    "type": "object",
                    "properties": {
                        "count": {"type": "integer"},
                        "next": {"type": "string", "format": "uri", "nullable": True},
                        "previous": {"type": "string", "format": "uri", "nullable": True},
                        "results": {"type": "array", "items": _ref("Job")},
                    },
                },
            },
        },
        "paths": {
            f"{PREFIX}/can_submit_job/{{job_cost}}/{{user_id}}/{{account_id}}/": {
                "get": {
                    "operationId": "can_submit_job_read",
                    "summary": "Whether the account's available units (and the user's cap) cover job_cost",
                    "parameters": [
                        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                        for n in ("job_cost", "user_id", "account_id")
                    ],
                    "responses": {
                        "200": {
                            "description": "success true or false, and why",
                            **_json_content(_ref("CanSubmitJob")),
                        },
                        "400": {"description": "job_cost malformed", **_json_content(_ref("CanSubmitJob"))},
                        **auth,
                    },
                    "x-slurmlink-roles": roles,
                }
            },
            f"{PREFIX}/jobs/": {
                "get": {
                    "operationId": "jobs_list",
                    "summary": "The ledger's runs as Jobs, 100 a page",
                    "parameters": [{"name": "page", "in": "query", "schema": {"type": "integer"}}],
                    "responses": {
                        "200": {"description": "A page", **_json_content(_ref("JobPage"))},
                        "404": {"description": "Invalid page"},
                        **auth,
                    },
                    "x-slurmlink-roles": roles,
                },
                "post": {
                    "operationId": "jobs_create",
                    "summary": "A job started: hold its amount for the run (refused if not covered)",
                    "requestBody": _json_content(_ref("Job")),
                    "responses": {
                        "201": {"description": "Held", **_json_content(_ref("Job"))},
                        "400": errors,
                        **auth,
                    },
                    "x-slurmlink-roles": roles,
                },
            },
            f"{PREFIX}/jobs/{{jobslurmid}}/": {
                "put": {
                    "operationId": "jobs_update",
                    "summary": "A job ended: charge the actual amount and release the hold",
                    "parameters": [job_id],
                    "requestBody": _json_content(_ref("Job")),
                    "responses": {
                        "200": {"description": "Settled", **_json_content(_ref("Job"))},
                        "400": errors,
                        **auth,
                    },
                    "x-slurmlink-roles": roles,
                }
            },
        },
    }
