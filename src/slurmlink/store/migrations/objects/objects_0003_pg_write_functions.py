"""PostgreSQL: create, compare-and-swap update and delete as server-side functions, one round trip each.

Each function takes the next revision, writes the object and its event and notifies the other
replicas, all in one statement, so a single-object write needs no BEGIN/COMMIT round trips. The object's
JSON arrives split around its resourceVersion (``head || revision || tail``), since the revision is
only known inside the database. A write that fails gives its revision back (the caller still holds the
counter's row lock, so nobody else took a revision in between) and returns 0 (conflict, or the key
exists) or -1 (not found). The notification carries the writing store's origin, so that store's own
watch hub can skip it (its commit listener already has the event). Nothing to do on SQLite, which
runs in-process.

Revision ID: objects_0003
Revises: objects_0002
"""

from __future__ import annotations

from alembic import op

revision = "objects_0003"
down_revision = "objects_0002"
branch_labels = None
depends_on = None

CREATE = """
CREATE OR REPLACE FUNCTION slurmlink_create(
    p_resource text, p_namespace text, p_name text, p_head text, p_tail text, p_origin text
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    rev bigint;
    body text;
BEGIN
    IF EXISTS (SELECT 1 FROM objects WHERE resource = p_resource AND namespace = p_namespace
               AND name = p_name) THEN
        RETURN 0;
    END IF;
    UPDATE counters SET revision = revision + 1 WHERE id = 1 RETURNING revision INTO rev;
    body := p_head || rev::text || p_tail;
    INSERT INTO objects (resource, namespace, name, revision, data)
        VALUES (p_resource, p_namespace, p_name, rev, body) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        UPDATE counters SET revision = revision - 1 WHERE id = 1;
        RETURN 0;
    END IF;
    INSERT INTO events (revision, type, resource, namespace, name, data)
        VALUES (rev, 'ADDED', p_resource, p_namespace, p_name, body);
    PERFORM pg_notify('slurmlink_events', rev::text || ' ' || p_origin);
    RETURN rev;
END
$$;
"""

UPDATE = """
CREATE OR REPLACE FUNCTION slurmlink_update(
    p_resource text, p_namespace text, p_name text, p_expected bigint, p_head text, p_tail text,
    p_origin text
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    rev bigint;
    stored bigint;
    body text;
BEGIN
    SELECT revision INTO stored FROM objects
        WHERE resource = p_resource AND namespace = p_namespace AND name = p_name;
    IF NOT FOUND THEN
        RETURN -1;
    ELSIF stored <> p_expected THEN
        RETURN 0;
    END IF;
    UPDATE counters SET revision = revision + 1 WHERE id = 1 RETURNING revision INTO rev;
    body := p_head || rev::text || p_tail;
    UPDATE objects SET revision = rev, data = body
        WHERE resource = p_resource AND namespace = p_namespace AND name = p_name
        AND revision = p_expected;
    IF NOT FOUND THEN  -- changed or deleted while this waited for the counter
        UPDATE counters SET revision = revision - 1 WHERE id = 1;
        SELECT revision INTO stored FROM objects
            WHERE resource = p_resource AND namespace = p_namespace AND name = p_name;
        RETURN CASE WHEN FOUND THEN 0 ELSE -1 END;
    END IF;
    INSERT INTO events (revision, type, resource, namespace, name, data)
        VALUES (rev, 'MODIFIED', p_resource, p_namespace, p_name, body);
    PERFORM pg_notify('slurmlink_events', rev::text || ' ' || p_origin);
    RETURN rev;
END
$$;
"""


DELETE = """
CREATE OR REPLACE FUNCTION slurmlink_delete(
    p_resource text, p_namespace text, p_name text, p_expected bigint, p_origin text
) RETURNS TABLE (out_revision bigint, out_data text) LANGUAGE plpgsql AS $$
DECLARE
    rev bigint;
    stored bigint;
    old text;
BEGIN
    SELECT o.revision INTO stored FROM objects o
        WHERE o.resource = p_resource AND o.namespace = p_namespace AND o.name = p_name;
    IF NOT FOUND THEN
        out_revision := -1;
        RETURN NEXT;
        RETURN;
    ELSIF p_expected IS NOT NULL AND stored <> p_expected THEN
        out_revision := 0;
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE counters c SET revision = c.revision + 1 WHERE c.id = 1 RETURNING c.revision INTO rev;
    DELETE FROM objects o
        WHERE o.resource = p_resource AND o.namespace = p_namespace AND o.name = p_name
        AND (p_expected IS NULL OR o.revision = p_expected)
        RETURNING o.data INTO old;
    IF NOT FOUND THEN  -- changed or deleted while this waited for the counter
        UPDATE counters c SET revision = c.revision - 1 WHERE c.id = 1;
        PERFORM 1 FROM objects o
            WHERE o.resource = p_resource AND o.namespace = p_namespace AND o.name = p_name;
        out_revision := CASE WHEN FOUND THEN 0 ELSE -1 END;
        RETURN NEXT;
        RETURN;
    END IF;
    -- The event carries the last state stamped with the deleting revision.
    out_data := jsonb_set(old::jsonb, '{metadata,resourceVersion}', to_jsonb(rev::text))::text;
    INSERT INTO events (revision, type, resource, namespace, name, data)
        VALUES (rev, 'DELETED', p_resource, p_namespace, p_name, out_data);
    PERFORM pg_notify('slurmlink_events', rev::text || ' ' || p_origin);
    out_revision := rev;
    RETURN NEXT;
END
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)
        op.execute(UPDATE)
        op.execute(DELETE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION slurmlink_delete(text, text, text, bigint, text)")
        op.execute("DROP FUNCTION slurmlink_update(text, text, text, bigint, text, text, text)")
        op.execute("DROP FUNCTION slurmlink_create(text, text, text, text, text, text)")
