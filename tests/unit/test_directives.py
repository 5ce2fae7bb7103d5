"""Tests for the DWS #DW directive parser/validator port (slurmlink.resources.dws.directives)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmlink.resources.dws.directives import (
    EMPTY_VALUE,
    DirectiveError,
    DirectivePanic,
    DirectiveRule,
    RuleDef,
    check_workflow_directives,
    driver_registrations,
    parse_directive,
    rules_from_objects,
    validate_directives,
)
from slurmlink.resources.dws.directives import (
    tester_rules as make_tester_rules,
)

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def rule(command: str, *defs: RuleDef, label: str = "drv", watch: str = "") -> DirectiveRule:
    """Build a rule the way rules_from_objects would from a spec entry."""
    return DirectiveRule(
        name=label,
        command=command,
        driver_label=label,
        watch_states=tuple(watch.split(",")) if watch else (),
        rule_defs=defs,
    )


def error_of(directives: list[str], rules: list[DirectiveRule], ns: str = "dws-system") -> str | None:
    """The upstream error message for these directives, or None when they validate."""
    try:
        validate_directives(directives, rules, ns)
    except DirectiveError as exc:
        return str(exc)
    return None


TESTER = rules_from_objects(make_tester_rules())

# --------------------------------------------------------------------------------------
# Ported from dws utils/dwdparse/dwdparse_test.go
# --------------------------------------------------------------------------------------

_NAME = r"^([A-Za-z0-9_-]+)$"
_PROFILE = r"^[A-Za-z][A-Za-z0-9_-]+$"
_CAPACITY = r"^\d+(KiB|KB|MiB|MB|GiB|GB|TiB|TB)$"
_FS = r"^(raw|xfs|gfs2|lustre)$"
_XFER = r"^(directory|file|list)$"


def _s(key: str, pattern: str = "", required: bool = True, unique: str = "") -> RuleDef:
    return RuleDef(
        key=key,
        type="string",
        pattern=pattern,
        is_required=required,
        is_value_required=True,
        unique_within=unique,
    )


GO_RULES = [
    rule(
        "jobdw",
        _s("type", _FS),
        _s("capacity", _CAPACITY),
        _s("name", _NAME, unique="jobdw_name"),
        _s("profile", _PROFILE, required=False),
    ),
    rule(
        "create_persistent",
        _s("type", _FS),
        _s("capacity", _CAPACITY),
        _s("name", _NAME, unique="create_persistent_name"),
        _s("profile", _PROFILE, required=False),
    ),
    rule("stage_in", _s("type", _XFER), _s("source"), _s("destination")),
    rule("stage_out", _s("type", _XFER), _s("source"), _s("destination")),
    rule("persistentdw", _s("name", _NAME)),
    rule("destroy_persistent", _s("name", _NAME, unique="destroy_persistent_name")),
    rule(
        "container",
        _s("name", _NAME),
        _s("spec"),
        _s("job_storage", r"^{([A-Za-z0-9_-]+)(,([A-Za-z0-9_-]+))*}$", required=False),
        _s("persistent_storage", r"^{([A-Za-z0-9_-]+)(,([A-Za-z0-9_-]+))*}$", required=False),
        _s("supervisor", r"^(rabbit|compute)$", required=False),
    ),
]

PASS, FAIL = True, False
GO_TABLE: list[tuple[list[str], bool]] = [
    (["#DW jobdw type=raw    capacity=100GB name=prettyGoodName  "], PASS),
    (["#DW jobdw type=xfs    capacity=100GB name=pretty_GoodName "], PASS),
    (["#DW jobdw type=gfs2   capacity=100GB name=pretty_GoodName "], PASS),
    (["#DW jobdw type=lustre capacity=100GB name=prettyGood-Name "], PASS),
    (["#DW jobdw type=raw    capacity=100TB name=__prettyGoodName"], PASS),
    (["#DW jobdw type=xfs    capacity=100TB name=-prettyGoodName-"], PASS),
    (["#DW jobdw type=lustre capacity=100TB name=0prettyGoodName1"], PASS),
    (["#DW jobdw type=raw    capacity=100GB name=prettierGoodName"], PASS),
    (["#DW jobdw type=lustre capacity=100GB name=CoolProfile1 profile=this-TYPE_profile08"], PASS),
    (["#DW jobdw type=lustre capacity=100GB name=CoolProfile2 profile=this_TYPE_profile08"], PASS),
    (["#DW jobdw type=lustre capacity=100GB name=UncoolProfile1 profile=0this"], FAIL),
    (["#DW jobdw type=lustre capacity=100GB name=UncoolProfile2 profile=this!"], FAIL),
    (["#DW jobdw type=lustre capacity=100GB name=UncoolProfile3 profile=_this"], FAIL),
    (["#DW jobdw type=lustre capacity=100GB name=UncoolProfile4 profile=-this"], FAIL),
    (["#DW create_persistent type=raw    capacity=100GB name=prettyGoodName  "], PASS),
    (["#DW create_persistent type=gfs2   capacity=100GB name=prettyGoodName  "], PASS),
    (["#DW create_persistent type=lustre capacity=100TB name=prettyGoodName  "], PASS),
    (
        ["#DW create_persistent type=lustre capacity=100GB name=CoolProfile1 profile=this-TYPE_profile08"],
        PASS,
    ),
    (["#DW create_persistent type=lustre capacity=100GB name=UncoolProfile1 profile=0this"], FAIL),
    (["#DW create_persistent type=lustre capacity=100GB name=UncoolProfile2 profile=this!"], FAIL),
    (["#DW create_persistent type=lustre capacity=100GB name=UncoolProfile3 profile=_this"], FAIL),
    (["#DW create_persistent type=lustre capacity=100GB name=UncoolProfile4 profile=-this"], FAIL),
    (["#DW stage_in  type=file      destination=$DW_JOB_STRIPED source=/pfs/dld-input "], PASS),
    (["#DW stage_in  type=directory destination=$DW_JOB_STRIPED source=/pfs/dld-input "], PASS),
    (["#DW stage_in  type=list      destination=$DW_JOB_STRIPED source=/pfs/dld-input "], PASS),
    (["#DW stage_out type=file      destination=/pfs/dld-output source=$DW_JOB_STRIPED"], PASS),
    (["#DW stage_out type=directory destination=/pfs/dld-output source=$DW_JOB_STRIPED"], PASS),
    (["#DW stage_out type=list      destination=/pfs/dld-output source=$DW_JOB_STRIPED"], PASS),
    (["#DW persistentdw name=evenBetterName"], PASS),
    (["#DW destroy_persistent name=evenBetterName"], PASS),
    (["#DW destroy_persistent name=uniqueName1 ", "#DW destroy_persistent name=uniqueName2 "], PASS),
    (["#DW destroy_persistent name=conflictName", "#DW destroy_persistent name=conflictName"], FAIL),
    (["#DW container name=mycontainer spec=some-repo-name supervisor=rabbit"], PASS),
    (["#DW container name=mycontainer spec=some-repo-name job_storage={stor1,stor2,stor3}"], PASS),
    (["#DW container name=mycontainer spec=some-repo-name job_storage={stor1,}"], FAIL),
    (["#DW container name=mycontainer spec=some-repo-name job_storage={,stor1}"], FAIL),
    (["#DW container name=mycontainer "], FAIL),
    (["                                                         "], FAIL),
    (["    jobdw type=raw     capacity=100GB name=prettyGoodName"], FAIL),
    (["#DW       type=xfs     capacity=100TB name=noCommand     "], FAIL),
    (["#DW bogus the_rest_does_not_matter                       "], FAIL),
    (["#DW jobd  type=lustre  capacity=100TB name=badCommand    "], FAIL),
    (["#DW jobdw tye=badtype  capacity=100TB name=badType       "], FAIL),
    (["#DW jobdw type=badtype capacity=100TB name=badType       "], FAIL),
    (["#DW jobdw              capacity=100TB name=missingType   "], FAIL),
    (["#DW jobdw type=file    capacity=100TB name=badType       "], FAIL),
    (["#DW jobdw type=raw     caacity=100TB  name=badCapacity   "], FAIL),
    (["#DW jobdw type=raw     capacity=bad   name=badCapacity   "], FAIL),
    (["#DW jobdw type=xfs     capacity=100TB ame=badName        "], FAIL),
    (["#DW jobdw type=xfs     capacity=100TB name=!!21//\\      "], FAIL),
    (["#DW jobdw                                                "], FAIL),
    (["#DW jobdw type=raw type=raw capacity=100TB name=duplicatedTypes"], FAIL),
    (["#DW jobdw type=raw capacity=100TB name=conflictingTypes type=xfs"], FAIL),
    (["#DW jobdw type=badtype destination=shouldNotHaveDestination source=shouldNotHaveSource"], FAIL),
    (["#DW stage_in  type=badtype destination=$DW_JOB_STRIPED source=/pfs/dld-input"], FAIL),
    (["#DW stage_out type=file    badkey=foobar destination=/pfs/dld-output source=$DW_JOB_STRIPED"], FAIL),
]


@pytest.mark.parametrize(("directives", "expected"), GO_TABLE)
def test_upstream_dwparse_table(directives: list[str], expected: bool) -> None:
    assert (error_of(directives, GO_RULES) is None) is expected


def test_upstream_table_messages() -> None:
    """Exact messages for a few of the upstream table's failures."""
    assert error_of(["#DW jobdw tye=badtype capacity=100TB name=x"], GO_RULES) == "unsupported argument 'tye'"
    assert error_of(["#DW jobdw capacity=100TB name=x"], GO_RULES) == "missing required argument 'type'"
    assert error_of(["#DW jobdw type=raw capacity=bad name=x"], GO_RULES) == (
        "argument 'capacity' invalid string 'bad'"
    )
    assert error_of(["#DW jobdw"], GO_RULES) == "missing required argument 'type'"
    assert error_of(["#DW       type=xfs     capacity=100TB name=noCommand     "], GO_RULES) == (
        "invalid directive '#DW       type=xfs     capacity=100TB name=noCommand     '"
    )
    assert error_of(["   "], GO_RULES) == "missing '#DW' prefix in directive '   '"
    assert error_of(
        ["#DW destroy_persistent name=conflictName", "#DW destroy_persistent name=conflictName"], GO_RULES
    ) == ("value 'conflictName' must be unique within 'destroy_persistent_name'")


