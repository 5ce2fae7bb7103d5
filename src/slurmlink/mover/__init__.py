"""The data mover: copies into and out of burst buffers as the job's user, checksums verified.

:func:`run_copy` runs a :class:`CopySpec` in a worker process with the job's uid, gid and groups
(:mod:`slurmlink.mover.worker`): the source is walked without following links
(:mod:`slurmlink.mover.plan`), files are copied on parallel threads, hashed while read and verified
after being written (:mod:`slurmlink.mover.copier`), and a journal of verified files lets a rerun
skip what is done (:mod:`slurmlink.mover.journal`). See docs/data-mover.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slurmlink.mover.spec import CopySpec, MoveCancelled, MoveError, MoveProgress

if TYPE_CHECKING:
    from slurmlink.mover.run import run_copy


def __getattr__(name: str) -> Any:
    """``run_copy`` imported when first used: the worker, started once per copy, does not need it."""
    if name == "run_copy":
        from slurmlink.mover.run import run_copy

        return run_copy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CopySpec", "MoveCancelled", "MoveError", "MoveProgress", "run_copy"]
