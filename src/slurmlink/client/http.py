"""Client over HTTPS to any slurmlink API replica, configured from a kubeconfig.

Speaks the same Kubernetes REST dialect kubectl does, always in the kind's storage version, so the
controllers run unchanged against a remote server (``slurmlink controller``) and the CLI's human
commands use it too. TLS trusts the kubeconfig's CA; the client certificate and key are loaded into
an ``ssl.SSLContext`` from files in a private (0700) temporary directory that is deleted as soon as
they have been read, so the key never outlives construction on disk. Bearer tokens go in the
``Authorization`` header.

Failures are ``ApiError``: the server's ``Status`` body for HTTP errors, and
``UnreachableError`` (code 503) when the server cannot be reached, with a readable reason
("cannot reach the slurmlink API at https://...: connection refused").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from slurmlink import __version__, jsonutil
from slurmlink.auth.kubeconfig import KubeconfigCredentials, load_kubeconfig
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.patching import MERGE
from slurmlink.resources.watch import WatchEvent

#: Seconds to establish a connection (TCP and TLS handshake).
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a non-watch response.
DEFAULT_TIMEOUT = 30.0
#: Requests (not watches) in flight at once per client; more wait their turn. A few keep-alive
#: connections carry a burst as fast as many would: the server answers on one core anyway, and the
#: connection pool's bookkeeping grows with every connection and every queued request.
MAX_REQUESTS = 8
#: Connections per client: the request slots plus long-lived watches. All may stay open when idle, so a
#: busy daemon (the burst buffer gateway during a wave of stage-ins) never pays a TLS handshake again.
MAX_CONNECTIONS = 100
#: Seconds an idle connection is kept; below the server's keep-alive (30 s) so the server never
#: closes a connection the client is about to reuse.
KEEPALIVE_EXPIRY = 20.0


class UnreachableError(ApiError):
    """The server could not be reached (or the connection broke); code 503 so callers retry."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(503, "ServiceUnavailable", f"cannot reach the slurmlink API at {server}: {reason}")
        self.server = server
        self.reason_text = reason


