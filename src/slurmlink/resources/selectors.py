"""Label and field selectors, as the Kubernetes list and watch calls accept them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from slurmlink.resources.errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]

_SET_EXPR = re.compile(r"^\s*([^\s!=,()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b`` has two terms)."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


LabelTest = Callable[[dict[str, str]], bool]


def _label_test(term: str) -> LabelTest:
    if m := _SET_EXPR.match(term):
        key, op = m.group(1), m.group(2)
        values = {v.strip() for v in m.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if "!=" in term:
        key, value = (p.strip() for p in term.split("!=", 1))
        return lambda labels: labels.get(key) != value
    if "=" in term:
        key, value = (p.strip() for p in term.replace("==", "=").split("=", 1))
        return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        absent = term[1:].strip()
        return lambda labels: absent not in labels
    if re.fullmatch(r"[A-Za-z0-9._/-]+", term):
        return lambda labels: term in labels
    raise bad_request(f"unable to parse requirement: invalid label selector term {term!r}")


def parse_label_selector(text: str | None) -> Matcher:
    """``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``, comma-joined."""
    if not text:
        return lambda _obj: True
    tests = [_label_test(term) for term in _split_terms(text)]

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(t(labels) for t in tests)

    return match


_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda o: (o.get("metadata") or {}).get("name", ""),
    "metadata.namespace": lambda o: (o.get("metadata") or {}).get("namespace", ""),
}


def _field_test(term: str) -> Matcher:
    negate = "!=" in term
    key, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
    getter = _FIELDS.get(key.strip())
    if getter is None:
        raise bad_request(f"field label not supported: {key.strip()}")
    wanted = value.strip()
    if negate:
        return lambda o: bool(getter(o) != wanted)
    return lambda o: bool(getter(o) == wanted)


def parse_field_selector(text: str | None) -> Matcher:
    """``metadata.name`` and ``metadata.namespace`` with ``=``, ``==`` or ``!=``."""
    if not text:
        return lambda _obj: True
    tests = [_field_test(term) for term in _split_terms(text)]
    return lambda obj: all(t(obj) for t in tests)


def field_selector_name(text: str | None) -> str | None:
    """The name pinned by ``metadata.name=X`` (lets a list become a single get)."""
    if not text:
        return None
    for term in _split_terms(text):
        if "!=" not in term:
            key, _, value = term.replace("==", "=").partition("=")
            if key.strip() == "metadata.name":
                return value.strip()
    return None