@pytest.mark.parametrize(
    ("directive", "ok"),
    [
        ("#DW check_requires requires=copy-offload,other-thing", True),
        ("#DW check_requires requires=none-such,copy-offload", False),
        ("#DW check_requires requires=copy-offload,other-thing,copy-offload", False),
    ],
)
def test_upstream_requires_keyword(directive: str, ok: bool) -> None:
    rules = [
        rule(
            "check_requires",
            RuleDef(
                key="requires",
                type="list-of-string",
                patterns=("^copy-offload$", "^other-thing$"),
                is_value_required=True,
            ),
        )
    ]
    assert (error_of([directive], rules) is None) is ok


def test_upstream_unique_within() -> None:
    rules = [rule("unique", RuleDef(key="name", type="string", is_required=True, unique_within="jobdw_name"))]
    assert error_of(["#DW unique name=uniqueName1 ", "#DW unique name=uniqueName2 "], rules) is None
    assert error_of(["#DW unique name=sameName", "#DW unique name=sameName"], rules) == (
        "value 'sameName' must be unique within 'jobdw_name'"
    )


@pytest.mark.parametrize(
    ("directive", "ok"),
    [
        ("#DW regexp PREFIX_1_good=value", True),
        ("#DW regexp PREFIX_2_good=value", True),
        ("#DW regexp PREFIX_2_=value", False),
        ("#DW regexp INVALID=value", False),
    ],
)
def test_upstream_key_regexp(directive: str, ok: bool) -> None:
    rules = [rule("regexp", RuleDef(key=r"^(PREFIX_1_|PREFIX_2_)\w+", type="string"))]
    assert (error_of([directive], rules) is None) is ok


