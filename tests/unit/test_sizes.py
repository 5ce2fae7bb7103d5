"""Byte sizes as directives and pools write them (NNF's units: ``i`` binary, none decimal)."""

from __future__ import annotations

import pytest

from slurmlink.resources.sizes import SizeError, approximate_size, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("1GiB", 2**30),
        ("1Gi", 2**30),
        ("1GB", 10**9),
        ("1G", 10**9),
        ("512MiB", 512 * 2**20),
        ("10KB", 10_000),
        ("10kB", 10_000),
        ("2TiB", 2 * 2**40),
        ("1.5GiB", 3 * 2**29),
        (".5KiB", 512),
        (" 3MiB ", 3 * 2**20),
        ("0", 0),
    ],
)
def test_parse_size(text: int | str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "1 GiB", "1GiBB", "1XiB", "-1", -1, True, 1.5, "1e3"])
def test_not_sizes(text: object) -> None:
    with pytest.raises(SizeError):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (2**30, "1GiB"),
        (300 * 2**30, "300GiB"),
        (1536 * 2**20, "1536MiB"),
        (1000, "1000"),
        (0, "0"),
        (2**40, "1TiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1000, "1000B"),
        (7720 * 1024, "7.54MiB"),
        (320000 * 1024, "312MiB"),
        (1.2 * 2**30, "1.20GiB"),
    ],
)
def test_approximate_size(size: float, text: str) -> None:
    assert approximate_size(size) == text
