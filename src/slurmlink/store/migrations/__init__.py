"""Versioned schema migrations (Alembic), one track per component, run when a store opens.

Each component owning tables in the store's database has a *track*: a directory of Alembic revision
scripts whose first revision carries the track's name as its branch label. Revision ids are
``<track>_<NNNN>`` (numbered from 0001 without gaps), which is how a database written by a newer
release is recognised and refused. To add a track (e.g. ``bank``): create ``migrations/bank/`` with
``bank_0001_<what>.py`` (``down_revision = None``, ``branch_labels = ("bank",)``) and add the
directory to ``TRACKS``; every store then brings that track to its head at open, in the same
transaction as the others. To change a track, add the next numbered script; never edit a released one.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from slurmlink.store.engine import SQLITE_BEGIN
from slurmlink.store.errors import SchemaVersionError

HERE = Path(__file__).resolve().parent

#: Track name -> directory of its revision scripts.
TRACKS: dict[str, Path] = {
    "objects": HERE / "objects",
    "bank": HERE / "bank",
}

VERSION_TABLE = "alembic_version"
#: ``schema_version`` held this before Alembic; such a database is adopted as ``objects_0001``.
LEGACY_VERSION = 1
_MIGRATION_LOCK_KEY = 0x51C4_7A11
_REVISION = re.compile(r"^(?P<track>[a-z][a-z0-9]*)_(?P<number>\d{4})$")


def load_script(track: str, filename: str) -> ModuleType:
    """A revision script of ``track`` as a module, for a later revision that reuses its SQL.

    Revision scripts are not an importable package (their names start with the track and a number).
    """
    path = TRACKS[track] / filename
    spec = importlib.util.spec_from_file_location(f"slurmlink_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration over the packaged scripts (no alembic.ini)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    locations = os.pathsep.join(str(path) for path in TRACKS.values())
    cfg.set_main_option("version_locations", locations.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    cfg.attributes["version_table"] = VERSION_TABLE
    return cfg


def heads(script: ScriptDirectory | None = None) -> dict[str, str]:
    """Track -> newest revision this code knows."""
    script = script or ScriptDirectory.from_config(config())
    out: dict[str, str] = {}
    for head in script.get_heads():
        match = _REVISION.match(head)
        assert match, f"revision id {head!r} does not follow <track>_<NNNN>"
        out[match["track"]] = head
    return out


def migrate(engine: sa.Engine) -> dict[str, str]:
    """Bring every track to its head; safe when several replicas start at once.

    Everything runs in one transaction (PostgreSQL: under an advisory lock; SQLite: BEGIN IMMEDIATE),
    so a crash mid-migration leaves the previous layout and a concurrent starter waits, then finds
    nothing to do. A database migrated by newer code is refused (SchemaVersionError) untouched.
    Returns track -> head revision.
    """
    with engine.connect() as conn:
        conn.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg = config(conn)
            script = ScriptDirectory.from_config(cfg)
            known = heads(script)
            current = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}
            ).get_current_heads()
            _refuse_newer(script, current, known)
            if not any(rev.startswith("objects_") for rev in current):
                legacy = _legacy_version(conn)
                if legacy is not None:
                    if legacy != LEGACY_VERSION:
                        raise SchemaVersionError(legacy, LEGACY_VERSION)
                    command.stamp(cfg, "objects_0001")
            command.upgrade(cfg, "heads")
    return known


def _number(revision: str) -> int:
    match = _REVISION.match(revision)
    return int(match["number"]) if match else 0


def _refuse_newer(script: ScriptDirectory, current: tuple[str, ...], known: dict[str, str]) -> None:
    for revision in current:
        try:
            found = script.get_revision(revision)
        except Exception:
            found = None
        if found is None:
            match = _REVISION.match(revision)
            track = match["track"] if match else ""
            supported = _number(known[track]) if track in known else 0
            raise SchemaVersionError(_number(revision), supported)


def _legacy_version(conn: sa.Connection) -> int | None:
    """``max(schema_version.version)`` of a database written before Alembic, or None."""
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    value = conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar()
    return int(value) if value is not None else None
