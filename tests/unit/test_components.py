"""Component routers: authentication in front, roles per route, Status errors, metrics, OpenAPI 3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from slurmlink.api import metrics
from slurmlink.api.app import build_app
from slurmlink.api.component import ApiRoute, Component
from slurmlink.api.security import Authenticator
from slurmlink.api.whoami import WHOAMI
from slurmlink.apiserver.service import ResourceService
from slurmlink.auth import roles
from slurmlink.auth.identity import Identity
from slurmlink.auth.tokens import TokenStore
from slurmlink.resources import errors
from slurmlink.resources.catalog import default_registry
from slurmlink.store.sql import SqlStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _balance(request: Request, identity: Identity) -> dict[str, Any]:
    if request.path_params["account"] == "missing":
        raise errors.not_found("bank.slurmlink.io", "accounts", "missing")
    return {"account": request.path_params["account"], "caller": identity.user}


async def _broken(_request: Request, _identity: Identity) -> dict[str, Any]:
    raise RuntimeError("boom")


BANK = Component(
    name="bank",
    prefix="/bank/v1",
    routes=[
        ApiRoute("/accounts/{account}", _balance, roles=frozenset({"admin", "viewer"})),
        ApiRoute("/broken", _broken),
    ],
    openapi={
        "paths": {"/bank/v1/accounts/{account}": {"get": {"responses": {"200": {"description": "ok"}}}}}
    },
)


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


@pytest.fixture
def app_client(tmp_path: Path, tokens: TokenStore) -> Iterator[httpx.AsyncClient]:
    store = SqlStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    service = ResourceService(store, default_registry())

    async def ready() -> bool:
        return True

    app = build_app(service, Authenticator(tokens), ready, components=(WHOAMI, BANK))
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    store.close()


def bearer(tokens: TokenStore, user: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue(user, [roles.role_group(role)])}"}


async def test_no_credentials_is_401_everywhere_but_health(app_client: httpx.AsyncClient) -> None:
    for path in ("/bank/v1/accounts/a", "/slurmlink/v1/whoami", "/no/such/path", "/openapi/v3"):
        r = await app_client.get(path)
        assert r.status_code == 401, path
        assert r.json()["reason"] == "Unauthorized"
    assert (await app_client.get("/healthz")).status_code == 200


async def test_roles_per_route(app_client: httpx.AsyncClient, tokens: TokenStore) -> None:
    r = await app_client.get("/bank/v1/accounts/proj1", headers=bearer(tokens, "ann", "viewer"))
    assert r.status_code == 200 and r.json() == {"account": "proj1", "caller": "ann"}
    r = await app_client.get("/bank/v1/accounts/proj1", headers=bearer(tokens, "wlm", "workload-manager"))
    assert r.status_code == 403
    assert r.json()["message"] == 'forbidden: User "wlm" cannot get path "/bank/v1/accounts/proj1"'


async def test_errors_are_status_bodies(app_client: httpx.AsyncClient, tokens: TokenStore) -> None:
    admin = bearer(tokens, "root", "admin")
    r = await app_client.get("/bank/v1/accounts/missing", headers=admin)
    assert r.status_code == 404 and r.json()["kind"] == "Status" and r.json()["reason"] == "NotFound"
    r = await app_client.get("/bank/v1/broken", headers=admin)
    assert r.status_code == 500 and "RuntimeError: boom" in r.json()["message"]
    r = await app_client.get("/bank/v1/nothing-here", headers=admin)
    assert r.status_code == 404 and r.json()["kind"] == "Status"


async def test_requests_are_counted(app_client: httpx.AsyncClient, tokens: TokenStore) -> None:
    counter = metrics.REQUESTS.labels("get", "bank:/accounts/{account}", "200")
    before = counter._value.get()
    await app_client.get("/bank/v1/accounts/x", headers=bearer(tokens, "root", "admin"))
    assert counter._value.get() == before + 1


async def test_openapi_v3_index_and_documents(app_client: httpx.AsyncClient, tokens: TokenStore) -> None:
    viewer = bearer(tokens, "ann", "viewer")
    index = (await app_client.get("/openapi/v3", headers=viewer)).json()["paths"]
    assert set(index) == {"bank/v1", "slurmlink/v1"}
    url = index["bank/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/bank/v1?hash=")
    doc = (await app_client.get(url, headers=viewer)).json()
    assert doc["openapi"] == "3.0.0" and "/bank/v1/accounts/{account}" in doc["paths"]
    assert (await app_client.get("/openapi/v3/nope/v9", headers=viewer)).status_code == 404


async def test_whoami(app_client: httpx.AsyncClient, tokens: TokenStore) -> None:
    r = await app_client.get("/slurmlink/v1/whoami", headers=bearer(tokens, "ann", "viewer"))
    assert r.json() == {"user": "ann", "groups": ["slurmlink:viewer"], "roles": ["viewer"]}
    r = await app_client.get("/slurmlink/v1/whoami", headers=bearer(tokens, "root", "user"))
    assert r.json()["unix"] == {"login": "root", "uid": 0, "gid": 0}