def test_upstream_key_malformed_regexp() -> None:
    rules = [rule("regexp", RuleDef(key="*", type="string"))]
    assert error_of(["#DW regexp KEY=VALUE"], rules) == "invalid rule regular expression '*'"


# --------------------------------------------------------------------------------------
# parse_directive (BuildArgsMap)
# --------------------------------------------------------------------------------------


def test_parse_basic_and_bare_and_equals_in_value() -> None:
    assert parse_directive("#DW jobdw type=raw flag a=b=c empty=") == (
        "jobdw",
        {"type": "raw", "flag": None, "a": "b=c", "empty": ""},
    )


@pytest.mark.parametrize(
    "text", ["", "   ", "jobdw x=y", "#dw jobdw", "#DWjobdw", " # DW jobdw", "x #DW jobdw"]
)
def test_parse_missing_prefix(text: str) -> None:
    with pytest.raises(DirectiveError) as exc:
        parse_directive(text)
    assert str(exc.value) == f"missing '#DW' prefix in directive '{text}'"


def test_parse_repeated_argument_including_command_key() -> None:
    with pytest.raises(DirectiveError, match=r"^repeated argument 'type' in directive '#DW j type=a type'$"):
        parse_directive("#DW j type=a type")
    with pytest.raises(DirectiveError, match=r"^repeated argument 'command' in directive '#DW j command=x'$"):
        parse_directive("#DW j command=x")


def test_parse_lone_prefix_panics_like_upstream() -> None:
    with pytest.raises(DirectivePanic) as exc:
        parse_directive("#DW   ")
    assert str(exc.value) == "panic: runtime error: index out of range [1] with length 1 [recovered]"


def test_parse_uses_go_whitespace() -> None:
    """Tabs, newlines, NBSP and U+3000 separate fields; U+001C (a Python-only space) does not."""
    assert parse_directive("#DW\tcmd\u00a0a=1\u3000b=2\nc=3") == ("cmd", {"a": "1", "b": "2", "c": "3"})
    assert parse_directive("#DW cmd a=1\x1cb=2") == ("cmd", {"a": "1\x1cb=2"})


# --------------------------------------------------------------------------------------
# every error string, every rule type
# --------------------------------------------------------------------------------------

INT_RULES = [
    rule("n", RuleDef(key="count", type="integer", min=2, max=10), RuleDef(key="any", type="integer"))
]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", None),
        ("2", None),
        ("10", None),
        ("+5", None),
        ("007", None),
        ("11", "argument 'count' specified integer value 11 is greather than maximum value 10"),
        ("+011", "argument 'count' specified integer value 11 is greather than maximum value 10"),
        ("1", "argument 'count' specified integer value 1 is less than minimum value 2"),
        ("-3", "argument 'count' specified integer value -3 is less than minimum value 2"),
        ("abc", "argument 'count' invalid integer 'abc'"),
        ("1.5", "argument 'count' invalid integer '1.5'"),
        ("1_000", "argument 'count' invalid integer '1_000'"),
        ("0x10", "argument 'count' invalid integer '0x10'"),
        ("\u0665", "argument 'count' invalid integer '\u0665'"),
        ("", "argument 'count' invalid integer ''"),
        ("+", "argument 'count' invalid integer '+'"),
        ("9223372036854775808", "argument 'count' invalid integer '9223372036854775808'"),
    ],
)
def test_integer(value: str, message: str | None) -> None:
    assert error_of([f"#DW n count={value}"], INT_RULES) == message


def test_integer_zero_min_max_mean_unbounded() -> None:
    assert error_of(["#DW n any=-9223372036854775808"], INT_RULES) is None
    assert error_of(["#DW n any=9223372036854775807"], INT_RULES) is None


def test_integer_negative_bounds() -> None:
    rules = [rule("n", RuleDef(key="x", type="integer", min=-5, max=-1))]
    assert error_of(["#DW n x=-3"], rules) is None
    assert error_of(["#DW n x=0"], rules) == (
        "argument 'x' specified integer value 0 is greather than maximum value -1"
    )
    assert (
        error_of(["#DW n x=-6"], rules)
        == "argument 'x' specified integer value -6 is less than minimum value -5"
    )


