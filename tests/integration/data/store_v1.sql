-- The object store's layout as slurmlink wrote it before Alembic (schema_version 1), the same on
-- SQLite and PostgreSQL. Frozen: tests replay it to check that such a database is adopted intact.

CREATE TABLE objects (
	resource VARCHAR(200) NOT NULL,
	namespace VARCHAR(253) NOT NULL,
	name VARCHAR(253) NOT NULL,
	revision BIGINT NOT NULL,
	data TEXT NOT NULL,
	PRIMARY KEY (resource, namespace, name)
);

CREATE INDEX objects_by_namespace ON objects (resource, namespace);

CREATE TABLE events (
	revision BIGINT NOT NULL,
	type VARCHAR(10) NOT NULL,
	resource VARCHAR(200) NOT NULL,
	namespace VARCHAR(253) NOT NULL,
	name VARCHAR(253) NOT NULL,
	data TEXT NOT NULL,
	PRIMARY KEY (revision)
);

CREATE TABLE counters (
	id INTEGER NOT NULL,
	revision BIGINT NOT NULL,
	compacted BIGINT NOT NULL,
	PRIMARY KEY (id)
);

CREATE TABLE schema_version (
	version INTEGER NOT NULL,
	applied_at VARCHAR(40) NOT NULL,
	PRIMARY KEY (version)
);

INSERT INTO counters (id, revision, compacted) VALUES (1, 0, 0);

INSERT INTO schema_version (version, applied_at) VALUES (1, '2026-11-21T12:00:00+00:00');
