"""The data mover: copies into and out of burst buffers as the job's user, with checksums verified.

:func:`run_copy` runs one :class:`CopySpec` in a worker process that drops to the job's uid, gid and
groups before it touches a path (see :mod:`slurmlink.mover.worker`), walks the source without following
links (:mod:`slurmlink.mover.plan`), and copies on parallel threads, hashing as it reads and verifying
what it wrote (:mod:`slurmlink.mover.copier`). A journal of verified files makes a rerun after a crash
skip what is done. See docs/data-mover.md.
"""

from slurmlink.mover.run import read_journal, run_copy
from slurmlink.mover.spec import CopySpec, MoveCancelled, MoveError, MoveProgress

__all__ = ["CopySpec", "MoveCancelled", "MoveError", "MoveProgress", "read_journal", "run_copy"]
