"""#DW directive parsing, DWDirectiveRule validation and driver registration.

A behavioural port of DataWorkflowServices' ``utils/dwdparse/dwdparse.go`` and of the
rule handling in ``api/v1alpha*/workflow_webhook.go`` (``checkDirectives``, ``ReadRules``,
``MutatingRuleParser.MatchedDirective``). Error strings are byte-for-byte the upstream ones
(including the "greather" typo) because the Slurm plugin and users match on them.

Deliberate differences from upstream, both for determinism:

* Go iterates a directive's arguments in random map order, so when several arguments are
  bad upstream reports any one of them; this port always reports the first one, in
  directive order.
* Rule keys and patterns are Go RE2 expressions. They are translated to Python ``re`` so
  that matching agrees with Go's ``MatchString``: unanchored search, ASCII-only ``\\d``, ``\\s``,
  ``\\w`` and ``\\b``, ``{,n}`` taken literally, and Perl-only syntax such as look-around and
  backreferences rejected. Unicode ``\\p{...}`` supports ``Any`` and general categories only;
  script names are reported as invalid regular expressions.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

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
            key_re = _compile_go(rule_def.key)
        except _GoRegexError:
            raise DirectiveError(f"invalid rule regular expression '{rule_def.key}'") from None
        if key_re.search(key):
            return index, rule_def
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
                pattern = _compile_go(rule_def.pattern)
            except _GoRegexError:
                raise DirectiveError(f"invalid regular expression '{rule_def.pattern}'") from None
            if not pattern.search(value):
                raise DirectiveError(f"argument '{key}' invalid string '{value}'")
    elif kind == "list-of-string":
        words = value.split(",")
        if rule_def.patterns:
            for word in words:
                for source in rule_def.patterns:
                    try:
                        pattern = _compile_go(source)
                    except _GoRegexError:
                        raise DirectiveError(f"invalid regular expression '{source}'") from None
                    if pattern.search(word):
                        break
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
# Go RE2 syntax -> Python re
# --------------------------------------------------------------------------------------


class _GoRegexError(Exception):
    """The expression would not compile with Go's regexp.Compile."""


_Ranges = list[tuple[int, int]]
_MAX_RUNE = 0x10FFFF
_MAX_REPEAT = 1000
_MAX_DEPTH = 1000

