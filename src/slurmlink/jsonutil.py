"""Fast JSON (orjson) for the store, the wire and object cloning."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def clone(obj: Any) -> Any:
    """A deep copy of a JSON-shaped value, several times faster than ``copy.deepcopy``."""
    return orjson.loads(orjson.dumps(obj))
