"""Slurm's resource texts read as Slurm reads them: TRES, billing weights, arrays and time limits."""

from __future__ import annotations

from decimal import Decimal

import pytest

from slurmlink.bank.tres import (
    INFINITE,
    TresError,
    array_task_count,
    billing_value,
    format_time_limit,
    gres_counts,
    parse_billing_weights,
    parse_time_limit,
    parse_tres,
    slurm_billing,
)

D = Decimal


def test_alloc_tres_in_base_units() -> None:
    assert parse_tres("cpu=4,mem=8G,node=1,billing=4,gres/gpu=2") == {
        "cpu": 4,
        "mem": 8192,
        "node": 1,
        "billing": 4,
        "gres/gpu": 2,
    }


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("mem=1500M", D(1500)),
        ("mem=1500", D(1500)),
        ("mem=2T", D(2 * 1024 * 1024)),
        ("mem=512K", D("0.5")),
        ("mem=7.50G", D(7680)),
        ("MEM=1g", D(1024)),
    ],
)
def test_memory_becomes_mib(text: str, mib: Decimal) -> None:
    assert parse_tres(text)["mem"] == mib


def test_names_are_case_insensitive_and_units_follow_each_tres_base() -> None:
    tres = parse_tres("CPU=2,GRES/gpu:tesla=1,bb/datawarp=1G,fs/disk=1K")
    assert tres == {"cpu": 2, "gres/gpu:tesla": 1, "bb/datawarp": 1024, "fs/disk": 1024}


@pytest.mark.parametrize("text", ["", None, " , "])
def test_no_tres(text: str | None) -> None:
    assert parse_tres(text) == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("cpu", "'cpu' is not NAME=VALUE"),
        ("cpu=", "'cpu=' is not NAME=VALUE"),
        ("cpu=four", "cpu: 'four' is not a non-negative number"),
        ("cpu=-1", "cpu: '-1' is not a non-negative number"),
        ("mem=8X", "unit 'X' of mem is not one of K, M, G, T, P"),
        ("cpu=1,CPU=2", "cpu is given twice"),
    ],
)
def test_bad_tres_names_the_item(text: str, words: str) -> None:
    with pytest.raises(TresError) as caught:
        parse_tres(text)
    assert words in str(caught.value)


def test_billing_weights_per_base_unit() -> None:
    weights = parse_billing_weights("CPU=1.0,Mem=0.25G,GRES/gpu=2.0")
    assert weights == {"cpu": D(1), "mem": D("0.25") / 1024, "gres/gpu": D(2)}


@pytest.mark.parametrize(
    ("text", "weight"),
    [
        ("mem=0.25", D("0.25")),  # per MiB as written
        ("Mem=1M", D(1)),  # the base unit: unchanged
        ("Mem=1K", D(1)),  # below the base unit: Slurm leaves it as written
        ("Mem=1T", D(1) / 1024 / 1024),
        ("bb/datawarp=2G", D(2) / 1024),
        ("CPU=1K", D(1) / 1024),  # CPUs have no base unit: K is a thousand-and-twenty-four
    ],
)
def test_weight_units_as_slurm_converts_them(text: str, weight: Decimal) -> None:
    assert next(iter(parse_billing_weights(text).values())) == weight


@pytest.mark.parametrize(
    ("text", "words"),
    [("CPU", "'CPU' is not NAME=VALUE"), ("CPU=x", "cpu: 'x' is not"), ("Mem=1Q", "unit 'Q' of mem")],
)
def test_bad_weights(text: str, words: str) -> None:
    with pytest.raises(TresError) as caught:
        parse_billing_weights(text)
    assert words in str(caught.value)


def test_billing_is_the_weighted_sum() -> None:
    # slurm.conf(5)'s example: 1 CPU and 8 GB under CPU=1.0,Mem=0.25G,GRES/gpu=2.0,license/licA=1.5.
    weights = parse_billing_weights("CPU=1.0,Mem=0.25G,GRES/gpu=2.0,license/licA=1.5")
    job = parse_tres("cpu=1,mem=8G,node=1,billing=99")
    assert billing_value(job, weights) == D(3)  # 1*1.0 + 8*0.25; the node and billing TRES weigh nothing
    with_license = {**job, "license/lica": D(1)}
    assert billing_value(with_license, weights) == D("4.5")
    assert slurm_billing(with_license, weights) == 4  # Slurm stores billing truncated


