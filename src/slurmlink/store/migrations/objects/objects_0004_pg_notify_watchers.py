"""PostgreSQL: notify only when another process watches; watch hubs register in ``slurmlink_watchers``.

A NOTIFY costs every write a wake-up of each listening backend and of its process, yet a single
server's own watch hub learns of its writes from the commit listener and drops its own
notifications. Each watch hub now registers its store's origin (and refreshes ``seen`` while it
listens); the write functions notify only when a watcher other than the writing store was seen within
the last minute. A hub that registers while a write is under way may miss that write's notification;
its periodic poll, the safety net for lost notifications, picks the write up.

The three write functions are objects_0003's with ``pg_notify`` replaced by ``slurmlink_notify``.

Revision ID: objects_0004
Revises: objects_0003
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "objects_0004"
down_revision = "objects_0003"
branch_labels = None
depends_on = None

#: A watcher not seen for this long (its process died without deregistering) is not notified.
WATCHER_TTL = "60 seconds"

TABLE = """
CREATE TABLE slurmlink_watchers (
    origin text PRIMARY KEY,
    seen timestamptz NOT NULL DEFAULT now()
)
"""

NOTIFY = f"""
CREATE OR REPLACE FUNCTION slurmlink_notify(p_revision bigint, p_origin text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM slurmlink_watchers
               WHERE origin <> p_origin AND seen > now() - interval '{WATCHER_TTL}') THEN
        PERFORM pg_notify('slurmlink_events', p_revision::text || ' ' || p_origin);
    END IF;
END
$$;
"""

_OLD_CALL = "PERFORM pg_notify('slurmlink_events', rev::text || ' ' || p_origin);"
_NEW_CALL = "PERFORM slurmlink_notify(rev, p_origin);"


def _previous() -> ModuleType:
    """objects_0003, loaded from its file (migration modules are not an importable package)."""
    path = Path(__file__).with_name("objects_0003_pg_write_functions.py")
    spec = importlib.util.spec_from_file_location("slurmlink_objects_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _functions(old: ModuleType) -> list[str]:
    out = []
    for sql in (old.CREATE, old.UPDATE, old.DELETE):
        assert sql.count(_OLD_CALL) == 1, "objects_0003's write functions changed"
        out.append(sql.replace(_OLD_CALL, _NEW_CALL))
    return out


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(TABLE)
    op.execute(NOTIFY)
    for sql in _functions(_previous()):
        op.execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    old = _previous()
    for sql in (old.CREATE, old.UPDATE, old.DELETE):
        op.execute(sql)
    op.execute("DROP FUNCTION slurmlink_notify(bigint, text)")
    op.execute("DROP TABLE slurmlink_watchers")