def ssl_context(creds: KubeconfigCredentials) -> ssl.SSLContext:
    """Trust the kubeconfig's CA (else the system store) and present its client certificate, if any."""
    if creds.ca_pem:
        try:
            ctx = ssl.create_default_context(cadata=creds.ca_pem.decode("ascii"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"the kubeconfig's certificate authority is not a valid PEM certificate: {exc}"
            ) from exc
    else:
        ctx = ssl.create_default_context()
    if creds.insecure_skip_tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if creds.cert_pem and creds.key_pem:
        # load_cert_chain only reads files: write them to a private directory, load, remove.
        tmp = tempfile.mkdtemp(prefix="slurmlink-client-")
        try:
            os.chmod(tmp, 0o700)
            cert_file, key_file = Path(tmp, "client.crt"), Path(tmp, "client.key")
            for path, data in ((cert_file, creds.cert_pem), (key_file, creds.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            try:
                ctx.load_cert_chain(str(cert_file), str(key_file))
            except ssl.SSLError as exc:
                raise ValueError(f"the kubeconfig's client certificate or key is unusable: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ctx


def _reason(exc: BaseException, connect_timeout: float, timeout: float) -> str:
    """A short human reason for a transport failure."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {connect_timeout:g}s (connect timeout)"
    if isinstance(exc, httpx.PoolTimeout):
        return f"no free connection within {connect_timeout:g}s (too many open requests or watches)"
    if isinstance(exc, httpx.TimeoutException):
        return f"no response within {timeout:g}s"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection"
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({cause.verify_message or cause})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed ({cause.reason or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name ({cause.strerror or cause})"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
        cause = cause.__cause__ or cause.__context__
        seen += 1
    text = str(exc)
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "certificate verify failed" in lowered:
        return f"TLS certificate verification failed ({text})"
    return text or type(exc).__name__


def _api_error(response: httpx.Response) -> ApiError:
    """The ``Status`` body of an error response as an ApiError (or a synthesised one)."""
    code = response.status_code
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        details = body.get("details")
        return ApiError(
            int(body.get("code") or code),
            str(body.get("reason") or response.reason_phrase or "Unknown"),
            str(body.get("message") or response.reason_phrase or f"HTTP {code}"),
            details if isinstance(details, dict) else None,
        )
    text = response.text.strip()
    reason = response.reason_phrase.replace(" ", "") or "Unknown"
    message = text[:500] if text else f"the server responded {code} {response.reason_phrase}".strip()
    return ApiError(code, reason, message)


class HttpClient:
    """``Client`` over HTTP(S). Create with ``from_kubeconfig`` (or from loaded credentials)."""

    def __init__(
        self,
        creds: KubeconfigCredentials,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.server = creds.server.rstrip("/")
        #: The kubeconfig context's namespace (None when the context names none).
        self.namespace = creds.namespace
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": f"slurmlink/{__version__}"}
        if creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        verify: ssl.SSLContext | bool = ssl_context(creds) if self.server.startswith("https://") else False
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout)
        self._watch_timeout = httpx.Timeout(
            None, connect=connect_timeout, write=timeout, pool=connect_timeout
        )
        self._request_slots = asyncio.Semaphore(MAX_REQUESTS)
        self._http = httpx.AsyncClient(
            base_url=self.server,
            verify=verify,
            headers=headers,
            timeout=self._timeout,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
        )

    @classmethod
    def from_kubeconfig(
        cls,
        path: Path | str,
        context: str | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpClient:
        """Read ``path`` (``KubeconfigError``/``ValueError`` if unusable) and build a client."""
        creds = load_kubeconfig(Path(path), context)
        return cls(creds, connect_timeout=connect_timeout, timeout=timeout)

    # ---- paths -------------------------------------------------------------------------------

    def path(self, kind: Kind, namespace: str | None = None, name: str | None = None) -> str:
        """URL path of a collection (all namespaces when ``namespace`` is None) or of one object."""
        version = kind.storage_version
        base = f"/apis/{kind.group}/{version}" if kind.group else f"/api/{version}"
        if kind.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        elif kind.namespaced and name is not None:
            raise ValueError(f"{kind.kind} is namespaced: a namespace is required to address {name!r}")
        base += f"/{kind.plural}"
        if name is not None:
            if not name:
                raise ValueError(f"{kind.kind}: an object name is required")
            base += f"/{quote(name, safe='')}"
        return base

    # ---- requests ----------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> UnreachableError:
        return UnreachableError(self.server, _reason(exc, self.connect_timeout, self.timeout))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Any:
        headers = dict(headers or {})
        content = None
        if body is not None:
            content = jsonutil.dumps(body)
            headers["Content-Type"] = content_type
        try:
            async with self._request_slots:
                response = await self._http.request(
                    method, path, params=params, content=content, headers=headers
                )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _api_error(response)
        try:
            return jsonutil.loads(response.content)
        except ValueError as exc:
            raise ApiError(
                500, "InternalError", f"the server sent a response that is not JSON: {exc}"
            ) from exc

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """A component route (a REST API beside the resources, e.g. ``/storage/v1/...``): JSON in and out."""
        return await self._request(method, path, body=body, params=params, headers=headers)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A component route whose body is streamed either way: an upload, a download, a followed log.

        ``content`` is the request body (bytes or an async iterator of chunks; give ``Content-Length``
        in ``headers`` to avoid chunked encoding). Yields the ``httpx.Response`` with its body unread
        (``aiter_bytes()``); raises ``ApiError`` as ``call`` does when the answer is not 2xx, and
        ``UnreachableError`` when the connection fails or breaks while the body is read.
        ``read_timeout`` bounds each wait for data (None, the default: none, as for a followed log).
        Streams take no request slot: like watches, they may last.
        """
        timeout = httpx.Timeout(
            read_timeout, connect=self.connect_timeout, write=self.timeout, pool=self.connect_timeout
        )
        request = self._http.build_request(
            method, path, params=params, content=content, headers=headers, timeout=timeout
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        try:
            if not response.is_success:
                try:
                    await response.aread()
                except httpx.TransportError as exc:
                    raise self._unreachable(exc) from exc
                raise _api_error(response)
            try:
                yield response
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()

    # ---- Client protocol ---------------------------------------------------------------------

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        obj: Obj = await self._request("GET", self.path(kind, namespace, name))
        return obj

    async def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[Obj], str]:
        params = {"labelSelector": label_selector} if label_selector else None
        body = await self._request("GET", self.path(kind, namespace), params=params)
        items = body.get("items") or []
        return items, str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def create(self, kind: Kind, obj: Obj) -> Obj:
        namespace = (obj.get("metadata") or {}).get("namespace") if kind.namespaced else None
        if kind.namespaced and not namespace:
            raise ValueError(f"{kind.kind} is namespaced: set metadata.namespace")
        created: Obj = await self._request("POST", self.path(kind, namespace), body=obj)
        return created

    async def update(self, kind: Kind, obj: Obj) -> Obj:
        m = obj.get("metadata") or {}
        name = m.get("name")
        if not name:
            raise ValueError(f"{kind.kind}: metadata.name is required for an update")
        namespace = m.get("namespace") if kind.namespaced else None
        updated: Obj = await self._request("PUT", self.path(kind, namespace, name), body=obj)
        return updated

    async def update_status(self, kind: Kind, obj: Obj) -> Obj:
        m = obj.get("metadata") or {}
        name = m.get("name")
        if not name:
            raise ValueError(f"{kind.kind}: metadata.name is required for a status update")
        namespace = m.get("namespace") if kind.namespaced else None
        updated: Obj = await self._request("PUT", self.path(kind, namespace, name) + "/status", body=obj)
        return updated

    async def patch(
        self, kind: Kind, namespace: str | None, name: str, patch: Any, content_type: str = MERGE
    ) -> Obj:
        patched: Obj = await self._request(
            "PATCH", self.path(kind, namespace, name), body=patch, content_type=content_type
        )
        return patched

    async def delete(
        self, kind: Kind, namespace: str | None, name: str, *, propagation_policy: str | None = None
    ) -> Obj:
        body = None
        if propagation_policy:
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation_policy}
        obj: Obj = await self._request("DELETE", self.path(kind, namespace, name), body=body)
        return obj

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        resource_version: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Open the watch (raising ApiError now if the server refuses it) and return its events.

        No read timeout: an idle watch stays open (the server sends a BOOKMARK after each quiet
        interval). The stream ends when the server closes it; an ``ERROR`` frame (e.g. 410 Expired)
        is yielded as a ``WatchEvent`` of type ``ERROR`` carrying the Status.
        """
        params = {"watch": "1", "allowWatchBookmarks": "true"}
        if resource_version:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        request = self._http.build_request(
            "GET", self.path(kind, namespace), params=params, timeout=self._watch_timeout
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            try:
                await response.aread()
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
            finally:
                await response.aclose()
            raise _api_error(response)
        return self._events(response)

    async def _events(self, response: httpx.Response) -> AsyncIterator[WatchEvent]:
        try:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    frame = jsonutil.loads(line)
                    event = WatchEvent(str(frame["type"]), frame["object"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ApiError(
                        500, "InternalError", f"the server sent an unreadable watch event: {line[:200]!r}"
                    ) from exc
                yield event
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
