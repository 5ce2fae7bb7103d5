"""The bank's rate card and cost estimator: the seed's prices reproduced, and every rule beyond them.

Expected amounts are worked out by hand in each test, never by calling the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from slurmlink.bank.estimate import (
    ChargeError,
    EstimateError,
    JobRequest,
    RunUsage,
    charge,
    from_job_desc,
    quote,
)
from slurmlink.bank.ratecard import DEFAULT_END_STATE_POLICY, RateCard, RateCardError, load_rate_card
from slurmlink.bank.tres import INFINITE, parse_tres

D = Decimal
SEED_EXAMPLE = Path(__file__).parent / "data" / "bank-config.toml.example"

CARD = textwrap.dedent(
    """
    version = "2024-07-01"
    formula = "cpu_hours"
    min_charge = "0.05"
    free_qos = ["scavenger"]
    exempt_accounts = ["Staff"]

    [rounding]
    places = 2
    mode = "ROUND_HALF_UP"

    [qos]
    normal = 1.0
    premium = 2.0
    low = 0.5

    [policy]
    unknown_partition = "reject"

    [policy.end_state]
    PREEMPTED = "refund"

    [partition.debug]
    price = 0.5
    default = true
    default_time = 30
    max_time = "1:00:00"
    cpus_per_node = 8

    [partition.compute]
    price = "1.00"
    default_time = "2:00:00"
    max_time = "2-00:00:00"
    cpus_per_node = 32
    total_nodes = 10
    def_mem_per_cpu = 2048

    [partition.gpu]
    price = 2.67
    weights = "CPU=1.0,Mem=0.25G,GRES/gpu=2.0"
    max_time = "UNLIMITED"
    total_cpus = 160
    total_nodes = 4

    [partition.free]
    price = 0
    max_time = 60
    """
)


def card_from(text: str) -> RateCard:
    return load_rate_card(textwrap.dedent(text))


def own_card(**changes: object) -> RateCard:
    return dataclasses.replace(load_rate_card(CARD), **changes)  # type: ignore[arg-type]


# --- the seed's bank-config.toml -----------------------------------------------------------------


def test_seed_file_is_a_cpu_hours_card_with_its_prices() -> None:
    card = load_rate_card(SEED_EXAMPLE)
    assert card.formula == "cpu_hours"
    assert len(card.partitions) == 14
    assert card.partitions["savio2_gpu"].price == D("2.67")
    assert card.partitions["normal"].price == D(1)
    assert card.partitions["debug"].price == D("0.5")
    assert card.partitions["savio2_knl"].price == D("0.40")
    assert (card.rounding_places, card.rounding_mode) == (2, "ROUND_HALF_UP")
    assert card.unknown_partition == "reject"
    assert dict(card.end_state_policy) == dict(DEFAULT_END_STATE_POLICY)


def test_seed_version_is_derived_from_the_file_and_stable() -> None:
    text = SEED_EXAMPLE.read_text(encoding="utf-8")
    expected = "seed-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    assert load_rate_card(SEED_EXAMPLE).version == expected
    assert load_rate_card(SEED_EXAMPLE).version == load_rate_card(text).version
    changed = text.replace("debug = 0.5", "debug = 0.6")
    assert load_rate_card(changed).version != expected


def test_seed_file_may_name_its_version_and_old_qos_multipliers() -> None:
    card = card_from(
        """
        version = "brc-2019"
        [PartitionPrice]
        savio = 0.75
        [QosMultiplier]
        normal = 1
        lowprio = 0
        """
    )
    assert card.version == "brc-2019"
    assert card.qos_factor("lowprio") == D(0)
    assert card.qos_factor("LowPrio") == D(0)
    assert card.qos_factor("other") == D(1)
    free = quote(card, JobRequest(partition="savio", num_tasks=4, time_limit=60, qos="lowprio"))
    assert free.amount == D("0.00")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            '[PartitionPrice]\nsavio = "abc"',
            "PartitionPrice.savio: 'abc' is not a decimal number; write e.g. 1.00",
        ),
        (
            "[PartitionPrice]\nsavio = -1",
            "PartitionPrice.savio: -1 is negative; prices and factors are 0 or more",
        ),
        ("[PartitionPrice]\nsavio = true", "PartitionPrice.savio: True is not a decimal number"),
        ("[PartitionPrice]\n", "PartitionPrice: no partitions; list each partition's CPU-hour price"),
        (
            "[PartitionPrice]\nsavio = 1\n[Prices]\nx = 1",
            "Prices: unknown key; accepted here: PartitionPrice, QosMultiplier, Enable, API, version",
        ),
        (
            '[PartitionPrice]\nsavio = 1\n[QosMultiplier]\nlow = "x"',
            "QosMultiplier.low: 'x' is not a decimal",
        ),
    ],
)
def test_seed_errors_name_file_key_and_fix(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "bank-config.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(RateCardError) as caught:
        load_rate_card(path)
    assert str(caught.value).startswith(f"{path}: {words}")


# --- the seed's costs, reproduced ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("partition", "tasks", "cpus_per_task", "minutes", "amount"),
    [
        ("savio2_gpu", 4, None, 90, "16.02"),  # 2.67 x 4 x 1.5 h = 16.02
        ("savio2_gpu", 1, 4, 90, "16.02"),  # the same CPUs as --cpus-per-task
        ("debug", 3, None, 20, "0.50"),  # 0.5 x 3 x 1/3 h = 0.5
        ("savio", 1, 2, 45, "1.13"),  # 0.75 x 2 x 0.75 h = 1.125, half-up
        ("savio", 1, 1, 2, "0.03"),  # 0.75 x 1 x 1/30 h = 0.025 exactly, half-up
        ("normal", 1, 1, 1, "0.02"),  # 1 x 1 x 1/60 h = 0.01666...
        ("savio2_knl", 64, 1, 2880, "1228.80"),  # 0.40 x 64 x 48 h
        ("savio3_bigmem", 2, 16, 600, "854.40"),  # 2.67 x 32 x 10 h
    ],
)
def test_seed_costs_at_submit(
    partition: str, tasks: int | None, cpus_per_task: int | None, minutes: int, amount: str
) -> None:
    card = load_rate_card(SEED_EXAMPLE)
    request = JobRequest(
        partition=partition, num_tasks=tasks, cpus_per_task=cpus_per_task, time_limit=minutes
    )
    result = quote(card, request)
    assert result.amount == D(amount)
    assert str(result.amount) == amount  # always two places
    assert result.tasks == 1
    assert result.partition == partition


@pytest.mark.parametrize(
    ("partition", "tres", "elapsed_s", "amount"),
    [
        ("savio2_gpu", "cpu=4,mem=8G,node=1,billing=4", 5400, "16.02"),
        ("debug", "cpu=3,node=1", 1200, "0.50"),
        ("savio2_htc", "cpu=1,node=1", 37, "0.01"),  # 1.20 x 37/3600 = 0.01233...
        ("savio", "cpu=2,node=1", 30, "0.01"),  # 0.75 x 2 x 30/3600 = 0.0125 -> 0.01
        ("savio", "cpu=2,node=1", 54, "0.02"),  # 0.75 x 2 x 54/3600 = 0.0225 -> 0.02
        ("savio", "cpu=2,node=1", 60, "0.03"),  # 0.75 x 2 x 60/3600 = 0.025 -> 0.03
    ],
)
def test_seed_costs_at_settle(partition: str, tres: str, elapsed_s: int, amount: str) -> None:
    card = load_rate_card(SEED_EXAMPLE)
    result = charge(card, RunUsage(partition, None, parse_tres(tres), elapsed_s, "COMPLETED"))
    assert result.amount == D(amount)
    assert result.policy == "charge"
    assert result.inputs["price"] == str(card.partitions[partition].price)


# --- slurmlink's own format ----------------------------------------------------------------------


def test_own_format_reads_every_setting() -> None:
    card = load_rate_card(CARD)
    assert card.version == "2024-07-01"
    assert card.min_charge == D("0.05")
    assert card.free_qos == {"scavenger"}
    assert card.exempt_accounts == {"staff"}
    assert card.qos_factor("premium") == D("2.0")
    assert card.policy_for("PREEMPTED") == "refund"
    assert card.policy_for("NODE_FAIL") == "refund"
    assert card.policy_for("CANCELLED") == "charge_elapsed"
    assert card.policy_for("DEADLINE") == "charge"
    debug = card.partitions["debug"]
    assert (debug.default, debug.default_time, debug.max_time, debug.cpus_per_node) == (True, 30, 60, 8)
    compute = card.partitions["compute"]
    assert (compute.default_time, compute.max_time, compute.def_mem_per_cpu) == (120, 2880, 2048)
    gpu = card.partitions["gpu"]
    assert gpu.max_time == INFINITE
    assert gpu.node_cpus() == 40
    assert gpu.weights == {"cpu": D(1), "mem": D("0.25") / 1024, "gres/gpu": D(2)}
    assert card.slurm_default_partition() == debug


def test_spec_style_inline_card_loads() -> None:
    card = card_from(
        """
        version = "2024-07-01"
        formula = "tres_billing"          # cpu_hours | node_hours | tres_billing | slurm_billing
        rounding = { places = 2, mode = "ROUND_HALF_UP" }
        partition = { savio3 = { multiplier = 1.0, weights = "CPU=1.0,Mem=0.25G,GRES/gpu=2.0" }, savio3_gpu = { multiplier = 1.0, weights = "CPU=1.0,GRES/gpu=4.0" } }
        qos = { normal = 1.0, premium = 2.0, low = 0.5, scavenger = 0.0 }
        policy = { unknown_partition = "reject" }
        """  # noqa: E501
    )
    assert card.formula == "tres_billing"
    assert card.partitions["savio3_gpu"].price == D("1.0")
    assert card.qos_factor("scavenger") == D(0)


def test_failure_policies_are_not_rate_card_settings() -> None:
    with pytest.raises(RateCardError) as caught:
        card_from(
            """
            formula = "cpu_hours"
            partition = { a = { price = 1 } }
            policy = { unknown_partition = "reject", on_stale_cache = "allow_if_positive", overdraft = 0 }
            """
        )
    message = str(caught.value)
    assert "policy.on_stale_cache" in message
    assert "failure policy of the bank's configuration; remove it here" in message


def test_own_format_without_version_gets_a_stable_content_version() -> None:
    text = 'formula = "node_hours"\n[partition.a]\nprice = 3\n'
    version = load_rate_card(text).version
    assert version == "card-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    assert load_rate_card(text).version == version


BAD_CARDS = [
    (
        'formula = "gpu_hours"\n[partition.a]\nprice = 1',
        "formula: 'gpu_hours' is not accepted; write one of "
        "cpu_hours, node_hours, tres_billing, slurm_billing",
    ),
    ("[partition.a]\nprice = 1", "formula: missing; write one of cpu_hours, node_hours"),
    ('formula = "cpu_hours"', "partition: no partitions; add a [partition.NAME] table with a price"),
    ('formula = "cpu_hours"\n[partition.a]\nprice = -2', "partition.a.price: -2 is negative"),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = "1,5"',
        "partition.a.price: '1,5' is not a decimal number",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = "NaN"',
        "partition.a.price: 'NaN' is not a finite number",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\ncost = 1',
        "partition.a.cost: unknown key; accepted here: price,",
    ),
    ('formula = "cpu_hours"\n[partition.a]\nmax_time = 60', "partition.a.price: missing; write the price"),
    (
        'formula = "cpu_hours"\n[partition."a,b"]\nprice = 1',
        "partition.a,b: a Slurm partition name has no commas or spaces; list one per table",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\nmultiplier = 1',
        "partition.a: has both price and multiplier",
    ),
    (
        'formula = "cpu_hours"\nprices = 1\n[partition.a]\nprice = 1',
        "prices: unknown key; accepted here: version,",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\nweights = "CPU=x"',
        "partition.a.weights: cpu: 'x' is not a non-negative number",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\nweights = 2',
        "partition.a.weights: write Slurm's TRESBillingWeights text",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\nmax_time = "1h"',
        "partition.a.max_time: '1h' is not a time limit; write minutes (> 0), D-HH:MM:SS or \"UNLIMITED\"",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\ndefault_time = 0',
        "partition.a.default_time: 0 is not a time limit",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\ncpus_per_node = 0',
        "partition.a.cpus_per_node: 0 is not a whole number of at least 1",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\nmax_tres = "yes"',
        "partition.a.max_tres: 'yes' is not true or false",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\ndefault = true\n'
        "[partition.b]\nprice = 1\ndefault = true",
        "partition: more than one partition has default = true",
    ),
    (
        'formula = "cpu_hours"\n[rounding]\nmode = "ROUND_NEAREST"\n[partition.a]\nprice = 1',
        "rounding.mode: 'ROUND_NEAREST' is not accepted; write one of ROUND_HALF_UP,",
    ),
    (
        'formula = "cpu_hours"\n[rounding]\nplaces = -1\n[partition.a]\nprice = 1',
        "rounding.places: -1 is not a whole number of at least 0",
    ),
    (
        'formula = "cpu_hours"\nmin_charge = "x"\n[partition.a]\nprice = 1',
        "min_charge: 'x' is not a decimal number; write e.g. 0.01",
    ),
    (
        'formula = "cpu_hours"\ncharge_granularity_s = 0\n[partition.a]\nprice = 1',
        "charge_granularity_s: 0 is not a whole number of at least 1",
    ),
    (
        'formula = "cpu_hours"\nfree_qos = "scavenger"\n[partition.a]\nprice = 1',
        "free_qos: 'scavenger' is not a list of names",
    ),
    (
        'formula = "cpu_hours"\n[qos]\npremium = "double"\n[partition.a]\nprice = 1',
        "qos.premium: 'double' is not a decimal number",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\n[policy]\nunknown_partition = "free"',
        "policy.unknown_partition: 'free' is not accepted; write one of reject, default_rate",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\n[policy]\nunknown_partition = "default_rate"',
        'policy.default_partition: missing; unknown_partition = "default_rate" prices unknown partitions',
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\n[policy]\ndefault_partition = "b"',
        "policy.default_partition: 'b' is not a partition of this card; name one of a",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\n[policy.end_state]\nNODE_FAILURE = "refund"',
        "policy.end_state.NODE_FAILURE: unknown end state; name one of BOOT_FAIL,",
    ),
    (
        'formula = "cpu_hours"\n[partition.a]\nprice = 1\n[policy.end_state]\nTIMEOUT = "forgive"',
        "policy.end_state.TIMEOUT: 'forgive' is not accepted; write one of charge, refund, charge_elapsed",
    ),
]


@pytest.mark.parametrize(("body", "words"), BAD_CARDS)
def test_card_errors_name_file_key_and_what_is_accepted(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "site-rates.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(RateCardError) as caught:
        load_rate_card(path)
    assert str(caught.value).startswith(f"{path}: {words}")


def test_unreadable_and_malformed_sources(tmp_path: Path) -> None:
    with pytest.raises(RateCardError, match="cannot read the rate card"):
        load_rate_card(tmp_path / "missing.toml")
    with pytest.raises(RateCardError, match=r"^rates: not valid TOML: .*pass a pathlib.Path"):
        load_rate_card("/etc/slurm/bank-config.toml", name="rates")


def test_card_is_immutable() -> None:
    card = load_rate_card(CARD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.version = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        card.partitions["new"] = card.partitions["debug"]  # type: ignore[index]
    with pytest.raises(TypeError):
        card.qos_factors["premium"] = D(0)  # type: ignore[index]


@pytest.mark.parametrize("source", [CARD, SEED_EXAMPLE])
def test_json_round_trip_keeps_the_version_and_decimal_strings(source: str | Path) -> None:
    card = load_rate_card(source)
    text = card.to_json()
    assert RateCard.from_json(text) == card
    assert RateCard.from_json(text).to_json() == text
    data = json.loads(text)
    assert data["version"] == card.version
    for entry in data["partition"].values():
        assert isinstance(entry["price"], str)
    assert isinstance(data["min_charge"], str)


def test_json_round_trip_keeps_partition_facts() -> None:
    card = load_rate_card(CARD)
    data = json.loads(card.to_json())
    assert data["partition"]["debug"] == {
        "price": "0.5",
        "default": True,
        "default_time": 30,
        "max_time": 60,
        "cpus_per_node": 8,
    }
    assert data["partition"]["gpu"]["weights"] == "CPU=1.0,Mem=0.25G,GRES/gpu=2.0"
    assert RateCard.from_json(card.to_json()).partitions["gpu"].weights == card.partitions["gpu"].weights


def test_stored_json_must_name_its_version_and_be_an_object() -> None:
    data = json.loads(load_rate_card(CARD).to_json())
    del data["version"]
    with pytest.raises(RateCardError, match="version: missing; a stored card always names its version"):
        RateCard.from_json(json.dumps(data))
    with pytest.raises(RateCardError, match="a rate card is a JSON object"):
        RateCard.from_json("[]")
    with pytest.raises(RateCardError, match="not JSON"):
        RateCard.from_json("{")
    data = json.loads(load_rate_card(CARD).to_json())
    data["partition"]["debug"]["price"] = "-1"
    with pytest.raises(RateCardError, match=r"^ledger: partition.debug.price: -1 is negative"):
        RateCard.from_json(json.dumps(data), source="ledger")


def test_rounding_mode_is_the_cards() -> None:
    text = 'formula = "cpu_hours"\n[rounding]\nmode = "ROUND_HALF_EVEN"\n[partition.savio]\nprice = 0.75\n'
    even = load_rate_card(text)
    up = load_rate_card(text.replace("ROUND_HALF_EVEN", "ROUND_HALF_UP"))
    request = JobRequest(partition="savio", cpus_per_task=2, time_limit=45)  # 0.75 x 2 x 0.75 h = 1.125
    assert quote(even, request).amount == D("1.12")
    assert quote(up, request).amount == D("1.13")
    whole = load_rate_card(text.replace('mode = "ROUND_HALF_EVEN"', "places = 0"))
    assert str(quote(whole, request).amount) == "1"


# --- estimates: what the user left out ------------------------------------------------------------


def test_no_tasks_cpus_or_time_is_estimated_from_partition_defaults_never_zero() -> None:
    result = quote(own_card(min_charge=D(0)), JobRequest(partition="compute"))
    # 1 CPU (never 0) x default_time 2 h x 1.00 = 2.00
    assert result.amount == D("2.00")
    assert result.inputs["cpus"] == 1
    assert result.inputs["time_limit_min"] == 120
    assert {"num_tasks", "cpus_per_task", "default_time"} <= set(result.inputs["defaults_used"])


def test_no_default_time_uses_max_time() -> None:
    card = card_from('formula = "cpu_hours"\n[partition.a]\nprice = 2\nmax_time = "3:00:00"\n')
    result = quote(card, JobRequest(partition="a", num_tasks=2))
    assert result.amount == D("12.00")  # 2 x 2 CPUs x 3 h
    assert "max_time" in result.inputs["defaults_used"]


@pytest.mark.parametrize("limit", [INFINITE, 0])
def test_unlimited_request_is_priced_at_the_partition_maximum(limit: int) -> None:
    result = quote(own_card(), JobRequest(partition="compute", num_tasks=1, time_limit=limit))
    assert result.amount == D("48.00")  # 1 CPU x 48 h x 1.00
    assert result.inputs["time_limit_min"] == 2880


@pytest.mark.parametrize("limit", [None, INFINITE])
def test_unlimited_time_without_a_maximum_is_refused(limit: int | None) -> None:
    seed = load_rate_card(SEED_EXAMPLE)
    with pytest.raises(EstimateError) as caught:
        quote(seed, JobRequest(partition="savio", num_tasks=1, time_limit=limit))
    message = str(caught.value)
    assert "no time limit" in message
    assert "partition savio has no default_time or max_time" in message
    assert seed.version in message
    assert "submit with --time" in message


@pytest.mark.parametrize(
    ("request_", "cpus"),
    [
        (JobRequest(partition="compute", num_tasks=4, cpus_per_task=2, time_limit=60), 8),
        (JobRequest(partition="compute", min_cpus=6, time_limit=60), 6),
        (JobRequest(partition="compute", min_nodes=2, ntasks_per_node=3, cpus_per_task=2, time_limit=60), 12),
        (JobRequest(partition="compute", min_nodes=3, time_limit=60), 3),
        (JobRequest(partition="compute", num_tasks=2, min_cpus=5, time_limit=60), 5),
        (JobRequest(partition="compute", time_limit=60), 1),
    ],
)
def test_cpu_count_is_the_largest_of_the_request_forms(request_: JobRequest, cpus: int) -> None:
    result = quote(own_card(min_charge=D(0)), request_)
    assert result.inputs["cpus"] == cpus
    assert result.amount == D(cpus).quantize(D("0.01"))  # 1.00 per CPU-hour, 1 h


def test_exclusive_job_pays_for_whole_nodes() -> None:
    card = own_card()
    request = JobRequest(partition="compute", min_nodes=2, num_tasks=2, exclusive=True, time_limit=60)
    result = quote(card, request)
    assert result.inputs["cpus"] == 64  # 2 nodes x 32 CPUs
    assert result.amount == D("64.00")
    # 40 CPUs need 2 nodes of 32: 64 CPUs
    big = quote(card, JobRequest(partition="compute", num_tasks=40, exclusive=True, time_limit=60))
    assert (big.inputs["nodes"], big.inputs["cpus"]) == (2, 64)


def test_exclusive_uses_total_cpus_over_total_nodes() -> None:
    card = own_card(formula="cpu_hours")
    result = quote(card, JobRequest(partition="gpu", exclusive=True, time_limit=60))
    assert result.inputs["cpus"] == 40  # 160 CPUs / 4 nodes
    assert result.amount == D("106.80")  # 2.67 x 40 x 1 h


def test_exclusive_without_node_facts_is_flagged_not_guessed() -> None:
    seed = load_rate_card(SEED_EXAMPLE)
    result = quote(seed, JobRequest(partition="savio", num_tasks=2, exclusive=True, time_limit=60))
    assert result.inputs["exclusive_cpus_unknown"] is True
    assert result.amount == D("1.50")


def test_multi_partition_is_priced_at_the_dearest() -> None:
    seed = load_rate_card(SEED_EXAMPLE)
    result = quote(seed, JobRequest(partition="savio,savio2_gpu,debug", num_tasks=2, time_limit=60))
    assert result.partition == "savio2_gpu"
    assert result.amount == D("5.34")  # 2.67 x 2 x 1 h
    assert result.inputs["partitions_considered"] == {"savio": "1.50", "savio2_gpu": "5.34", "debug": "1.00"}


def test_array_is_priced_per_task() -> None:
    seed = load_rate_card(SEED_EXAMPLE)
    result = quote(seed, JobRequest(partition="debug", num_tasks=3, time_limit=20, array_inx="1-100:2%5"))
    assert result.tasks == 50
    assert result.per_task == D("0.50")
    assert result.amount == D("25.00")  # 50 x 0.50
    assert quote(
        seed, JobRequest(partition="debug", num_tasks=1, time_limit=60, array_inx="1,3,5-7")
    ).amount == (
        D("2.50")  # 5 x 0.5
    )


def test_bad_array_expression_is_an_estimate_error() -> None:
    with pytest.raises(EstimateError, match="cannot count the job array's tasks: array index '1-x'"):
        quote(load_rate_card(SEED_EXAMPLE), JobRequest(partition="debug", time_limit=5, array_inx="1-x"))


@pytest.mark.parametrize("partition", ["nosuch", "debug,nosuch", "savio2_gpu,nosuch"])
def test_unknown_partition_is_rejected_naming_partition_and_card(partition: str) -> None:
    seed = load_rate_card(SEED_EXAMPLE)
    with pytest.raises(EstimateError) as caught:
        quote(seed, JobRequest(partition=partition, num_tasks=1, time_limit=60))
    message = str(caught.value)
    assert f"partition nosuch has no price in rate card {seed.version}" in message
    assert "add [partition.nosuch] to the card or use one of: debug, normal, savio" in message


def test_unknown_partition_at_the_default_rate_when_the_card_says_so() -> None:
    card = own_card(unknown_partition="default_rate", default_partition="compute")
    result = quote(card, JobRequest(partition="nosuch", num_tasks=3, time_limit=60))
    assert result.amount == D("3.00")  # compute's 1.00 x 3 x 1 h
    assert result.inputs["partition"] == "nosuch"
    assert result.inputs["priced_as"] == "compute"


def test_no_partition_uses_the_cards_slurm_default_or_is_refused() -> None:
    result = quote(own_card(), JobRequest(num_tasks=2, time_limit=60))
    assert result.partition == "debug"
    assert result.amount == D("1.00")  # 0.5 x 2 x 1 h
    assert "partition" in result.inputs["defaults_used"]
    with pytest.raises(
        EstimateError, match=r"names no partition and rate card .* marks none as Slurm's default"
    ):
        quote(load_rate_card(SEED_EXAMPLE), JobRequest(num_tasks=2, time_limit=60))


def test_free_qos_and_exempt_accounts_cost_nothing_with_the_reason() -> None:
    card = own_card()
    free = quote(card, JobRequest(partition="compute", num_tasks=8, time_limit=60, qos="Scavenger"))
    assert (free.amount, free.per_task) == (D("0.00"), D("0.00"))
    assert free.inputs["reason"] == "QOS Scavenger is free under rate card 2024-07-01"
    exempt = quote(card, JobRequest(partition="nosuch", num_tasks=8, time_limit=60, account="staff"))
    assert exempt.amount == D("0.00")
    assert exempt.inputs["reason"] == "account staff is exempt under rate card 2024-07-01"


def test_qos_factor_scales_the_price() -> None:
    card = own_card()
    plain = quote(card, JobRequest(partition="compute", num_tasks=3, time_limit=60))
    premium = quote(card, JobRequest(partition="compute", num_tasks=3, time_limit=60, qos="premium"))
    low = quote(card, JobRequest(partition="compute", num_tasks=3, time_limit=60, qos="low"))
    assert (plain.amount, premium.amount, low.amount) == (D("3.00"), D("6.00"), D("1.50"))
    assert premium.inputs["qos_factor"] == "2.0"


def test_min_charge_raises_small_quotes_but_not_free_ones() -> None:
    card = own_card()  # min_charge 0.05
    small = quote(card, JobRequest(partition="debug", num_tasks=1, time_limit=1))  # 0.5/60 = 0.0083
    assert small.amount == D("0.05")
    assert small.inputs["min_charge_applied"] is True
    assert quote(card, JobRequest(partition="free", num_tasks=4, time_limit=60)).amount == D("0.00")


def test_granularity_rounds_the_priced_time_up() -> None:
    card = own_card(charge_granularity_s=3600, min_charge=D(0))
    result = quote(card, JobRequest(partition="compute", num_tasks=2, time_limit=61))
    assert result.inputs["charged_s"] == 7200
    assert result.amount == D("4.00")  # 2 CPUs x 2 h


def test_tres_billing_estimate_counts_memory_and_gpus() -> None:
    card = own_card(formula="tres_billing", min_charge=D(0))
    request = JobRequest(
        partition="gpu", num_tasks=2, min_mem_per_node=16384, tres_per_node="gres:gpu:2", time_limit=120
    )
    result = quote(card, request)
    # billing = 2 CPUs x 1.0 + 16 GiB x 0.25 + 2 GPUs x 2.0 = 10; x 2 h x 2.67 = 53.40
    assert result.inputs["billing"] == "10"
    assert result.amount == D("53.40")
    assert result.inputs["tres"] == {"cpu": "2", "gres/gpu": "2", "mem": "16384", "node": "1"}


def test_tres_billing_with_max_tres() -> None:
    card = own_card(formula="tres_billing", min_charge=D(0))
    rate = dataclasses.replace(card.partitions["gpu"], max_tres=True)
    card = dataclasses.replace(card, partitions={**card.partitions, "gpu": rate})
    request = JobRequest(
        partition="gpu", num_tasks=2, min_mem_per_cpu=8192, tres_per_job="gres:gpu:3", time_limit=60
    )
    # MAX(2 x 1.0, 16 GiB x 0.25 = 4, 3 x 2.0 = 6) = 6; x 1 h x 2.67 = 16.02
    result = quote(card, request)
    assert D(result.inputs["billing"]) == D(6)
    assert result.amount == D("16.02")
    assert result.inputs["max_tres"] is True


def test_gpus_per_task_and_memory_defaults() -> None:
    card = own_card(formula="tres_billing", min_charge=D(0))
    # compute has no weights: Slurm bills CPUs; its def_mem_per_cpu gives the memory
    result = quote(
        card, JobRequest(partition="compute", num_tasks=3, tres_per_task="gres:gpu:1", time_limit=60)
    )
    assert result.inputs["tres"]["mem"] == "6144"
    assert result.inputs["tres"]["gres/gpu"] == "3"
    assert "def_mem_per_cpu" in result.inputs["defaults_used"]
    assert result.amount == D("3.00")


def test_slurm_billing_estimate_truncates_like_slurm() -> None:
    card = own_card(formula="slurm_billing", min_charge=D(0))
    request = JobRequest(partition="gpu", num_tasks=1, min_mem_per_node=6144, time_limit=60)
    # weighted: 1 x 1.0 + 6 GiB x 0.25 = 2.5, which Slurm records as billing=2; 2 x 1 h x 2.67
    result = quote(card, request)
    assert result.inputs["billing"] == "2"
    assert result.inputs["billing_source"] == "weights"
    assert result.amount == D("5.34")


def test_node_hours_estimate() -> None:
    card = own_card(formula="node_hours", min_charge=D(0))
    result = quote(card, JobRequest(partition="compute", num_tasks=40, time_limit=90))
    assert result.inputs["nodes"] == 2  # 40 CPUs on 32-CPU nodes
    assert result.amount == D("3.00")  # 2 nodes x 1.5 h x 1.00


def test_quote_inputs_are_json_and_name_every_number() -> None:
    result = quote(
        own_card(), JobRequest(partition="debug,compute", num_tasks=2, time_limit=30, qos="premium")
    )
    inputs = json.loads(json.dumps(result.inputs))
    assert inputs["rate_card_version"] == "2024-07-01"
    assert inputs["partition"] == "compute"
    for key in ("cpus", "nodes", "hours", "price", "qos_factor", "time_limit_min", "tres", "defaults_used"):
        assert key in inputs
    assert inputs["hours"] == "0.5"
    assert result.amount == D("2.00")  # 1.00 x 2 CPUs x 0.5 h x 2.0


# --- from job_desc --------------------------------------------------------------------------------


def test_from_job_desc_maps_slurm_sentinels_to_not_given() -> None:
    request = from_job_desc(
        {
            "partition": "debug,compute",
            "account": None,
            "default_account": "physics",
            "user_id": 1000,
            "num_tasks": 0xFFFFFFFE,
            "cpus_per_task": 0xFFFE,
            "min_cpus": 4.0,
            "min_nodes": 0xFFFFFFFE,
            "ntasks_per_node": 0xFFFE,
            "time_limit": 0xFFFFFFFE,
            "shared": 0,
            "tres_per_node": "gres:gpu:1",
            "min_mem_per_node": 0xFFFFFFFFFFFFFFFE,
            "min_mem_per_cpu": 2048,
            "qos": "",
            "default_qos": "normal",
            "array_inx": "0-9",
        }
    )
    assert request == JobRequest(
        partition="debug,compute",
        account="physics",
        user_id=1000,
        min_cpus=4,
        exclusive=True,
        tres_per_node="gres:gpu:1",
        min_mem_per_cpu=2048,
        qos="normal",
        array_inx="0-9",
    )


def test_from_job_desc_keeps_unlimited_time_and_shared_jobs() -> None:
    request = from_job_desc({"time_limit": INFINITE, "shared": 0xFFFE, "num_tasks": 8})
    assert (request.time_limit, request.exclusive, request.num_tasks) == (INFINITE, False, 8)
    assert from_job_desc({"shared": 1}).exclusive is False


def test_seed_style_submission_without_ntasks_is_not_free() -> None:
    # The seed priced a job without --ntasks/--cpus-per-task at 0; here it is at least one CPU.
    card = load_rate_card(SEED_EXAMPLE)
    request = from_job_desc(
        {"partition": "savio2_gpu", "num_tasks": 0xFFFFFFFE, "cpus_per_task": 0xFFFE, "time_limit": 60}
    )
    assert quote(card, request).amount == D("2.67")


# --- charges for finished runs --------------------------------------------------------------------


def usage(state: str, elapsed_s: int = 3600, **changes: object) -> RunUsage:
    base = RunUsage("compute", None, parse_tres("cpu=4,mem=8G,node=1,billing=6"), elapsed_s, state)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("state", ["NODE_FAIL", "BOOT_FAIL", "PREEMPTED"])
def test_refunded_end_states_cost_nothing_with_the_reason(state: str) -> None:
    result = charge(own_card(), usage(state))
    assert result.amount == D("0.00")
    assert result.policy == "refund"
    assert result.reason == f"end state {state} is refunded under rate card 2024-07-01"
    assert result.inputs["reason"] == result.reason


@pytest.mark.parametrize("state", ["COMPLETED", "TIMEOUT", "FAILED", "OUT_OF_MEMORY", "DEADLINE"])
def test_charged_end_states_pay_elapsed_times_allocation(state: str) -> None:
    result = charge(own_card(), usage(state, elapsed_s=5400))
    assert result.amount == D("6.00")  # 4 CPUs x 1.5 h x 1.00
    assert result.policy == "charge"
    assert result.inputs["end_state"] == state


def test_default_policy_charges_preemption() -> None:
    seed = load_rate_card(SEED_EXAMPLE)
    result = charge(seed, RunUsage("normal", None, parse_tres("cpu=2"), 1800, "PREEMPTED"))
    assert (result.policy, result.amount) == ("charge", D("1.00"))


@pytest.mark.parametrize("state", ["CANCELLED by 1000", "CANCELLED+", "cancelled"])
def test_cancelled_pays_exact_elapsed_without_minimum_or_granularity(state: str) -> None:
    card = own_card(charge_granularity_s=3600, min_charge=D("5"))
    result = charge(card, usage(state, elapsed_s=900))
    assert result.policy == "charge_elapsed"
    assert result.amount == D("1.00")  # 4 CPUs x 0.25 h, not rounded up to an hour nor raised to 5
    assert charge(card, usage(state, elapsed_s=0)).amount == D("0.00")


def test_granularity_and_minimum_apply_to_charged_runs() -> None:
    card = own_card(charge_granularity_s=600, min_charge=D("0.50"))
    result = charge(card, usage("COMPLETED", elapsed_s=601))
    assert result.inputs["charged_s"] == 1200
    assert result.amount == D("1.33")  # 4 x 1200/3600 = 1.333...
    tiny = charge(own_card(min_charge=D("0.50")), usage("COMPLETED", elapsed_s=10))
    assert tiny.amount == D("0.50")
    assert tiny.inputs["min_charge_applied"] is True
    assert charge(own_card(min_charge=D("0.50")), usage("FAILED", elapsed_s=0)).amount == D("0.00")


def test_charge_qos_factor_and_free_qos() -> None:
    card = own_card()
    assert charge(card, usage("COMPLETED", qos="premium")).amount == D("8.00")  # 4 x 1 h x 2.0
    free = charge(card, usage("COMPLETED", qos="scavenger"))
    assert free.amount == D("0.00")
    assert free.reason == "QOS scavenger is free under rate card 2024-07-01"
    exempt = charge(card, usage("COMPLETED", account="STAFF"))
    assert exempt.amount == D("0.00")
    assert exempt.reason == "account STAFF is exempt under rate card 2024-07-01"


def test_charge_with_slurm_billing_uses_the_allocations_billing() -> None:
    card = own_card(formula="slurm_billing")
    result = charge(card, usage("COMPLETED", elapsed_s=1800))
    assert result.amount == D("3.00")  # billing 6 x 0.5 h x 1.00
    assert result.inputs["billing_source"] == "allocation"
    no_billing = charge(card, dataclasses.replace(usage("COMPLETED"), tres=parse_tres("cpu=4,node=1")))
    assert no_billing.inputs["billing_source"] == "weights"  # compute has no weights: CPUs
    assert no_billing.amount == D("4.00")


def test_charge_with_tres_billing_and_max_tres() -> None:
    card = own_card(formula="tres_billing")
    run = RunUsage("gpu", None, parse_tres("cpu=8,mem=64G,node=1,gres/gpu=2,billing=99"), 3600, "COMPLETED")
    # sum: 8 x 1.0 + 64 x 0.25 + 2 x 2.0 = 28 billing units x 1 h x 2.67 = 74.76
    assert charge(card, run).amount == D("74.76")
    rate = dataclasses.replace(card.partitions["gpu"], max_tres=True)
    max_card = dataclasses.replace(card, partitions={**card.partitions, "gpu": rate})
    # max: MAX(8, 16, 4) = 16 x 1 h x 2.67 = 42.72
    assert charge(max_card, run).amount == D("42.72")


def test_charge_with_node_hours() -> None:
    card = own_card(formula="node_hours")
    run = RunUsage("compute", None, parse_tres("cpu=64,node=2"), 2700, "COMPLETED")
    assert charge(card, run).amount == D("1.50")  # 2 nodes x 0.75 h
    assert charge(card, dataclasses.replace(run, nodes=4)).amount == D("3.00")
    with pytest.raises(ChargeError, match="no node count; cannot price node-hours"):
        charge(card, dataclasses.replace(run, tres=parse_tres("cpu=64")))


def test_charge_unknown_partition_is_an_error_unless_the_card_has_a_default_rate() -> None:
    run = RunUsage("nosuch", None, parse_tres("cpu=2,node=1"), 3600, "COMPLETED")
    with pytest.raises(ChargeError, match="partition nosuch has no price in rate card 2024-07-01"):
        charge(own_card(), run)
    card = own_card(unknown_partition="default_rate", default_partition="debug")
    result = charge(card, run)
    assert (result.amount, result.inputs["priced_as"]) == (D("1.00"), "debug")


def test_charge_errors_say_what_is_missing() -> None:
    card = own_card()
    with pytest.raises(ChargeError, match="has no cpu in its allocated TRES; cannot price CPU-hours"):
        charge(card, RunUsage("compute", None, parse_tres("node=1"), 60, "COMPLETED"))
    with pytest.raises(ChargeError, match="has no end state; give sacct's State"):
        charge(card, usage("  "))
    with pytest.raises(ChargeError, match="negative elapsed time"):
        charge(card, usage("COMPLETED", elapsed_s=-1))


def test_charge_inputs_record_the_formula() -> None:
    result = charge(own_card(), usage("TIMEOUT", elapsed_s=7200, qos="low"))
    inputs = json.loads(json.dumps(result.inputs))
    assert inputs == {
        "rate_card_version": "2024-07-01",
        "formula": "cpu_hours",
        "partition": "compute",
        "end_state": "TIMEOUT",
        "policy": "charge",
        "elapsed_s": 7200,
        "tres": {"billing": "6", "cpu": "4", "mem": "8192", "node": "1"},
        "nodes": 1,
        "charged_s": 7200,
        "hours": "2",
        "price": "1.00",
        "quantity": "4",
        "qos": "low",
        "qos_factor": "0.5",
        "min_charge": "0.05",
        "rounding": {"places": 2, "mode": "ROUND_HALF_UP"},
    }
    assert result.amount == D("4.00")  # 4 CPUs x 2 h x 0.5


def test_the_documented_card_loads() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "bank-rates.md").read_text(encoding="utf-8")
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    card = load_rate_card(example, name="docs/bank-rates.md")
    assert card.version == "2024-07-01"
    assert card.slurm_default_partition() == card.partitions["compute"]
    assert card.partitions["compute"].node_cpus() == 32
