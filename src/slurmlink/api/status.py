"""Responses in the API's own terms: JSON bodies, Status errors, and warnings."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from slurmlink import jsonutil
from slurmlink.resources import errors


def json_response(body: Any, status: int = 200, warnings: list[str] | None = None) -> Response:
    """A JSON response; ``warnings`` become ``Warning: 299`` headers (kubectl prints them)."""
    response = Response(jsonutil.dumps(body), status_code=status, media_type="application/json")
    for text in warnings or ():
        response.headers.append("Warning", f'299 - "{_header_text(text)}"')
    return response


def error_response(exc: errors.ApiError) -> Response:
    """An ApiError as the Kubernetes ``Status`` body clients parse."""
    return JSONResponse(exc.status(), status_code=exc.code)


def _header_text(text: str) -> str:
    """A warning's text as a quoted-string: escaped quotes and backslashes, printable ASCII only."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(ch if " " <= ch <= "~" else "?" for ch in escaped)
