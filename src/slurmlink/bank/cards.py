"""Rate cards in the ledger's database: imported once per version, never changed, one current.

Every charge names the version it was priced with, so a card must not change under its version:
importing the same content again is a no-op, different content under an existing version is refused.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from slurmlink.bank import schema
from slurmlink.bank.books import aware
from slurmlink.bank.errors import AlreadyExists, NotFound
from slurmlink.bank.ratecard import RateCard

CURRENT = "current_rate_card"


def store(conn: sa.Connection, card: RateCard, actor: str, *, make_current: bool = True) -> dict[str, Any]:
    """Keep ``card`` (unless this version is there already) and make it the current one."""
    rc, st = schema.rate_cards, schema.settings
    text = card.to_json()
    existing = conn.execute(sa.select(rc.c.spec).where(rc.c.version == card.version)).scalar()
    if existing is not None and RateCard.from_json(existing) != card:
        raise AlreadyExists(
            f"rate card version {card.version!r} exists with different content; a card never changes "
            "under its version (charges name it): give the new card a new version"
        )
    if existing is None:
        conn.execute(
            rc.insert().values(
                version=card.version, spec=text, imported_at=dt.datetime.now(dt.UTC), imported_by=actor
            )
        )
    if make_current:
        conn.execute(st.delete().where(st.c.key == CURRENT))
        conn.execute(st.insert().values(key=CURRENT, value=card.version))
    return {"version": card.version, "new": existing is None, "current": make_current}


def current_version(conn: sa.Connection) -> str | None:
    st = schema.settings
    return conn.execute(sa.select(st.c.value).where(st.c.key == CURRENT)).scalar()


def load(conn: sa.Connection, version: str | None = None) -> RateCard:
    """The card of ``version``, or the current one; NotFound says how to import one."""
    rc = schema.rate_cards
    wanted = version or current_version(conn)
    if wanted is None:
        raise NotFound(
            "no rate card has been imported yet; import one with: slurmlink bank ratecard import FILE"
        )
    text = conn.execute(sa.select(rc.c.spec).where(rc.c.version == wanted)).scalar()
    if text is None:
        raise NotFound(f"there is no rate card of version {wanted!r}")
    return RateCard.from_json(text, source=f"rate card {wanted}")


def listing(conn: sa.Connection) -> list[dict[str, Any]]:
    rc = schema.rate_cards
    current = current_version(conn)
    rows = conn.execute(
        sa.select(rc.c.version, rc.c.imported_at, rc.c.imported_by).order_by(rc.c.imported_at)
    )
    return [
        {
            "version": row.version,
            "importedAt": aware(row.imported_at).isoformat(),  # type: ignore[union-attr]
            "importedBy": row.imported_by,
            "current": row.version == current,
        }
        for row in rows
    ]
