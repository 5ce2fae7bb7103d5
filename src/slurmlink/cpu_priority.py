"""Lower a daemon's CPU priority, so that next to slurmctld it yields the CPU to Slurm and its users.

When ``slurmlink serve`` runs on the slurmctld host, a burst of submissions starts a wave of stage-ins
whose Workflow work (API writes, controllers, the store) would otherwise take the same cores that
``sbatch`` and slurmctld need at that very moment. That work is asynchronous: a few milliseconds later
costs nothing, while a slow submission holds slurmctld's job write lock. ``bench/slurm_bb.py`` measures
the difference.

Linux schedules by autogroup (one per session) when ``kernel.sched_autogroup_enabled`` is 1, and then a
process's own nice value only ranks it inside its session. A daemon that leads its session (started
with ``setsid``, as the quick start and the dev cluster start theirs) therefore also sets its
autogroup's nice value; a process started from someone's shell leaves the shell's group alone. Under
systemd, use ``Nice=``/``CPUWeight=`` in the unit instead (docs/operations in the README).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")
MAX_NICE = 19
#: What the quick start gives ``slurmlink serve`` on the slurmctld host (``serve --nice``).
COLOCATED_SERVE_NICE = 10


def lower_cpu_priority(nice: int, autogroup: Path = AUTOGROUP) -> str:
    """Add ``nice`` (1..19) to this process's nice value (and its own autogroup's); what was done.

    Raises ValueError for a value outside 0..19; 0 does nothing. Failing to adjust the autogroup (no
    such file, not permitted) is not an error: the process nice value still applies.
    """
    if not 0 <= nice <= MAX_NICE:
        raise ValueError(f"nice must be between 0 and {MAX_NICE}, not {nice}")
    if nice == 0:
        return "CPU priority unchanged"
    new_nice = os.nice(nice)
    done = f"nice {new_nice}"
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):
            autogroup.write_text(f"{min(new_nice, MAX_NICE)}\n")
            done += f", autogroup nice {min(new_nice, MAX_NICE)}"
    return done