BOOL_RULES = [
    rule(
        "b",
        RuleDef(key="strict", type="bool", pattern="anything-here"),
        RuleDef(key="loose", type="bool"),
        RuleDef(key="needed", type="bool", pattern="x", is_value_required=True),
        RuleDef(key="broken", type="bool", pattern="(unclosed"),
    )
]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("strict=true", None),
        ("strict=FALSE", None),
        ("strict=True", None),
        ("strict", None),  # bare bool defaults to "true"
        ("strict=yes", "argument 'strict' invalid boolean 'yes'"),
        ("strict=1", "argument 'strict' invalid boolean '1'"),
        ("strict=", "argument 'strict' invalid boolean ''"),
        ("strict=truex", "argument 'strict' invalid boolean 'truex'"),
        ("loose=whatever", None),  # no pattern: any value
        ("loose", None),
        ("needed=false", None),
        ("needed", "argument 'needed' requires value"),
        ("broken=true", None),  # the pattern's content is never compiled for bool
        ("broken=nope", "argument 'broken' invalid boolean 'nope'"),
    ],
)
def test_bool(arg: str, message: str | None) -> None:
    assert error_of([f"#DW b {arg}"], BOOL_RULES) == message


STRING_RULES = [
    rule(
        "s",
        RuleDef(key="name", type="string", pattern="[a-z]+"),  # unanchored
        RuleDef(key="exact", type="string", pattern="^[a-z]+$"),
        RuleDef(key="free", type="string"),
        RuleDef(key="bad", type="string", pattern="a(b"),
        RuleDef(key="digits", type="string", pattern=r"^\d+$"),
        RuleDef(key="brace", type="string", pattern=r"^x{,3}$"),
    )
]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("name=ABCdef123", None),  # search, not full match
        ("name=ABC123", "argument 'name' invalid string 'ABC123'"),
        ("exact=abc", None),
        ("exact=abc1", "argument 'exact' invalid string 'abc1'"),
        ("free=!@#$%^&*()", None),
        ("free", None),  # bare, not value-required: the sentinel is just a string
        ("exact", f"argument 'exact' invalid string '{EMPTY_VALUE}'"),
        ("bad=x", "invalid regular expression 'a(b'"),
        ("digits=123", None),
        ("digits=\u0661\u0662", "argument 'digits' invalid string '\u0661\u0662'"),  # Go \d is ASCII
        ("brace=x{,3}", None),  # Go treats {,3} as literal text
        ("brace=xx", "argument 'brace' invalid string 'xx'"),
    ],
)
def test_string(arg: str, message: str | None) -> None:
    assert error_of([f"#DW s {arg}"], STRING_RULES) == message


LIST_RULES = [
    rule(
        "l",
        RuleDef(key="req", type="list-of-string", patterns=("^a$", "^b$", "c")),
        RuleDef(key="any", type="list-of-string"),
        RuleDef(key="lazy", type="list-of-string", patterns=("^ok$", "(broken")),
    )
]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("req=a,b", None),
        ("req=a", None),
        ("req=xcx,a", None),  # unanchored pattern "c"
        ("req=a,d", "argument 'req' invalid string 'd' in list 'a,d'"),
        ("req=a,b,a", "argument 'req' word 'a' repeated in list 'a,b,a'"),
        ("req=a,,b", "argument 'req' invalid string '' in list 'a,,b'"),
        ("req=", "argument 'req' invalid string '' in list ''"),
        ("any=x,y,z", None),
        ("any=x,y,x", "argument 'any' word 'x' repeated in list 'x,y,x'"),
        ("any=a,,b,", "argument 'any' word '' repeated in list 'a,,b,'"),
        ("any", None),
        ("lazy=ok,ok2", "invalid regular expression '(broken'"),
        ("lazy=ok", None),  # the broken pattern is never reached
    ],
)
def test_list_of_string(arg: str, message: str | None) -> None:
    assert error_of([f"#DW l {arg}"], LIST_RULES) == message


def test_unsupported_rule_type_and_order_with_requires_value() -> None:
    rules = [
        rule("t", RuleDef(key="x", type="float"), RuleDef(key="y", type="float", is_value_required=True))
    ]
    assert error_of(["#DW t x=1"], rules) == "unsupported rule type 'float'"
    assert error_of(["#DW t x"], rules) == "unsupported rule type 'float'"
    assert error_of(["#DW t y"], rules) == "argument 'y' requires value"
    assert error_of(["#DW t"], rules) is None  # no argument ever reaches the type switch


def test_unsupported_argument_and_missing_required_order() -> None:
    rules = [
        rule(
            "r",
            RuleDef(key="^first$", type="string", is_required=True),
            RuleDef(key="^second$", type="string", is_required=True),
        )
    ]
    assert error_of(["#DW r other=1"], rules) == "unsupported argument 'other'"
    assert error_of(["#DW r"], rules) == "missing required argument '^first$'"
    assert error_of(["#DW r first=1"], rules) == "missing required argument '^second$'"
    assert error_of(["#DW r second=1 first"], rules) is None


def test_required_satisfied_by_regex_key_and_first_matching_def_wins() -> None:
    rules = [
        rule(
            "r",
            RuleDef(key="opt", type="integer"),  # unanchored: also matches "option"
            RuleDef(key="^option$", type="string", is_required=True),
        )
    ]
    assert error_of(["#DW r option=abc"], rules) == "argument 'option' invalid integer 'abc'"
    assert error_of(["#DW r option=3"], rules) == "missing required argument '^option$'"