def test_billing_with_max_tres_takes_the_largest_node_tres_plus_global() -> None:
    weights = parse_billing_weights("CPU=1.0,Mem=0.25G,GRES/gpu=2.0,license/licA=1.5")
    job = parse_tres("cpu=1,mem=8G")
    assert billing_value(job, weights, max_tres=True) == D(2)  # MAX(1, 8*0.25, 0) + 0
    gpu_job = parse_tres("cpu=4,mem=8G,gres/gpu=3,license/licA=2")
    # MAX(4*1.0, 8*0.25, 3*2.0) = 6, plus the license 2*1.5 = 3
    assert billing_value(gpu_job, weights, max_tres=True) == D(9)
    assert billing_value(gpu_job, weights) == D(4) + D(2) + D(6) + D(3)


def test_billing_without_weights_is_the_cpu_count() -> None:
    assert billing_value(parse_tres("cpu=12,mem=64G"), None) == D(12)
    assert slurm_billing(parse_tres("cpu=12,mem=64G"), {}) == 12


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("gres:gpu:2", {"gres/gpu": 2}),
        ("gres/gpu:2", {"gres/gpu": 2}),
        ("gres:gpu", {"gres/gpu": 1}),
        ("gpu:4", {"gres/gpu": 4}),
        ("gres:gpu:a100:2", {"gres/gpu": 2, "gres/gpu:a100": 2}),
        ("gres:gpu:1,gres:nic:2", {"gres/gpu": 1, "gres/nic": 2}),
        (None, {}),
    ],
)
def test_gres_requests(text: str | None, counts: dict[str, int]) -> None:
    assert gres_counts(text) == counts


@pytest.mark.parametrize("text", ["gres:", "gres::2", "gres:gpu:a:b:2"])
def test_bad_gres_requests(text: str) -> None:
    with pytest.raises(TresError, match="gres:"):
        gres_counts(text)


@pytest.mark.parametrize(
    ("expression", "tasks"),
    [
        ("1-100:2%5", 50),
        ("1-100:2", 50),
        ("1,3,5-7", 5),
        ("0-15:4", 4),
        ("7", 1),
        ("0-9%2", 10),
        ("1-5,3-7", 7),  # an index listed twice is one task
        ("", 1),
        (None, 1),
    ],
)
def test_array_task_count(expression: str | None, tasks: int) -> None:
    assert array_task_count(expression) == tasks


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("1-x", "'1-x' in '1-x' is not N, N-M or N-M:STEP"),
        ("5-1", "runs backwards"),
        ("1-9:0", "step 0"),
        ("1-9%x", "throttle"),
    ],
)
def test_bad_array_expressions(expression: str, words: str) -> None:
    with pytest.raises(TresError) as caught:
        array_task_count(expression)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("30", 30),
        (30, 30),
        ("30:00", 30),
        ("30:01", 31),  # seconds round up, as Slurm's time_str2mins does
        ("1:00:00", 60),
        ("2-00:00:00", 2880),
        ("2-0", 2880),
        ("1-2:30", 24 * 60 + 150),
        ("1-02:03:04", 24 * 60 + 123 + 1),
        ("UNLIMITED", INFINITE),
        ("infinite", INFINITE),
        ("-1", INFINITE),
        (-1, INFINITE),
        (INFINITE, INFINITE),
    ],
)
def test_time_limits(text: str | int, minutes: int) -> None:
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "a-1", -5, True])
def test_bad_time_limits(text: str | int) -> None:
    with pytest.raises(TresError, match="time limit"):
        parse_time_limit(text)


def test_time_limit_storage_form() -> None:
    assert format_time_limit(INFINITE) == "UNLIMITED"
    assert format_time_limit(90) == 90
