"""Reading one job from one ``squeue --Format`` line (the bank's prolog and epilog): what is not such a
line is refused, so the caller reads the job the full way."""

from __future__ import annotations

import pytest

from slurmlink.slurm.jobrecord import (
    LINE_FIELDS,
    line_format,
    parse_job_line,
    parse_run_time,
    parse_time_limit,
)

LINE = (
    "42|alpha|physics|alice|1001|debug|(null)|RUNNING|1-02:03:00|1796463375|1796463376|1796556756|0|"
    "1:02:05|compute1|cpu=2,node=1|"
)


def test_a_line_of_the_asked_fields_is_read() -> None:
    record = parse_job_line(LINE)
    assert record is not None
    assert (record.job_id, record.cluster, record.account, record.user, record.user_id) == (
        42, "alpha", "physics", "alice", 1001
    )  # fmt: skip
    assert (record.partition, record.qos, record.state) == ("debug", "", "RUNNING")
    assert (record.time_limit, record.submit_time, record.start_time) == (1563, 1796463375, 1796463376)
    assert (record.restart_count, record.tres_alloc, record.pending_tasks) == (0, "cpu=2,node=1", 1)
    assert (record.run_seconds, record.node_list) == (3725, "compute1")
    assert line_format().count(",") == len(LINE_FIELDS) - 1 and line_format().endswith("tres-alloc:|")


@pytest.mark.parametrize(
    "line",
    [
        LINE.replace("|cpu=2,node=1|", "|cpu=2,node=1|extra|"),  # a value holding the separator
        LINE.rstrip("|"),
        LINE.replace("|1001|", "|N/A|"),
        LINE.replace("|1-02:03:00|", "|NOT_SET|"),
        LINE.replace("|1796556756|", "|soon|"),
        "squeue: error: something",
        "",
    ],
)
def test_anything_else_is_refused(line: str) -> None:
    assert parse_job_line(line) is None


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("5:00", 5), ("59:00", 59), ("1:00:00", 60), ("10:30:00", 630), ("2-00:00:00", 2880),
     ("UNLIMITED", None), ("", None), ("1-", None), ("x:00", None)],
)  # fmt: skip
def test_time_limits(text: str, minutes: int | None) -> None:
    assert parse_time_limit(text) == minutes


def test_an_unlimited_running_job_has_no_end_and_an_unknown_time_used_is_not_known() -> None:
    record = parse_job_line(LINE.replace("|1-02:03:00|", "|UNLIMITED|").replace("|1796556756|", "|NONE|"))
    assert record is not None and (record.time_limit, record.end_time) == (None, 0)
    record = parse_job_line(LINE.replace("|1:02:05|", "|INVALID|"))
    assert record is not None and record.run_seconds is None


def test_a_pending_job_has_no_nodes() -> None:
    record = parse_job_line(LINE.replace("|compute1|", "||"))
    assert record is not None and record.node_list == ""


def test_an_unlimited_job_has_no_limit() -> None:
    record = parse_job_line(LINE.replace("|1-02:03:00|", "|UNLIMITED|"))
    assert record is not None and record.time_limit is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0:00", 0), ("0:07", 7), ("1:05", 65), ("1:02:05", 3725), ("1-00:00:01", 86401), ("Unknown", None),
     ("INVALID", None), ("", None)],
)  # fmt: skip
def test_times_used(text: str, seconds: int | None) -> None:
    assert parse_run_time(text) == seconds