def test_requires_value_only_for_bare_key_not_for_empty_assignment() -> None:
    """Upstream only treats a bare key as valueless; ``key=`` passes isValueRequired."""
    assert error_of(["#DW DataIn action"], TESTER) == "argument 'action' requires value"
    assert error_of(["#DW DataIn action="], TESTER) is None


def test_literal_sentinel_value_counts_as_bare() -> None:
    assert error_of([f"#DW DataIn action={EMPTY_VALUE}"], TESTER) == "argument 'action' requires value"
    assert error_of([f"#DW n count={EMPTY_VALUE}"], INT_RULES) == (
        f"argument 'count' invalid integer '{EMPTY_VALUE}'"
    )


def test_unique_within_same_directive_and_across_rules() -> None:
    shared = [
        rule(
            "u",
            RuleDef(key="^a$", type="string", unique_within="grp"),
            RuleDef(key="^b$", type="string", unique_within="grp"),
        )
    ]
    assert error_of(["#DW u a=x b=y"], shared) is None
    assert error_of(["#DW u a=x b=x"], shared) == "value 'x' must be unique within 'grp'"
    # Namespaced by uniqueWithin: the same value in two groups is fine.
    other = [
        rule("u", RuleDef(key="^a$", type="string", unique_within="g1")),
        rule("v", RuleDef(key="^a$", type="string", unique_within="g2")),
    ]
    assert error_of(["#DW u a=x", "#DW v a=x"], other) is None
    # Two rules for one command share the map, so the second rule trips on the first's entry.
    twice = [
        rule("w", RuleDef(key="n", type="string", unique_within="g"), label="one"),
        rule("w", RuleDef(key="n", type="string", unique_within="g"), label="two"),
    ]
    assert error_of(["#DW w n=v"], twice) == "value 'v' must be unique within 'g'"
    # A bare, non-bool key is stored under the sentinel value.
    assert error_of(["#DW w n"], twice[:1]) is None
    assert error_of(["#DW w n", "#DW w n"], twice[:1]) == f"value '{EMPTY_VALUE}' must be unique within 'g'"


def test_unique_within_bool_default_value() -> None:
    rules = [rule("b", RuleDef(key="f", type="bool", unique_within="g"))]
    assert error_of(["#DW b f", "#DW b f=true"], rules) == "value 'true' must be unique within 'g'"


def test_invalid_directive_and_no_rules() -> None:
    assert error_of(["#DW Bogus x=y"], TESTER) == "invalid directive '#DW Bogus x=y'"
    assert error_of(["#DW Proposal action=complete"], []) == "unable to find ruleset in namespace: dws-system"
    assert (
        error_of(["#DW Proposal action=complete"], [], ns="other")
        == "unable to find ruleset in namespace: other"
    )
    assert error_of([], []) is None
    assert error_of([], TESTER) is None


def test_check_workflow_directives_distinguishes_empty_ruleset_objects() -> None:
    empty_obj = [{"metadata": {"name": "empty", "namespace": "dws-system"}, "spec": []}]
    with pytest.raises(DirectiveError, match=r"^invalid directive 'jobdw'$"):
        check_workflow_directives(["jobdw"], empty_obj)  # no rules: never parsed
    with pytest.raises(DirectiveError, match=r"^unable to find ruleset in namespace: dws-system$"):
        check_workflow_directives(["#DW x"], [])
    with pytest.raises(DirectiveError, match=r"^unable to find ruleset in namespace: dws-system$"):
        check_workflow_directives(
            ["#DW x"], [{**make_tester_rules()[0], "metadata": {"name": "r", "namespace": "o"}}]
        )
    check_workflow_directives(["#DW Setup action=wait"], make_tester_rules())
    check_workflow_directives([], [])


def test_prefix_error_beats_invalid_directive_when_rules_exist() -> None:
    assert error_of(["jobdw"], TESTER) == "missing '#DW' prefix in directive 'jobdw'"
    with pytest.raises(DirectivePanic):
        validate_directives(["#DW"], TESTER)
    with pytest.raises(DirectiveError, match=r"^invalid directive '#DW'$"):
        check_workflow_directives(["#DW"], [{"metadata": {"name": "e"}, "spec": []}])


def test_first_failing_directive_wins() -> None:
    directives = ["#DW Proposal action=complete", "#DW Bogus", "#DW DataIn action"]
    assert error_of(directives, TESTER) == "invalid directive '#DW Bogus'"
    assert error_of(["#DW DataIn action", "#DW Bogus"], TESTER) == "argument 'action' requires value"


def test_first_bad_argument_in_directive_order_wins() -> None:
    assert error_of(["#DW Setup bogus=1 action"], TESTER) == "unsupported argument 'bogus'"
    assert error_of(["#DW Setup action bogus=1"], TESTER) == "argument 'action' requires value"


def test_error_from_one_matching_rule_beats_acceptance_by_another() -> None:
    rules = [
        rule("cmd", RuleDef(key="x", type="string"), label="a", watch="Setup"),
        rule("cmd", RuleDef(key="y", type="string"), label="b", watch="Setup"),
    ]
    assert error_of(["#DW cmd x=1"], rules) == "unsupported argument 'x'"
    assert driver_registrations(["#DW cmd x=1"], rules) == [("a", 0, "Setup")]


