"""Fast JSON (orjson) for the store, the wire and object cloning.

Objects handed out by the store, the watch hub and ``ResourceService`` reads are shared and must be
treated as immutable; code that changes an object works on ``clone(obj)``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # e.g. integers beyond 64 bits, which the stdlib encoder handles
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def clone(obj: Any) -> Any:
    """A deep copy of a JSON-shaped value, several times faster than ``copy.deepcopy``."""
    return orjson.loads(dumps(obj))
