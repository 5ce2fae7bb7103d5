"""``scontrol``'s ``Key=Value`` records, one per line (``scontrol --oneliner show job|node|partition``).

Values may contain spaces (``Reason=...``, ``BurstBuffer=#DW jobdw capacity=1``) and ``=`` (TRES), so a
new field starts only at a space followed by a capitalised ``Key=``, which is how scontrol spells its
own keys.
"""

from __future__ import annotations

import re

_KEY = re.compile(r"(?:^|\s)([A-Z][A-Za-z0-9_:/]*=)")


def parse_line(line: str) -> dict[str, str]:
    """One record's fields; the first of a repeated key wins."""
    record: dict[str, str] = {}
    line = line.strip()
    starts = [m.start(1) for m in _KEY.finditer(line)]
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(line)
        key, _, value = line[start:end].partition("=")
        record.setdefault(key, value.strip())
    return record


def parse_record(text: str) -> dict[str, str]:
    """All lines of one multi-line record (``scontrol show job N`` without ``--oneliner``) as one dict."""
    record: dict[str, str] = {}
    for line in text.splitlines():
        for key, value in parse_line(line).items():
            record.setdefault(key, value)
    return record