# --------------------------------------------------------------------------------------
# regex details
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "ok"),
    [
        ("abc", "xxabcxx", True),
        ("^abc", "xabc", False),
        ("abc$", "abc", True),
        (r"\w+", "é", False),  # ASCII \w
        (r"\bfoo\b", "a-foo-b", True),
        (r"\bfoo\b", "éfooé", True),  # ASCII word boundary
        (r"[[:alpha:]]+$", "abc", True),
        (r"^[[:digit:]]+$", "12a", False),
        (r"^\pL+$", "héllo", True),
        (r"^\p{Nd}+$", "١٢", True),
        (r"(?i)^ABC$", "abc", True),
        (r"^a(?i)b|c", "C", True),
        (r"^a(?i)b|c", "aB", True),
        (r"(?P<name>x)", "x", True),
        (r"^\x{41}\101$", "AA", True),
        (r"^\Qa.b\E$", "a.b", True),
        (r"^\Qa.b\E$", "axb", False),
        (r"^(?U)a+$", "aaa", True),
        (r"^\p{Greek}+$", "αβγ", True),  # Unicode scripts, as Go's tables
        (r"^\p{Greek}+$", "abc", False),
        (r"^\PL+$", "123", True),
        (r"(?i)^k$", "\u212a", True),  # Kelvin sign folds to k in Go
        (r"abc\z", "xabc", True),
        (r"abc\z", "abcx", False),
        (r"(?<name>x)", "x", True),  # Go 1.22 syntax
        (r"^\Qa\C\E$", "a\\C", True),  # quoted, \C is plain text
        (r"^[\]C]+$", "]C", True),
        (r"^\x{FFFD}$", "\ud800", True),  # a lone surrogate is U+FFFD, as Go's JSON decoding makes it
        (r"(?P<a>x)|(?P<b>y)", "y", True),
    ],
)
def test_go_regex_semantics(pattern: str, value: str, ok: bool) -> None:
    rules = [rule("r", RuleDef(key="v", type="string", pattern=pattern))]
    assert (error_of([f"#DW r v={value}"], rules) is None) is ok


@pytest.mark.parametrize(
    "pattern",
    [
        r"(?=a)",
        r"(?!a)",
        r"(?<=a)b",
        r"(a)\1",
        r"a**",
        r"a{2}{3}",
        r"a*+",
        r"x{1001}",
        r"\Z",
        r"[\b]",
        r"\p{Klingon}",
        r"\p{Cn}",  # Go has no table for unassigned code points
        r"\8",
        r"a{2,1}",
        r"(?x)a b",
        r"\C",  # C++ RE2 takes it as any byte; Go refuses it
        r"a\C*",
        r"(?P<n>a)(?P<n>b)",  # C++ RE2 takes a repeated name; Go refuses it
        r"(?P<n>a)|(?<n>b)",
        r"(?P<n>a)(?P<n",
        r"\u0041",  # Python re knows \u; Go does not
        r"\pL{1000}",  # beyond RE2's memory budget (Go takes it): refused rather than compiled for seconds
    ],
)
def test_go_rejects_perl_only_syntax(pattern: str) -> None:
    rules = [rule("r", RuleDef(key="v", type="string", pattern=pattern))]
    assert error_of(["#DW r v=a"], rules) == f"invalid regular expression '{pattern}'"


def test_empty_key_regex_matches_every_argument() -> None:
    rules = [rule("r", RuleDef(key="", type="string"), RuleDef(key="^never$", type="integer"))]
    assert error_of(["#DW r never=notanint whatever=1"], rules) is None


# --------------------------------------------------------------------------------------
# rules_from_objects
# --------------------------------------------------------------------------------------


def test_rules_from_objects_defaults_and_watch_state_split() -> None:
    objs: list[dict[str, Any]] = [
        {
            "metadata": {"name": "nnf", "namespace": "dws-system"},
            "spec": [
                {"command": "jobdw", "watchStates": "Proposal,Setup, Teardown", "ruleDefs": [{"key": "k"}]},
                {"command": "copy_in", "driverLabel": "", "watchStates": "DataIn,"},
                {"command": "noop", "driverLabel": "other"},
            ],
        },
        {"metadata": {"name": "elsewhere", "namespace": "other"}, "spec": [{"command": "x"}]},
    ]
    rules = rules_from_objects(objs, namespace="dws-system")
    assert [r.driver_label for r in rules] == ["nnf", "nnf", "other"]
    assert rules[0].watch_states == ("Proposal", "Setup", " Teardown")
    assert rules[1].watch_states == ("DataIn", "")
    assert rules[2].watch_states == ()
    assert rules[0].rule_defs == (RuleDef(key="k", type=""),)
    assert len(rules_from_objects(objs)) == 4


def test_rules_from_objects_full_rule_def() -> None:
    obj = {
        "metadata": {"name": "n"},
        "spec": [
            {
                "command": "c",
                "ruleDefs": [
                    {
                        "key": "k",
                        "type": "integer",
                        "pattern": "p",
                        "patterns": ["a", "b"],
                        "min": 1,
                        "max": 9,
                        "isRequired": True,
                        "isValueRequired": True,
                        "uniqueWithin": "u",
                    }
                ],
            }
        ],
    }
    assert rules_from_objects([obj])[0].rule_defs[0] == RuleDef(
        "k", "integer", "p", ("a", "b"), 1, 9, True, True, "u"
    )


