"""Label and field selectors, as the Kubernetes list and watch calls accept them.

Label selectors follow ``k8s.io/apimachinery/pkg/labels``: comma-separated requirements
``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k>n``, ``k<n``,
with label keys and values validated as the API server does. Field selectors follow
``k8s.io/apimachinery/pkg/fields``: ``f=v``, ``f==v``, ``f!=v`` with ``\\``-escapes;
``metadata.name`` and ``metadata.namespace`` are always supported, and each kind may declare more
(its strategy's ``field_labels``, as a CRD's ``selectableFields``).
Every parse error is a 400 BadRequest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from slurmlink.resources.errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]

# ---- label selectors ---------------------------------------------------------------------------

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SPECIAL = "!=(),<>"
_OPERATORS = ("!=", "==", "=", "!", "(", ")", ",", "<", ">")
_INTEGER = re.compile(r"^-?[0-9]+$")


def _parse_error(message: str) -> Exception:
    return bad_request(f"unable to parse requirement: {message}")


def _check_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    problems = []
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        problems.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character (at most 63 characters)"
        )
    if problems:
        raise _parse_error(f'key: Invalid value: "{key}": ' + "; ".join(problems))


def _check_value(key: str, value: str) -> None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise _parse_error(
            f'values[0][{key}]: Invalid value: "{value}": a valid label must be an empty string or consist '
            "of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
            "character (at most 63 characters)"
        )


@dataclass(frozen=True)
class _Token:
    kind: str  # "id", an operator, "in", "notin" or "end"
    text: str


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in _SPECIAL:
            op = next(o for o in _OPERATORS if text.startswith(o, i))
            out.append(_Token(op, op))
            i += len(op)
            continue
        j = i
        while j < len(text) and not text[j].isspace() and text[j] not in _SPECIAL:
            j += 1
        word = text[i:j]
        out.append(_Token(word if word in ("in", "notin") else "id", word))
        i = j
    out.append(_Token("end", ""))
    return out


LabelTest = Callable[[dict[str, str]], bool]


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind != "end":
            self.pos += 1
        return token

    def expected(self, token: _Token, what: str) -> Exception:
        found = token.text if token.kind != "end" else "end of string"
        return _parse_error(f"found '{found}', expected: {what}")

    def parse(self) -> list[LabelTest]:
        tests: list[LabelTest] = []
        while True:
            tests.append(self.requirement())
            token = self.take()
            if token.kind == "end":
                return tests
            if token.kind != ",":
                raise self.expected(token, "',' or 'end of string'")

    def key(self) -> str:
        token = self.take()
        if token.kind != "id":
            raise self.expected(token, "identifier")
        _check_key(token.text)
        return token.text

    def requirement(self) -> LabelTest:
        if self.peek().kind == "!":
            self.take()
            key = self.key()
            return lambda labels: key not in labels
        key = self.key()
        op = self.peek()
        if op.kind in ("end", ","):
            return lambda labels: key in labels
        self.take()
        if op.kind in ("=", "==", "!="):
            value = self.single_value()
            _check_value(key, value)
            if op.kind == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: key in labels and labels[key] == value
        if op.kind in ("in", "notin"):
            values = self.value_set()
            for value in values:
                _check_value(key, value)
            if op.kind == "in":
                return lambda labels: key in labels and labels[key] in values
            return lambda labels: labels.get(key) not in values
        if op.kind in ("<", ">"):
            token = self.take()
            if token.kind != "id" or not _INTEGER.match(token.text):
                raise _parse_error(f"for 'Gt', 'Lt' operators, the value must be an integer: {token.text!r}")
            bound = int(token.text)
            greater = op.kind == ">"

            def compare(labels: dict[str, str]) -> bool:
                raw = labels.get(key)
                if raw is None or not _INTEGER.match(raw):
                    return False
                return int(raw) > bound if greater else int(raw) < bound

            return compare
        raise self.expected(op, "'=', '!=', '==', 'in', 'notin', '<' or '>'")

    def single_value(self) -> str:
        token = self.peek()
        if token.kind in ("end", ","):
            return ""
        self.take()
        if token.kind not in ("id", "in", "notin"):
            raise self.expected(token, "identifier")
        return token.text

    def value_set(self) -> frozenset[str]:
        token = self.take()
        if token.kind != "(":
            raise self.expected(token, "'('")
        values: list[str] = []
        expect_value = True
        while True:
            token = self.take()
            if token.kind == ")":
                if expect_value and values:
                    values.append("")  # a trailing comma means an empty value, as upstream
                break
            if token.kind == ",":
                if expect_value:
                    values.append("")
                expect_value = True
                continue
            if token.kind in ("id", "in", "notin") and expect_value:
                values.append(token.text)
                expect_value = False
                continue
            raise self.expected(token, "',' or ')'")
        if not values:
            raise _parse_error("for 'in', 'notin' operators, values set can't be empty")
        return frozenset(values)


def parse_label_selector(text: str | None) -> Matcher:
    """A matcher for objects whose ``metadata.labels`` satisfy ``text`` (empty: everything)."""
    if not text or not text.strip():
        return lambda _obj: True
    tests = _LabelParser(text).parse()

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(t(labels) for t in tests)

    return match


# ---- field selectors ---------------------------------------------------------------------------

_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda o: str((o.get("metadata") or {}).get("name") or ""),
    "metadata.namespace": lambda o: str((o.get("metadata") or {}).get("namespace") or ""),
}
_FIELD_OPERATORS = ("!=", "==", "=")


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _split_term(term: str) -> tuple[str, str, str] | None:
    """``lhs``, operator and ``rhs`` at the first unescaped operator, or None."""
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op in _FIELD_OPERATORS:
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
        i += 1
    return None


def _unescape(value: str, selector: str) -> str:
    out: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            if ch not in "\\,=":
                raise bad_request(f"invalid field selector: {selector!r}: invalid escape sequence \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            raise bad_request(f"invalid field selector: {selector!r}: unescaped {ch!r} in value")
        else:
            out.append(ch)
    if escaped:
        raise bad_request(f"invalid field selector: {selector!r}: value ends with an escape character")
    return "".join(out)


def parse_field_terms(
    text: str | None, extra: Mapping[str, Callable[[dict[str, Any]], str]] | None = None
) -> list[tuple[str, str, str]]:
    """``(field, operator, value)`` per term, operator ``=`` or ``!=``; raises 400 on bad input."""
    if not text or not text.strip():
        return []
    terms: list[tuple[str, str, str]] = []
    for part in _split_unescaped(text, ","):
        if not part.strip():
            continue
        split = _split_term(part)
        if split is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        lhs, op, rhs = split
        field = lhs.strip()
        if field not in _FIELDS and (extra is None or field not in extra):
            raise bad_request(f"field label not supported: {field}")
        terms.append((field, "!=" if op == "!=" else "=", _unescape(rhs.strip(), text)))
    return terms


def parse_field_selector(
    text: str | None, extra: Mapping[str, Callable[[dict[str, Any]], str]] | None = None
) -> Matcher:
    """A matcher for terms with ``=``, ``==`` or ``!=`` on the standard fields and ``extra`` ones."""
    terms = parse_field_terms(text, extra)
    if not terms:
        return lambda _obj: True
    fields = {**_FIELDS, **(extra or {})}
    tests = [_field_test(fields[field], op == "!=", value) for field, op, value in terms]
    return lambda obj: all(t(obj) for t in tests)


def _field_test(getter: Callable[[dict[str, Any]], str], negate: bool, value: str) -> Matcher:
    if negate:
        return lambda obj: getter(obj) != value
    return lambda obj: getter(obj) == value


def field_selector_name(text: str | None) -> str | None:
    """The name pinned by ``metadata.name=X`` (lets a list become a single get)."""
    for field, op, value in parse_field_terms(text):
        if field == "metadata.name" and op == "=":
            return value
    return None