_WORD: _Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_PERL_CLASSES: dict[str, _Ranges] = {
    "d": [(0x30, 0x39)],
    "s": [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
    "w": _WORD,
}
_POSIX_CLASSES: dict[str, _Ranges] = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": [(0x30, 0x39)],
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": _WORD,
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
# Go's \b is ASCII and never case-folded.
_ASCII_WORD = "[0-9A-Za-z_]"
_WORD_BOUNDARY = f"(?-i:(?<={_ASCII_WORD})(?!{_ASCII_WORD})|(?<!{_ASCII_WORD})(?={_ASCII_WORD}))"
_NOT_WORD_BOUNDARY = f"(?-i:(?<={_ASCII_WORD})(?={_ASCII_WORD})|(?<!{_ASCII_WORD})(?!{_ASCII_WORD}))"
_CAPTURE_NAME = re.compile(r"[A-Za-z0-9_]+")
_REPEAT = re.compile(r"\{([0-9]+)(?:(,)([0-9]*))?\}")


def _complement(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    nxt = 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return out


@lru_cache(maxsize=1)
def _category_table() -> dict[str, _Ranges]:
    """Code-point ranges per Unicode general category (one pass, cached)."""
    table: dict[str, _Ranges] = {}
    for cp in range(_MAX_RUNE + 1):
        cat = unicodedata.category(chr(cp))
        ranges = table.setdefault(cat, [])
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return table


def _unicode_class(name: str) -> _Ranges:
    if name == "Any":
        return [(0, _MAX_RUNE)]
    table = _category_table()
    # Go has no Cn (unassigned) table, and its one-letter classes exclude it too.
    if len(name) == 2 and name != "Cn" and name in table:
        return list(table[name])
    if len(name) == 1:
        found = [r for cat, rs in table.items() if cat[0] == name and cat != "Cn" for r in rs]
        if found:
            return found
    raise _GoRegexError(f"invalid character class range: \\p{{{name}}}")


def _esc(cp: int) -> str:
    ch = chr(cp)
    return ch if cp < 0x80 and ch.isalnum() else f"\\U{cp:08x}"


def _emit_class(ranges: _Ranges, negate: bool) -> str:
    merged: _Ranges = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    body = "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}" for lo, hi in merged)
    return f"[{'^' if negate else ''}{body}]"


class _GoRegexTranslator:
    """Single-pass rewrite of Go ``regexp/syntax`` (Perl flags) into an equivalent Python pattern.

    Only whether a match exists matters here, so capture groups become non-capturing and
    the ungreedy flag ``U`` is dropped. Mid-group ``(?flags)`` is turned into scoped
    ``(?flags:...)`` wrappers that are closed and reopened around each ``|`` of that group.
    """

    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0
        self.out: list[str] = []
        self.frames: list[list[str]] = [[]]  # per open group: active flag wrappers
        self.multiline: list[bool] = [False]  # per open group: Go's m flag at this point
        self.group_starts: list[int] = []
        self.names: set[str] = set()
        self.atom: int | None = None  # index in out where the last repeatable item starts
        self.last_repeat = False

    def translate(self) -> str:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            repeated = False
            if c == "(":
                self._open_group()
            elif c == ")":
                self._close_group()
            elif c == "|":
                wrappers = self.frames[-1]
                self.out.append(")" * len(wrappers) + "|" + "".join(wrappers))
                self.atom = None
                self.i += 1
            elif c in "*+?":
                self._repeat(c, 1)
                repeated = True
            elif c == "{":
                m = _REPEAT.match(s, self.i)
                if m is None or self._leading_zero(m):
                    self._literal(ord("{"))
                    self.i += 1
                else:
                    lo = int(m.group(1))
                    hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else -1)
                    if lo > _MAX_REPEAT or hi > _MAX_REPEAT or (hi >= 0 and lo > hi):
                        raise _GoRegexError("invalid repeat count")
                    self._repeat(m.group(0), len(m.group(0)))
                    repeated = True
            elif c == "[":
                self._class()
            elif c == "$":
                # Without m, Go's $ is end of text only; Python's would also match before a final \n.
                self._atom("$" if self.multiline[-1] else r"\Z")
                self.i += 1
            elif c in ".^":
                self._atom(c)
                self.i += 1
            elif c == "\\":
                self._escape()
            else:
                self._literal(ord(c))
                self.i += 1
            self.last_repeat = repeated
        if len(self.frames) > 1:
            raise _GoRegexError("missing closing )")
        self.out.append(")" * len(self.frames[0]))
        return "".join(self.out)

    @staticmethod
    def _leading_zero(m: re.Match[str]) -> bool:
        # Go's parseRepeat refuses numbers with leading zeros; the brace is then literal.
        return any(g and len(g) > 1 and g[0] == "0" for g in (m.group(1), m.group(3)))

    def _atom(self, text: str) -> None:
        self.atom = len(self.out)
        self.out.append(text)

    def _literal(self, cp: int) -> None:
        self._atom(re.escape(chr(cp)))

    def _repeat(self, op: str, width: int) -> None:
        j = self.i + width
        lazy = j < len(self.s) and self.s[j] == "?"
        if lazy:
            j += 1
        if self.last_repeat:
            raise _GoRegexError("invalid nested repetition operator")
        if self.atom is None:
            raise _GoRegexError("missing argument to repetition operator")
        body = "".join(self.out[self.atom :])
        del self.out[self.atom :]
        self.out.append(f"(?:{body}){op}{'?' if lazy else ''}")
        self.i = j

    def _push_group(self, text: str, next_i: int, multiline: bool | None = None) -> None:
        if len(self.frames) > _MAX_DEPTH:
            raise _GoRegexError("expression nests too deeply")
        self.group_starts.append(len(self.out))
        self.out.append(text)
        self.frames.append([])
        self.multiline.append(self.multiline[-1] if multiline is None else multiline)
        self.atom = None
        self.i = next_i

    def _open_group(self) -> None:
        s, i = self.s, self.i
        if not s.startswith("(?", i):
            self._push_group("(?:", i + 1)
            return
        if s.startswith("(?P<", i) or s.startswith("(?<", i):
            start = i + (4 if s[i + 2] == "P" else 3)
            end = s.find(">", start)
            name = s[start:end] if end >= 0 else ""
            if end < 0 or not _CAPTURE_NAME.fullmatch(name):
                raise _GoRegexError("invalid named capture")
            if name in self.names:
                raise _GoRegexError("duplicate capture group name")
            self.names.add(name)
            self._push_group("(?:", end + 1)
            return
        state: dict[str, bool] = {}
        negative = False
        saw_flag = False
        j = i + 2
        while j < len(s):
            c = s[j]
            if c in "imsU":
                state[c] = not negative
                saw_flag = True
            elif c == "-":
                if negative:
                    break
                negative = True
                saw_flag = False
            elif c in ":)":
                if negative and not saw_flag:
                    break
                on = "".join(f for f, v in state.items() if v and f != "U")
                off = "".join(f for f, v in state.items() if not v and f != "U")
                flags = on + (f"-{off}" if off else "")
                multiline = state.get("m", self.multiline[-1])
                if c == ":":
                    self._push_group(f"(?{flags}:", j + 1, multiline)
                else:
                    self.multiline[-1] = multiline
                    if flags:
                        opener = f"(?{flags}:"
                        self.frames[-1].append(opener)
                        self.out.append(opener)
                    self.atom = None
                    self.i = j + 1
                return
            else:
                break
            j += 1
        raise _GoRegexError("invalid or unsupported Perl syntax")

    def _close_group(self) -> None:
        if len(self.frames) == 1:
            raise _GoRegexError("unexpected )")
        wrappers = self.frames.pop()
        self.multiline.pop()
        self.out.append(")" * len(wrappers) + ")")
        self.atom = self.group_starts.pop()
        self.i += 1

    def _parse_escape(self, i: int) -> tuple[int, int]:
        """Go's parseEscape: a single escaped character starting at the backslash at ``i``."""
        s = self.s
        if i + 1 >= len(s):
            raise _GoRegexError("trailing backslash at end of expression")
        c = s[i + 1]
        j = i + 2
        if c in "1234567" and not (j < len(s) and s[j] in "01234567"):
            raise _GoRegexError("invalid escape sequence (backreference)")
        if c in "01234567":
            value = int(c)
            for _ in range(2):
                if j < len(s) and s[j] in "01234567":
                    value = value * 8 + int(s[j])
                    j += 1
            return value, j
        if c == "x":
            if j < len(s) and s[j] == "{":
                end = s.find("}", j + 1)
                digits = s[j + 1 : end] if end >= 0 else ""
                if not digits or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    raise _GoRegexError("invalid escape sequence")
                value = int(digits, 16)
                if value > _MAX_RUNE:
                    raise _GoRegexError("invalid escape sequence")
                return value, end + 1
            pair = s[j : j + 2]
            if len(pair) == 2 and all(d in "0123456789abcdefABCDEF" for d in pair):
                return int(pair, 16), j + 2
            raise _GoRegexError("invalid escape sequence")
        simple = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
        if c in simple:
            return simple[c], j
        if ord(c) < 0x80 and not c.isalnum():
            return ord(c), j
        raise _GoRegexError("invalid escape sequence")

    def _unicode_escape(self, i: int) -> tuple[_Ranges, int]:
        s = self.s
        negate = s[i + 1] == "P"
        if i + 2 >= len(s):
            raise _GoRegexError("invalid character class range")
        if s[i + 2] == "{":
            end = s.find("}", i + 3)
            if end < 0:
                raise _GoRegexError("invalid character class range")
            name, nxt = s[i + 3 : end], end + 1
            if name.startswith("^"):
                negate, name = not negate, name[1:]
        else:
            name, nxt = s[i + 2], i + 3
        ranges = _unicode_class(name)
        return (_complement(ranges) if negate else ranges), nxt

    def _escape(self) -> None:
        s, i = self.s, self.i
        c = s[i + 1] if i + 1 < len(s) else ""
        if c == "A":
            self._atom(r"\A")
            self.i = i + 2
        elif c == "z":
            self._atom(r"\Z")
            self.i = i + 2
        elif c == "b":
            self._atom(_WORD_BOUNDARY)
            self.i = i + 2
        elif c == "B":
            self._atom(_NOT_WORD_BOUNDARY)
            self.i = i + 2
        elif c == "C":
            raise _GoRegexError("invalid escape sequence: \\C")
        elif c == "Q":
            rest = s[i + 2 :]
            end = rest.find("\\E")
            text = rest if end < 0 else rest[:end]
            for ch in text:
                self._literal(ord(ch))
            self.i = i + 2 + len(text) + (0 if end < 0 else 2)
        elif c and c in "pP":
            ranges, self.i = self._unicode_escape(i)
            self._atom(_emit_class(ranges, False))
        elif c and c in "dDsSwW":
            ranges = _PERL_CLASSES[c.lower()]
            self._atom(_emit_class(ranges, c.isupper()))
            self.i = i + 2
        else:
            cp, self.i = self._parse_escape(i)
            self._literal(cp)

    def _class_char(self, i: int) -> tuple[int, int]:
        if i >= len(self.s):
            raise _GoRegexError("missing closing ]")
        if self.s[i] == "\\":
            return self._parse_escape(i)
        return ord(self.s[i]), i + 1

    def _class(self) -> None:
        s = self.s
        i = self.i + 1
        negate = i < len(s) and s[i] == "^"
        if negate:
            i += 1
        ranges: _Ranges = []
        first = True  # a leading ']' is a literal
        while i >= len(s) or s[i] != "]" or first:
            first = False
            if len(s) - i > 2 and s[i] == "[" and s[i + 1] == ":":
                end = s.find(":]", i + 2)
                if end >= 0:
                    name = s[i + 2 : end]
                    inverted = name.startswith("^")
                    base = _POSIX_CLASSES.get(name[1:] if inverted else name)
                    if base is None:
                        raise _GoRegexError("invalid character class range")
                    ranges.extend(_complement(base) if inverted else base)
                    i = end + 2
                    continue
            if i + 1 < len(s) and s[i] == "\\" and s[i + 1] in "pP":
                extra, i = self._unicode_escape(i)
                ranges.extend(extra)
                continue
            if i + 1 < len(s) and s[i] == "\\" and s[i + 1] in "dDsSwW":
                base = _PERL_CLASSES[s[i + 1].lower()]
                ranges.extend(_complement(base) if s[i + 1].isupper() else base)
                i += 2
                continue
            lo, i = self._class_char(i)
            hi = lo
            if i + 1 < len(s) and s[i] == "-" and s[i + 1] != "]":
                hi, i = self._class_char(i + 1)
                if hi < lo:
                    raise _GoRegexError("invalid character class range")
            ranges.append((lo, hi))
        self._atom(_emit_class(ranges, negate))
        self.i = i + 1


@lru_cache(maxsize=1024)
def _compile_go(source: str) -> re.Pattern[str]:
    """Compile a Go RE2 expression for use with ``search`` (Go's unanchored MatchString)."""
    try:
        return re.compile(_GoRegexTranslator(source).translate())
    except (re.error, RecursionError, OverflowError) as exc:
        raise _GoRegexError(str(exc)) from exc
