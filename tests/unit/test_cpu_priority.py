"""slurmlink.cpu_priority: a co-located daemon yields the CPU, and only its own scheduling group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slurmlink.cpu_priority import lower_cpu_priority

AUTOGROUP = Path("/proc/self/autogroup")

# Runs in a child so the test process keeps its own priority; prints what the kernel then reports.
_CHILD = """
import json, os, sys
from pathlib import Path
from slurmlink.cpu_priority import lower_cpu_priority
before = os.getpriority(os.PRIO_PROCESS, 0)
done = lower_cpu_priority(int(sys.argv[1]))
group = Path("/proc/self/autogroup")
print(json.dumps({
    "before": before,
    "after": os.getpriority(os.PRIO_PROCESS, 0),
    "done": done,
    "autogroup": group.read_text().strip() if group.exists() else None,
}))
"""


def _run_child(nice: int, *, own_session: bool) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(nice)],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=own_session,
        check=True,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_session_leader_lowers_its_nice_value_and_its_autogroup() -> None:
    seen = _run_child(7, own_session=True)
    assert seen["after"] == int(seen["before"]) + 7  # type: ignore[call-overload]
    if seen["autogroup"] is None:
        pytest.skip("this kernel has no autogroups; the nice value was checked")
    assert str(seen["autogroup"]).endswith(f"nice {seen['after']}"), seen
    assert "autogroup nice" in str(seen["done"])


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="this kernel has no autogroups")
def test_a_process_inside_someone_elses_session_leaves_that_session_alone() -> None:
    ours = AUTOGROUP.read_text().strip()
    seen = _run_child(5, own_session=False)
    assert seen["after"] == int(seen["before"]) + 5  # type: ignore[call-overload]
    assert seen["autogroup"] == ours  # the shell's (here: pytest's) group is untouched
    assert AUTOGROUP.read_text().strip() == ours
    assert "autogroup" not in str(seen["done"])


def test_zero_changes_nothing() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    assert lower_cpu_priority(0) == "CPU priority unchanged"
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


@pytest.mark.parametrize("nice", [-1, 20])
def test_out_of_range_values_are_refused(nice: int) -> None:
    with pytest.raises(ValueError, match="between 0 and 19"):
        lower_cpu_priority(nice)
