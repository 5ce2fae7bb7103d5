"""The bank's REST API, ``/bank/v1``: accounts, grants, balances, statements, runs, transfers.

Who may do what: ``admin`` everything; ``accountant`` creates accounts, grants, adjusts, transfers
and refunds; ``workload-manager`` (the Slurm hooks) holds, settles and releases runs; ``viewer``
reads everything; ``user`` reads the accounts they belong to, and only their own jobs' lines.
Writes take an ``Idempotency-Key`` header: a retry with the same key gets the first answer back;
the hooks' run operations are keyed by the run whatever the header says.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from starlette.requests import Request

from slurmlink import jsonutil
from slurmlink.api.component import ApiRoute, Component
from slurmlink.auth import roles
from slurmlink.auth.identity import Identity
from slurmlink.bank import money
from slurmlink.bank.errors import BankError
from slurmlink.bank.estimate import from_job_desc
from slurmlink.bank.ledger import DENY, Actor, Ledger
from slurmlink.bank.ratecard import RateCard, RateCardError, load_rate_card
from slurmlink.bank.runs import RunKey
from slurmlink.resources import errors

PREFIX = "/bank/v1"
T = TypeVar("T")

ADMIN = frozenset({"admin"})
ACCOUNTANT = frozenset({"admin", "accountant"})
HOOKS = frozenset({"admin", "workload-manager"})
READERS = frozenset({"admin", "accountant", "workload-manager", "viewer"})


def api_error(exc: BankError) -> errors.ApiError:
    return errors.ApiError(exc.code, exc.reason, str(exc))


async def _call(ledger: Ledger, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A ledger call off the event loop where the store needs it, its errors as API errors."""
    try:
        return await ledger.store.call(fn, *args, **kwargs)
    except BankError as exc:
        raise api_error(exc) from exc


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = jsonutil.loads(raw or b"{}")
    except ValueError as exc:
        raise errors.bad_request(f"the body must be JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.bad_request("the body must be a JSON object")
    return body


def _amount(body: dict[str, Any], field: str = "amount", *, negative: bool = False) -> Decimal:
    if field not in body:
        raise errors.bad_request(f'"{field}" is required (a decimal string, e.g. "100.00")')
    try:
        return money.parse(body[field], what=field, allow_negative=negative)
    except BankError as exc:
        raise api_error(exc) from exc


def _time(body: dict[str, Any], field: str) -> dt.datetime | None:
    value = body.get(field)
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise errors.bad_request(f'"{field}" must be an ISO 8601 time, e.g. 2027-01-01T00:00:00Z') from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _key(request: Request, what: str) -> str:
    """The caller's idempotency key, or a fresh one (a request without one is not retry-safe)."""
    given = request.headers.get("idempotency-key", "").strip()
    if len(given) > 300:
        raise errors.bad_request("Idempotency-Key is longer than 300 characters")
    return f"{what}:{given or uuid.uuid4().hex}"


def _actor(identity: Identity) -> Actor:
    source = "hook" if "workload-manager" in roles.roles_of(identity) else "api"
    return Actor(identity.user, source)


def _is_privileged(identity: Identity) -> bool:
    return bool(set(roles.roles_of(identity)) & READERS)


async def _readable(ledger: Ledger, identity: Identity, account: str) -> str | None:
    """None if ``identity`` reads every line of ``account``; else the user whose lines it reads.

    A ``user`` outside the account is told it does not exist, as Kubernetes hides what one may not
    read.
    """
    if _is_privileged(identity):
        return None
    if account not in await _call(ledger, ledger.accounts_of, identity.user):
        raise errors.ApiError(
            404, "NotFound", f"bank account {account!r} does not exist or you are not one of its users"
        )
    return identity.user


def _run(request: Request) -> RunKey:
    try:
        return RunKey.parse(request.path_params["run"])
    except BankError as exc:
        raise api_error(exc) from exc


def bank_component(ledger: Ledger) -> Component:
    """The bank's routes over ``ledger``."""

    async def list_accounts(request: Request, identity: Identity) -> Any:
        items = await _call(ledger, ledger.accounts)
        if not _is_privileged(identity):
            mine = set(await _call(ledger, ledger.accounts_of, identity.user))
            items = [item for item in items if item["name"] in mine]
        return {"items": items}

    async def create_account(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        name = body.get("name")
        if not isinstance(name, str):
            raise errors.bad_request('"name" is required (the Slurm account name)')
        overdraft = _amount(body, "overdraftLimit") if "overdraftLimit" in body else Decimal(0)
        return await _call(
            ledger,
            ledger.create_account,
            name,
            parent=body.get("parent"),
            overdraft=overdraft,
            description=str(body.get("description") or ""),
        )

    async def get_account(request: Request, identity: Identity) -> Any:
        name = request.path_params["account"]
        await _readable(ledger, identity, name)
        return await _call(ledger, ledger.account, name)

    async def patch_account(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        overdraft = _amount(body, "overdraftLimit") if "overdraftLimit" in body else None
        return await _call(
            ledger,
            ledger.update_account,
            request.path_params["account"],
            overdraft=overdraft,
            status=body.get("status"),
        )

    async def put_user(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        account, user = request.path_params["account"], request.path_params["user"]
        await _call(ledger, ledger.set_member, account, user, True)
        if "cap" in body:
            cap = _amount(body, "cap") if body["cap"] is not None else None
            return await _call(ledger, ledger.set_user_cap, account, user, cap)
        return await _call(ledger, ledger.account, account)

    async def delete_user(request: Request, identity: Identity) -> Any:
        account, user = request.path_params["account"], request.path_params["user"]
        await _call(ledger, ledger.set_user_cap, account, user, None)
        return await _call(ledger, ledger.set_member, account, user, False)

    async def balance(request: Request, identity: Identity) -> Any:
        name = request.path_params["account"]
        await _readable(ledger, identity, name)
        return (await _call(ledger, ledger.balance, name)).to_json()

    async def allocations(request: Request, identity: Identity) -> Any:
        name = request.path_params["account"]
        await _readable(ledger, identity, name)
        return {"items": await _call(ledger, ledger.allocations, name)}

    async def statement(request: Request, identity: Identity) -> Any:
        name = request.path_params["account"]
        user = await _readable(ledger, identity, name)
        since = _time(dict(request.query_params), "since")
        try:
            limit = int(request.query_params.get("limit", "1000"))
        except ValueError:
            raise errors.bad_request("limit must be a whole number") from None
        items = await _call(ledger, ledger.statement, name, since=since, limit=limit, user=user)
        return {"account": name, "items": items}

    async def grant(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        return await _call(
            ledger,
            ledger.grant,
            request.path_params["account"],
            _amount(body),
            key=_key(request, "grant"),
            actor=_actor(identity),
            starts_at=_time(body, "startsAt"),
            ends_at=_time(body, "endsAt"),
            priority=int(body.get("priority") or 0),
            reference=str(body.get("reference") or ""),
            rollover_percent=int(body.get("rolloverPercent") or 0),
        )

    async def adjust(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        return await _call(
            ledger,
            ledger.adjust,
            request.path_params["account"],
            _amount(body, negative=True),
            key=_key(request, "adjust"),
            actor=_actor(identity),
            reason=str(body.get("reason") or ""),
        )

    async def transfer(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        for field in ("from", "to"):
            if not isinstance(body.get(field), str):
                raise errors.bad_request(f'"{field}" is required (an account name)')
        return await _call(
            ledger,
            ledger.transfer,
            body["from"],
            body["to"],
            _amount(body),
            key=_key(request, "transfer"),
            actor=_actor(identity),
            reason=str(body.get("reason") or ""),
            ends_at=_time(body, "endsAt"),
        )

    async def list_runs(request: Request, identity: Identity) -> Any:
        q = request.query_params
        user = None if _is_privileged(identity) else identity.user
        if user is None and q.get("user"):
            user = q["user"]
        job = q.get("jobId")
        if job is not None and not job.isdigit():
            raise errors.bad_request("jobId must be a Slurm job id (digits)")
        items = await _call(
            ledger,
            ledger.runs,
            account=q.get("account"),
            state=q.get("state"),
            user=user,
            job_id=int(job) if job else None,
            updated_since=_time(dict(q), "updatedSince"),
        )
        return {"items": items}

    async def get_run(request: Request, identity: Identity) -> Any:
        found = await _call(ledger, ledger.run, _run(request))
        if found is None or (not _is_privileged(identity) and found["user"] != identity.user):
            raise errors.ApiError(
                404, "NotFound", f"run {request.path_params['run']!r} is not known to the bank"
            )
        return found

    def _account_of(body: dict[str, Any]) -> str:
        account = body.get("account")
        if not isinstance(account, str):
            raise errors.bad_request('"account" is required')
        return account

    def _details(body: dict[str, Any]) -> dict[str, Any] | None:
        details = body.get("details")
        return details if isinstance(details, dict) else None

    def _run_fields(body: dict[str, Any]) -> tuple[str, str]:
        account, user = body.get("account"), body.get("user")
        if not isinstance(account, str) or not isinstance(user, str):
            raise errors.bad_request('"account" and "user" are required (the job\'s Slurm account and user)')
        return account, user

    async def hold(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        account, user = _run_fields(body)
        return await _call(
            ledger,
            ledger.hold,
            _run(request),
            account,
            user,
            _amount(body),
            actor=_actor(identity),
            policy=str(body.get("policy") or DENY),
            expires_at=_time(body, "expiresAt"),
            details=_details(body),
        )

    async def raise_hold(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        account = _account_of(body)
        return await _call(
            ledger,
            ledger.raise_hold,
            _run(request),
            account,
            _amount(body),
            actor=_actor(identity),
            details=_details(body),
        )

    async def settle(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        account, user = _run_fields(body)
        inputs = body.get("inputs")
        return await _call(
            ledger,
            ledger.settle,
            _run(request),
            account,
            user,
            _amount(body),
            actor=_actor(identity),
            rate_card_version=body.get("rateCardVersion"),
            inputs=inputs if isinstance(inputs, dict) else None,
            details=_details(body),
        )

    async def release(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        account = _account_of(body)
        return await _call(
            ledger,
            ledger.release,
            _run(request),
            account,
            actor=_actor(identity),
            reason=str(body.get("reason") or ""),
        )

    async def refund(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        account = _account_of(body)
        given = request.headers.get("idempotency-key", "").strip()
        return await _call(
            ledger,
            ledger.refund,
            _run(request),
            account,
            actor=_actor(identity),
            reason=str(body.get("reason") or ""),
            amount=_amount(body) if "amount" in body else None,
            key=f"refund:{given}" if given else None,
        )

    async def import_card(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        try:
            if isinstance(body.get("toml"), str):
                card = load_rate_card(body["toml"], name=str(body.get("name") or "the uploaded card"))
            elif isinstance(body.get("card"), dict):
                card = RateCard.from_json(jsonutil.dumps_str(body["card"]), source="the uploaded card")
            else:
                raise errors.bad_request('give "toml" (the file\'s text) or "card" (a rate card object)')
        except RateCardError as exc:
            raise errors.bad_request(str(exc)) from exc
        make_current = body.get("current", True) is not False
        return await _call(
            ledger, ledger.import_rate_card, card, actor=_actor(identity), make_current=make_current
        )

    async def list_cards(request: Request, identity: Identity) -> Any:
        return {"items": await _call(ledger, ledger.rate_cards)}

    async def get_card(request: Request, identity: Identity) -> Any:
        version = request.path_params["version"]
        card = await _call(ledger, ledger.rate_card, None if version == "current" else version)
        return card.to_dict()

    async def quote(request: Request, identity: Identity) -> Any:
        body = await _body(request)
        job = body.get("job")
        if not isinstance(job, dict):
            raise errors.bad_request('"job" is required: the job\'s fields as job_submit sees them')
        request_fields = from_job_desc(job)
        priced = await _call(ledger, ledger.quote, request_fields, body.get("rateCardVersion"))
        answer: dict[str, Any] = {
            "amount": str(priced.amount),
            "perTask": str(priced.per_task),
            "tasks": priced.tasks,
            "partition": priced.partition,
            "rateCardVersion": priced.rate_card_version,
            "inputs": priced.inputs,
        }
        account = request_fields.account
        if account:
            try:
                await _readable(ledger, identity, account)
                balance = await _call(ledger, ledger.balance, account)
            except errors.ApiError:
                return answer
            answer["account"] = account
            answer["available"] = str(balance.available)
            answer["fits"] = priced.amount <= balance.available
        return answer

    async def snapshot(request: Request, identity: Identity) -> Any:
        return await _call(ledger, ledger.snapshot)

    async def expire(request: Request, identity: Identity) -> Any:
        return {"items": await _call(ledger, ledger.expire_due, actor=_actor(identity))}

    async def verify(request: Request, identity: Identity) -> Any:
        found = await _call(ledger, ledger.verify)
        return {"sound": not found, "problems": found}

    routes = [
        ApiRoute("/accounts", list_accounts),
        ApiRoute("/accounts", create_account, ("POST",), ACCOUNTANT),
        ApiRoute("/accounts/{account}", get_account),
        ApiRoute("/accounts/{account}", patch_account, ("PATCH",), ACCOUNTANT),
        ApiRoute("/accounts/{account}/users/{user}", put_user, ("PUT",), ACCOUNTANT),
        ApiRoute("/accounts/{account}/users/{user}", delete_user, ("DELETE",), ACCOUNTANT),
        ApiRoute("/accounts/{account}/balance", balance),
        ApiRoute("/accounts/{account}/allocations", allocations),
        ApiRoute("/accounts/{account}/statement", statement),
        ApiRoute("/accounts/{account}/grants", grant, ("POST",), ACCOUNTANT),
        ApiRoute("/accounts/{account}/adjustments", adjust, ("POST",), ACCOUNTANT),
        ApiRoute("/transfers", transfer, ("POST",), ACCOUNTANT),
        ApiRoute("/runs", list_runs),
        ApiRoute("/runs/{run}", get_run),
        ApiRoute("/runs/{run}/hold", hold, ("POST",), HOOKS),
        ApiRoute("/runs/{run}/hold", raise_hold, ("PATCH",), HOOKS),
        ApiRoute("/runs/{run}/settle", settle, ("POST",), HOOKS),
        ApiRoute("/runs/{run}/release", release, ("POST",), HOOKS),
        ApiRoute("/runs/{run}/refunds", refund, ("POST",), ACCOUNTANT),
        ApiRoute("/ratecards", import_card, ("POST",), ACCOUNTANT),
        ApiRoute("/ratecards", list_cards),
        ApiRoute("/ratecards/{version}", get_card),
        ApiRoute("/quote", quote, ("POST",)),
        ApiRoute("/snapshot", snapshot, ("GET",), READERS),
        ApiRoute("/expiry", expire, ("POST",), ACCOUNTANT),
        ApiRoute("/verify", verify, ("GET",), ACCOUNTANT),
    ]
    return Component(name="bank", prefix=PREFIX, routes=routes, openapi=openapi_document(routes))


def openapi_document(routes: list[ApiRoute]) -> dict[str, Any]:
    """An OpenAPI 3 description of the routes, with who may call each."""
    paths: dict[str, Any] = {}
    for route in routes:
        for method in route.methods:
            doc = (route.handler.__doc__ or route.handler.__name__.replace("_", " ")).strip()
            operation: dict[str, Any] = {
                "operationId": route.handler.__name__,
                "summary": doc,
                "responses": {
                    "200": {"description": "OK"},
                    "400": {"description": "Malformed request"},
                    "402": {"description": "Insufficient service units"},
                    "403": {"description": "Not allowed for the caller's role"},
                    "404": {"description": "No such account or run"},
                    "409": {"description": "Exists, or idempotency key reused for another request"},
                },
                "x-slurmlink-roles": sorted(route.roles) if route.roles else ["any authenticated"],
            }
            if method in ("POST", "PUT", "PATCH"):
                operation["parameters"] = [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ]
                operation["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
            paths.setdefault(PREFIX + route.path, {})[method.lower()] = operation
    return {"info": {"title": "slurmlink bank", "version": "v1"}, "paths": paths}
