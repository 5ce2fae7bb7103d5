"""#DW directive parsing, DWDirectiveRule validation and driver registration.

A behavioural port of DataWorkflowServices' ``utils/dwdparse/dwdparse.go`` and of the
rule handling in ``api/v1alpha*/workflow_webhook.go`` (``checkDirectives``, ``ReadRules``,
``MutatingRuleParser.MatchedDirective``). Error strings are byte-for-byte the upstream ones
(including the "greather" typo) because the Slurm plugin and users match on them.

One deliberate difference from upstream, for determinism: Go iterates a directive's
arguments in random map order, so when several arguments are bad upstream reports any one
of them; this port always reports the first one, in directive order.

Rule keys and patterns are Go regular expressions, matched as Go's ``regexp.MatchString``
does (unanchored search) by RE2 (``google-re2``), the engine Go's ``regexp`` reimplements:
ASCII-only ``\\d``, ``\\s``, ``\\w`` and ``\\b``, ``{,n}`` taken literally, Unicode classes and
scripts (``\\pL``, ``\\p{Greek}``), and Perl-only syntax such as look-around and backreferences
rejected. The two constructs C++ RE2 accepts and Go refuses (``\\C``, a repeated group name)
are refused here too; one Go accepts is not: a pattern too large for RE2's default memory budget.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import re2

__all__ = [
    "EMPTY_VALUE",
    "DirectiveError",
    "DirectivePanic",
    "DirectiveRule",
    "RuleDef",
    "check_workflow_directives",
    "driver_registrations",
    "parse_directive",
    "rules_from_objects",
    "tester_rules",
    "validate_directives",
]

# Upstream stores a bare ``key`` (no ``=``) as this sentinel and decides later what it means.
# A user writing the sentinel literally gets the same treatment, so it is part of the contract.
EMPTY_VALUE = "$$empty_value_123456$$"

DEFAULT_RULES_NAMESPACE = "dws-system"

# Go's unicode.IsSpace, which strings.Fields uses. Python's str.split() also splits on
# U+001C..U+001F, which Go keeps inside a field.
_GO_FIELDS = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")

_BOOL_VALUE = re.compile(r"(?i)^(true|false)\Z")
_GO_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class DirectiveError(ValueError):
    """A directive or ruleset rejection; ``str(e)`` is exactly the upstream message."""


class DirectivePanic(DirectiveError):
    """Upstream panics here rather than returning an error (``#DW`` with no command).

    The message is what controller-runtime's webhook panic recovery returns, so the
    *mutating* webhook fails as well: unlike ordinary errors it is not ignored there.
    """


@dataclass(frozen=True)
class RuleDef:
    """One ``ruleDefs`` entry: how the arguments whose name matches ``key`` are checked."""

    key: str
    type: str
    pattern: str = ""
    patterns: tuple[str, ...] = ()
    min: int = 0
    max: int = 0
    is_required: bool = False
    is_value_required: bool = False
    unique_within: str = ""


@dataclass(frozen=True)
class DirectiveRule:
    """One element of a DWDirectiveRule ``spec`` list, with the driver label resolved.

    ``watch_states`` is the ``watchStates`` string split on ``","`` exactly as upstream does
    it (no trimming; ``""`` gives no states, ``"A,"`` gives ``("A", "")``).
    """

    name: str
    command: str
    driver_label: str
    watch_states: tuple[str, ...] = ()
    rule_defs: tuple[RuleDef, ...] = ()


# --------------------------------------------------------------------------------------
# Converting DWDirectiveRule resources
# --------------------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    """Read a JSON field, treating absent/null as Go's zero value and rejecting bad types."""
    value = obj.get(name)
    if value is None:
        return default
    # bool is an int subclass; a JSON boolean is never a valid integer field.
    if kind is int and isinstance(value, bool):
        raise ValueError(f"DWDirectiveRule field {name!r} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ValueError(f"DWDirectiveRule field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def _rule_def_from_json(raw: Mapping[str, Any]) -> RuleDef:
    patterns = _field(raw, "patterns", list, [])
    if not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"DWDirectiveRule field 'patterns' must be a list of strings, got {patterns!r}")
    return RuleDef(
        key=_field(raw, "key", str, ""),
        type=_field(raw, "type", str, ""),
        pattern=_field(raw, "pattern", str, ""),
        patterns=tuple(patterns),
        min=_field(raw, "min", int, 0),
        max=_field(raw, "max", int, 0),
        is_required=_field(raw, "isRequired", bool, False),
        is_value_required=_field(raw, "isValueRequired", bool, False),
        unique_within=_field(raw, "uniqueWithin", str, ""),
    )


#: Rules converted from stored DWDirectiveRules, by the objects' uids and resourceVersions: the
#: webhooks convert the same few objects for every Workflow they admit.
_CONVERTED: dict[tuple[Any, ...], tuple[DirectiveRule, ...]] = {}
_CONVERTED_KEPT = 32


def rules_from_objects(
    objects: Iterable[Mapping[str, Any]], namespace: str | None = None
) -> list[DirectiveRule]:
    """Flatten DWDirectiveRule resources into rules, in the order given.

    Mirrors ``RuleList.ReadRules``: every object's ``spec`` entries are concatenated and an
    empty ``driverLabel`` defaults to the object's ``metadata.name``. If ``namespace`` is set,
    objects from other namespaces are skipped (upstream lists only its pod namespace).
    Upstream reads from an informer cache whose order is unspecified; callers wanting a
    stable order should pass objects sorted by name.
    """
    objects = list(objects)
    key = _stored_versions(objects, namespace)
    cached = _CONVERTED.get(key) if key is not None else None
    if cached is not None:
        return list(cached)
    rules = _convert_rules(objects, namespace)
    if key is not None:
        if len(_CONVERTED) >= _CONVERTED_KEPT:
            _CONVERTED.clear()
        _CONVERTED[key] = tuple(rules)
    return rules


def _stored_versions(objects: list[Mapping[str, Any]], namespace: str | None) -> tuple[Any, ...] | None:
    """What identifies stored objects' content (uid and resourceVersion each); None if one lacks them."""
    key: list[Any] = [namespace]
    for obj in objects:
        metadata = obj.get("metadata") or {}
        uid, version = metadata.get("uid"), metadata.get("resourceVersion")
        if not isinstance(uid, str) or not isinstance(version, str) or not uid or not version:
            return None
        key.append((uid, version))
    return tuple(key)


def _convert_rules(objects: list[Mapping[str, Any]], namespace: str | None) -> list[DirectiveRule]:
    rules: list[DirectiveRule] = []
    for obj in objects:
        metadata = obj.get("metadata") or {}
        if namespace is not None and metadata.get("namespace", namespace) != namespace:
            continue
        name = metadata.get("name") or ""
        for spec in obj.get("spec") or []:
            watch_states = _field(spec, "watchStates", str, "")
            rules.append(
                DirectiveRule(
                    name=name,
                    command=_field(spec, "command", str, ""),
                    driver_label=_field(spec, "driverLabel", str, "") or name,
                    watch_states=tuple(watch_states.split(",")) if watch_states else (),
                    rule_defs=tuple(_rule_def_from_json(d) for d in spec.get("ruleDefs") or []),
                )
            )
    return rules


# --------------------------------------------------------------------------------------
# Parsing (BuildArgsMap)
# --------------------------------------------------------------------------------------


def _go_fields(text: str) -> list[str]:
    return [f for f in _GO_FIELDS.split(text) if f]


def parse_directive(directive: str) -> tuple[str, dict[str, str | None]]:
    """Split a directive into its command and ``key -> value`` arguments (bare key -> None).

    Port of ``BuildArgsMap``: fields are separated by Unicode whitespace, the first must be
    exactly ``#DW``, the second is the command and the rest split on the first ``=``. A key
    may not repeat, and ``command`` counts as already used. ``key=`` yields ``""``, which
    upstream does *not* treat as a missing value.
    """
    fields = _go_fields(directive)
    if not fields or fields[0] != "#DW":
        raise DirectiveError(f"missing '#DW' prefix in directive '{directive}'")
    if len(fields) < 2:
        # Upstream indexes dwdArgs[1] unconditionally.
        raise DirectivePanic("panic: runtime error: index out of range [1] with length 1 [recovered]")
    args: dict[str, str | None] = {}
    for token in fields[2:]:
        key, sep, value = token.partition("=")
        if key == "command" or key in args:
            raise DirectiveError(f"repeated argument '{key}' in directive '{directive}'")
        args[key] = value if sep else None
    return fields[1], args


# --------------------------------------------------------------------------------------
# Validation (ValidateArgs / Validate)
# --------------------------------------------------------------------------------------


def _go_atoi(text: str) -> int | None:
    """``strconv.Atoi`` on a 64-bit platform: ASCII digits, optional sign, int64 range."""
    if not _GO_INT.fullmatch(text):
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _find_rule_def(rule: DirectiveRule, key: str) -> tuple[int, RuleDef]:
    # Keys are compiled lazily in order: a broken key regex only matters if it is reached.
    for index, rule_def in enumerate(rule.rule_defs):
        try:
            if _match_string(rule_def.key, key):
                return index, rule_def
        except _GoRegexError:
            raise DirectiveError(f"invalid rule regular expression '{rule_def.key}'") from None
    raise DirectiveError(f"unsupported argument '{key}'")


def _check_value(rule_def: RuleDef, key: str, value: str) -> None:
    kind = rule_def.type
    if kind == "integer":
        number = _go_atoi(value)
        if number is None:
            raise DirectiveError(f"argument '{key}' invalid integer '{value}'")
        if rule_def.max != 0 and number > rule_def.max:
            raise DirectiveError(
                f"argument '{key}' specified integer value {number} is greather than maximum value "
                f"{rule_def.max}"
            )
        if rule_def.min != 0 and number < rule_def.min:
            raise DirectiveError(
                f"argument '{key}' specified integer value {number} is less than minimum value {rule_def.min}"
            )
    elif kind == "bool":
        # Upstream only looks at whether a pattern is set, never at its content.
        if rule_def.pattern and not _BOOL_VALUE.search(value):
            raise DirectiveError(f"argument '{key}' invalid boolean '{value}'")
    elif kind == "string":
        if rule_def.pattern:
            try:
                matched = _match_string(rule_def.pattern, value)
            except _GoRegexError:
                raise DirectiveError(f"invalid regular expression '{rule_def.pattern}'") from None
            if not matched:
                raise DirectiveError(f"argument '{key}' invalid string '{value}'")
    elif kind == "list-of-string":
        words = value.split(",")
        if rule_def.patterns:
            for word in words:
                for source in rule_def.patterns:
                    try:
                        if _match_string(source, word):
                            break
                    except _GoRegexError:
                        raise DirectiveError(f"invalid regular expression '{source}'") from None
                else:
                    raise DirectiveError(f"argument '{key}' invalid string '{word}' in list '{value}'")
        seen: set[str] = set()
        for word in words:
            if word in seen:
                raise DirectiveError(f"argument '{key}' word '{word}' repeated in list '{value}'")
            seen.add(word)
    else:
        raise DirectiveError(f"unsupported rule type '{kind}'")


def _validate_args(rule: DirectiveRule, args: Mapping[str, str | None], unique: set[str]) -> None:
    matched: set[int] = set()
    for key, raw in args.items():
        index, rule_def = _find_rule_def(rule, key)
        value = EMPTY_VALUE if raw is None else raw
        if value == EMPTY_VALUE:
            if rule_def.type == "bool" and not rule_def.is_value_required:
                value = "true"
            elif rule_def.is_value_required:
                raise DirectiveError(f"argument '{key}' requires value")
            # Otherwise the sentinel itself is validated (and stored for uniqueness), as upstream.
        _check_value(rule_def, key, value)
        if rule_def.unique_within:
            marker = f"{rule_def.unique_within}/{value}"
            if marker in unique:
                raise DirectiveError(f"value '{value}' must be unique within '{rule_def.unique_within}'")
            unique.add(marker)
        matched.add(index)
    for index, rule_def in enumerate(rule.rule_defs):
        if rule_def.is_required and index not in matched:
            raise DirectiveError(f"missing required argument '{rule_def.key}'")


def _validate(
    directives: Sequence[str],
    rules: Sequence[DirectiveRule],
    on_valid: Callable[[int, DirectiveRule], None],
) -> None:
    """Port of ``dwdparse.Validate``: the first error anywhere aborts the whole list.

    Every rule whose command matches is checked, so an error from one matching rule wins
    even if another rule accepts the directive; ``on_valid`` has already run for the rules
    before it. The uniqueness set is shared by all rules and directives.
    """
    unique: set[str] = set()
    for index, directive in enumerate(directives):
        accepted = False
        if rules:
            # Parsing is per rule upstream; it is pure, so once is equivalent. With no rules
            # upstream never parses, hence even a prefix error becomes "invalid directive".
            command, args = parse_directive(directive)
            for rule in rules:
                if command != rule.command:
                    continue
                _validate_args(rule, args, unique)
                accepted = True
                on_valid(index, rule)
        if not accepted:
            raise DirectiveError(f"invalid directive '{directive}'")


def validate_directives(
    directives: Sequence[str],
    rules: Sequence[DirectiveRule],
    rules_namespace: str = DEFAULT_RULES_NAMESPACE,
) -> None:
    """Raise DirectiveError as the validating webhook would for ``spec.dwDirectives``.

    An empty directive list is always fine. An empty ``rules`` stands for "no DWDirectiveRule
    objects in ``rules_namespace``"; use check_workflow_directives() to distinguish that from
    objects whose ``spec`` is empty (upstream then reports ``invalid directive``).
    """
    if not directives:
        return
    if not rules:
        raise DirectiveError(f"unable to find ruleset in namespace: {rules_namespace}")
    _validate(directives, rules, lambda _index, _rule: None)


def check_workflow_directives(
    directives: Sequence[str],
    rule_objects: Sequence[Mapping[str, Any]],
    namespace: str = DEFAULT_RULES_NAMESPACE,
) -> None:
    """Exact ``checkDirectives`` for the validating webhook, starting from the raw resources."""
    if not directives:
        return
    objects = [o for o in rule_objects if (o.get("metadata") or {}).get("namespace", namespace) == namespace]
    if not objects:
        raise DirectiveError(f"unable to find ruleset in namespace: {namespace}")
    check_directives(directives, rules_from_objects(objects))


def check_directives(directives: Sequence[str], rules: Sequence[DirectiveRule]) -> None:
    """``checkDirectives`` against rules already converted (callers that validate often cache them)."""
    _validate(directives, rules, lambda _index, _rule: None)


def driver_registrations(
    directives: Sequence[str],
    rules: Sequence[DirectiveRule],
    existing: Iterable[tuple[str, int, str]] = (),
) -> list[tuple[str, int, str]]:
    """New ``(driverID, dwdIndex, watchState)`` entries, in the order the mutating webhook appends them.

    Errors are ignored as in upstream's ``Default()``: matches found before the first error
    still register. ``existing`` holds entries already in ``status.drivers``; an entry is
    skipped only if the same (label, index, state) existed before the current rule was
    applied, so ``watchStates: "A,A"`` registers A twice, as upstream does.
    DirectivePanic is re-raised because upstream's webhook fails on it.
    """
    if not directives or not rules:
        return []
    drivers = list(existing)
    added: list[tuple[str, int, str]] = []

    def on_valid(index: int, rule: DirectiveRule) -> None:
        if not rule.watch_states:
            return
        registered = {state for (label, idx, state) in drivers if idx == index and label == rule.driver_label}
        for state in rule.watch_states:
            if state in registered:
                continue
            entry = (rule.driver_label, index, state)
            drivers.append(entry)
            added.append(entry)

    try:
        _validate(directives, rules, on_valid)
    except DirectivePanic:
        raise
    except DirectiveError:
        pass
    return added


# --------------------------------------------------------------------------------------
# The dws-test-driver ruleset
# --------------------------------------------------------------------------------------

_TESTER_STATES = ("Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown")

_TESTER_RULESET: dict[str, Any] = {
    "apiVersion": "dataworkflowservices.github.io/v1alpha2",
    "kind": "DWDirectiveRule",
    "metadata": {"name": "rules", "namespace": DEFAULT_RULES_NAMESPACE},
    "spec": [
        {
            "command": state,
            "watchStates": state,
            "driverLabel": "tester",
            "ruleDefs": [
                {"key": "action", "type": "string", "isRequired": True, "isValueRequired": True},
                {"key": "message", "type": "string", "isValueRequired": True},
                {"key": "severity", "type": "string", "isValueRequired": True},
            ],
        }
        for state in _TESTER_STATES
    ],
}


def tester_rules() -> list[dict[str, Any]]:
    """The dws-test-driver ruleset, as deployed by its ``config/dws`` kustomization.

    Upstream ships a single DWDirectiveRule named ``rules`` (namespace ``dws-system`` via
    kustomize) holding one spec entry per state; a fresh copy is returned on each call.
    """
    return [copy.deepcopy(_TESTER_RULESET)]


# --------------------------------------------------------------------------------------
# Go regular expressions (RE2)
# --------------------------------------------------------------------------------------


class _GoRegexError(Exception):
    """The expression would not compile with Go's ``regexp.Compile``."""


class _Regexp(Protocol):
    def search(self, text: bytes) -> object | None: ...


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad rule pattern is reported to the user, not on stderr
_NAMED_GROUP = re.compile(r"\(\?P?<([^>]*)>")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> bytes:
    """Text as the UTF-8 a Go string holds; a lone surrogate becomes U+FFFD, as Go's JSON decoder makes it."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


def _go_only_rejects(source: str) -> bool:
    """Whether ``source``, which C++ RE2 accepted, holds what Go's regexp alone refuses.

    Go's parser is a port of RE2's and accepts the same language but for two things: the
    ``\\C`` escape (any byte) and a capture-group name used twice. Finding them needs only
    skipping escapes, ``\\Q...\\E`` quotes and bracket expressions.
    """
    names: set[str] = set()
    i, end = 0, len(source)
    while i < end:
        c = source[i]
        if c == "\\":
            escaped = source[i + 1 : i + 2]
            if escaped == "C":
                return True
            if escaped == "Q":
                close = source.find("\\E", i + 2)
                i = end if close < 0 else close + 2
                continue
            i += 2
        elif c == "[":
            i += 1
            if source.startswith("^", i):
                i += 1
            if source.startswith("]", i):  # a leading ']' is a literal
                i += 1
            while i < end and source[i] != "]":
                if source[i] == "\\":
                    i += 2
                elif source.startswith("[:", i) and (close := source.find(":]", i + 2)) >= 0:
                    i = close + 2
                else:
                    i += 1
            i += 1
        else:
            if c == "(" and (named := _NAMED_GROUP.match(source, i)):
                if named[1] in names:
                    return True
                names.add(named[1])
            i += 1
    return False


@lru_cache(maxsize=1024)
def _compile_go(source: str) -> _Regexp | None:
    """Compile a Go regular expression with RE2, the engine Go's ``regexp`` package reimplements.

    None when Go would refuse it; that is cached too, so a bad rule costs one compile, not one per
    directive. RE2's default memory budget (8 MiB) also refuses what would take a second and hundreds
    of MiB to compile, such as ``\\pL{1000}``, which Go accepts: rules are checked while slurmctld waits.
    """
    try:
        compiled: _Regexp = re2.compile(_utf8(source), _RE2_OPTIONS)
    except re2.error:
        return None
    return None if _go_only_rejects(source) else compiled


def _match_string(source: str, text: str) -> bool:
    """Go's ``regexp.MatchString``: whether ``source`` matches anywhere in ``text`` (unanchored)."""
    compiled = _compile_go(source)
    if compiled is None:
        raise _GoRegexError(source)
    return compiled.search(_utf8(text)) is not None
