"""HTTPS with optional client certificates, exposing the verified peer to the ASGI app.

uvicorn does not pass the TLS peer certificate into the ASGI scope, so this protocol subclass reads
it once per connection and adds ``scope["extensions"]["slurmlink.peer_identity"]``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from slurmlink.auth.pki import identity_from_peercert

PEER_IDENTITY = "slurmlink.peer_identity"


class PeerCertProtocol(HttpToolsProtocol):
    """HTTP/1.1 protocol that tags each request with the client certificate's identity."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        identity = identity_from_peercert(ssl_object.getpeercert()) if ssl_object is not None else None
        if identity is None:
            return
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})[PEER_IDENTITY] = identity
            await inner(scope, receive, send)

        self.app = app


def server_ssl_context(cert_file: str, key_file: str, ca_file: str) -> ssl.SSLContext:
    """Serve ``cert_file``; ask for (but do not require) a client certificate signed by ``ca_file``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(ca_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context