@pytest.mark.parametrize(
    "bad",
    [{"key": "k", "min": "1"}, {"key": "k", "isRequired": "true"}, {"key": 3}, {"key": "k", "max": True}],
)
def test_rules_from_objects_rejects_wrong_types(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        rules_from_objects([{"metadata": {"name": "n"}, "spec": [{"command": "c", "ruleDefs": [bad]}]}])


# --------------------------------------------------------------------------------------
# driver registration (mutating webhook Default())
# --------------------------------------------------------------------------------------


def test_registration_order_and_multiple_drivers() -> None:
    rules = [
        rule("jobdw", RuleDef(key="", type="string"), label="nnf", watch="Proposal,Setup,Teardown"),
        rule("jobdw", RuleDef(key="", type="string"), label="audit", watch="Teardown"),
        rule("copy_in", RuleDef(key="", type="string"), label="nnf", watch="DataIn"),
        rule("info", RuleDef(key="", type="string"), label="quiet"),  # no watch states
    ]
    got = driver_registrations(["#DW copy_in a=1", "#DW info", "#DW jobdw x=1"], rules)
    assert got == [
        ("nnf", 0, "DataIn"),
        ("nnf", 2, "Proposal"),
        ("nnf", 2, "Setup"),
        ("nnf", 2, "Teardown"),
        ("audit", 2, "Teardown"),
    ]


def test_registration_dedup_rules() -> None:
    same_label = [
        rule("c", RuleDef(key="", type="string"), label="d", watch="Setup,Setup"),
        rule("c", RuleDef(key="", type="string"), label="d", watch="Setup,DataIn"),
    ]
    # Within one rule nothing is deduplicated; across rules (and pre-existing entries) it is.
    assert driver_registrations(["#DW c"], same_label) == [
        ("d", 0, "Setup"),
        ("d", 0, "Setup"),
        ("d", 0, "DataIn"),
    ]
    assert driver_registrations(["#DW c"], same_label, existing=[("d", 0, "Setup")]) == [("d", 0, "DataIn")]
    assert driver_registrations(["#DW c"], same_label, existing=[("d", 1, "Setup"), ("x", 0, "Setup")]) == [
        ("d", 0, "Setup"),
        ("d", 0, "Setup"),
        ("d", 0, "DataIn"),
    ]
    assert driver_registrations(["#DW c"], [rule("c", label="d", watch="A,")]) == [
        ("d", 0, "A"),
        ("d", 0, ""),
    ]


def test_registration_stops_at_first_error_and_ignores_it() -> None:
    directives = ["#DW Proposal action=complete", "#DW Bogus", "#DW Teardown action=complete"]
    assert driver_registrations(directives, TESTER) == [("tester", 0, "Proposal")]
    assert driver_registrations(["#DW Proposal action=x"], []) == []
    assert driver_registrations([], TESTER) == []
    assert driver_registrations(["no prefix"], TESTER) == []
    with pytest.raises(DirectivePanic):
        driver_registrations(["#DW"], TESTER)


# --------------------------------------------------------------------------------------
# the dws-test-driver ruleset
# --------------------------------------------------------------------------------------

STATES = ["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]


def test_tester_ruleset_shape() -> None:
    objs = make_tester_rules()
    assert len(objs) == 1
    obj = objs[0]
    assert obj["apiVersion"] == "dataworkflowservices.github.io/v1alpha2"
    assert obj["kind"] == "DWDirectiveRule"
    assert obj["metadata"] == {"name": "rules", "namespace": "dws-system"}
    assert [s["command"] for s in obj["spec"]] == STATES
    for spec in obj["spec"]:
        assert spec["watchStates"] == spec["command"]
        assert spec["driverLabel"] == "tester"
        assert spec["ruleDefs"] == [
            {"key": "action", "type": "string", "isRequired": True, "isValueRequired": True},
            {"key": "message", "type": "string", "isValueRequired": True},
            {"key": "severity", "type": "string", "isValueRequired": True},
        ]
    obj["spec"].clear()
    assert len(make_tester_rules()[0]["spec"]) == 7  # fresh copy each call


@pytest.mark.parametrize("state", STATES)
def test_tester_registers_each_state(state: str) -> None:
    assert driver_registrations([f"#DW {state} action=complete"], TESTER) == [("tester", 0, state)]


def test_tester_accepts_and_rejects() -> None:
    assert (
        error_of(["#DW DataOut action=error message=johnson_rod_misalignment severity=Major"], TESTER) is None
    )
    assert error_of(["#DW Bogus x=y"], TESTER) == "invalid directive '#DW Bogus x=y'"
    assert error_of(["#DW DataIn"], TESTER) == "missing required argument 'action'"
    assert error_of(["#DW DataIn action"], TESTER) == "argument 'action' requires value"
    assert error_of(["#DW DataIn action=x message"], TESTER) == "argument 'message' requires value"
    assert error_of(["#DW DataIn action=x colour=red"], TESTER) == "unsupported argument 'colour'"
    assert (
        error_of(["#DW proposal action=complete"], TESTER)
        == "invalid directive '#DW proposal action=complete'"
    )
    assert error_of(["#DW Setup action=anything-at-all severity=Whatever"], TESTER) is None


def test_tester_worked_example_registration() -> None:
    directives = [
        "#DW Proposal action=error message=TEST_FATAL_ERROR severity=Fatal",
        "#DW Teardown action=wait",
    ]
    validate_directives(directives, TESTER)
    assert driver_registrations(directives, TESTER) == [("tester", 0, "Proposal"), ("tester", 1, "Teardown")]


@pytest.mark.parametrize(
    "value",
    [
        "$(rm_-rf_/)",
        "`id`",
        "';DROP_TABLE_x;--",
        '"quoted"',
        "$HOME",
        "a|b&&c>d<e",
        "*?[]{}~!#",
        "\\n\\t",
        "x=y=z",
        "%s%d%v",
    ],
)
def test_shell_metacharacters_are_plain_strings(value: str) -> None:
    directive = f"#DW Setup action=wait message={value}"
    assert error_of([directive], TESTER) is None
    assert parse_directive(directive)[1]["message"] == value
    strict = [rule("Setup", RuleDef(key="message", type="string", pattern=r"^[A-Za-z_]+$"))]
    assert error_of([f"#DW Setup message={value}"], strict) == f"argument 'message' invalid string '{value}'"


def test_quotes_do_not_group_words() -> None:
    assert parse_directive('#DW Setup action=wait message="two words"')[1] == {
        "action": "wait",
        "message": '"two',
        'words"': None,
    }
    assert error_of(['#DW Setup action=wait message="two words"'], TESTER) == "unsupported argument 'words\"'"


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------

_any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
_directive_like = st.builds(
    lambda cmd, parts: " ".join(["#DW", cmd, *parts]),
    st.sampled_from([*STATES, "Bogus", "=", ""]),
    st.lists(st.text(alphabet="ab=, \t$'\"\\action", max_size=12), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(_any_text)
def test_parse_only_raises_directive_error(text: str) -> None:
    try:
        command, args = parse_directive(text)
    except DirectiveError:
        return
    assert command and "=" not in "".join(args)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_any_text, _directive_like), max_size=4))
def test_validate_only_raises_directive_error(directives: list[str]) -> None:
    try:
        validate_directives(directives, TESTER)
    except DirectiveError as exc:
        assert str(exc)


@settings(max_examples=300, deadline=None)
@given(_any_text, st.text(alphabet="ab.*+?|()[]{}^$\\-:,0123456789dswpPLQECzAbBx<>=!", max_size=12))
def test_arbitrary_patterns_only_raise_directive_error(value: str, pattern: str) -> None:
    rules = [rule("r", RuleDef(key="v", type="string", pattern=pattern))]
    token = "".join(value.split()) or "x"
    try:
        validate_directives([f"#DW r v={token}"], rules)
    except DirectiveError as exc:
        assert str(exc).startswith(("invalid regular expression", "argument 'v' invalid string"))


_value_chars = st.characters(
    codec="utf-8", exclude_characters="\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(STATES), st.text(alphabet=_value_chars, min_size=1, max_size=30))
def test_tester_accepts_any_whitespace_free_action(state: str, value: str) -> None:
    value = "".join(ch for ch in value if not ("\u2000" <= ch <= "\u200a")) or "x"
    if value == EMPTY_VALUE:
        return
    directive = f"#DW {state} action={value}"
    validate_directives([directive], TESTER)
    assert driver_registrations([directive], TESTER) == [("tester", 0, state)]


# Simple patterns where Go and Python agree exactly, to cross-check RE2 against Python's re.
_simple_atom = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", "(a|b)", "(?:ab)", "\\.", "x"])
_simple_pattern = st.lists(
    st.tuples(_simple_atom, st.sampled_from(["", "*", "+", "?", "{1,2}", "*?"])), min_size=1, max_size=5
).map(lambda parts: "".join(a + q for a, q in parts))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["", "^"]),
    _simple_pattern,
    st.sampled_from(["", "$"]),
    st.text(alphabet="abx.", max_size=8),
)
def test_agrees_with_python_re_on_common_subset(pre: str, body: str, post: str, value: str) -> None:
    pattern = pre + body + post
    rules = [rule("r", RuleDef(key="v", type="string", pattern=pattern))]
    token = value or "x"
    expected = re.search(pattern, token) is not None
    assert (error_of([f"#DW r v={token}"], rules) is None) is expected


def test_rules_from_stored_objects_are_converted_again_when_an_object_changes() -> None:
    """Stored objects (uid and resourceVersion) are converted once per version, not per call."""

    def stored(version: str, command: str) -> dict[str, Any]:
        return {
            "metadata": {"name": "r", "namespace": "dws-system", "uid": "u-1", "resourceVersion": version},
            "spec": [{"command": command, "watchStates": "Proposal"}],
        }

    first = rules_from_objects([stored("5", "jobdw")])
    again = rules_from_objects([stored("5", "jobdw")])
    assert again == first and again is not first  # each caller gets its own list
    again.clear()
    assert [r.command for r in rules_from_objects([stored("5", "jobdw")])] == ["jobdw"]
    assert [r.command for r in rules_from_objects([stored("6", "persistentdw")])] == ["persistentdw"]
    assert rules_from_objects([stored("6", "persistentdw")], namespace="elsewhere") == []
    unversioned = {"metadata": {"name": "r"}, "spec": [{"command": "one"}]}
    assert [r.command for r in rules_from_objects([unversioned])] == ["one"]
    unversioned["spec"] = [{"command": "two"}]
    assert [r.command for r in rules_from_objects([unversioned])] == ["two"]
