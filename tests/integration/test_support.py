"""The test fixtures work for real: a private PostgreSQL server and both kubectl binaries."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from support.kubectl import run_kubectl
from support.postgres import PostgresServer


def _libpq(server: PostgresServer, sqlalchemy_url: str) -> str:
    database = make_url(sqlalchemy_url).database
    assert database
    return server.libpq_dsn_for(database)


@pytest.mark.postgres
def test_postgres_version_through_psycopg(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.libpq_dsn) as conn:
        row = conn.execute("SELECT version(), current_setting('fsync'), inet_server_port()").fetchone()
    assert row is not None
    version, fsync, port = row
    assert version.startswith("PostgreSQL ")
    assert fsync == "off"
    assert port == postgres_server.port != 5432


@pytest.mark.postgres
def test_postgres_version_through_sqlalchemy(postgres_dsn: str) -> None:
    assert postgres_dsn.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(postgres_dsn)
    try:
        with engine.connect() as conn:
            version = conn.execute(sqlalchemy.text("SELECT version()")).scalar_one()
            database = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL ")
    assert database == make_url(postgres_dsn).database


@pytest.mark.postgres
def test_fresh_databases_are_isolated(postgres_server: PostgresServer) -> None:
    first = postgres_server.create_database("isolation_a")
    second = postgres_server.create_database("isolation_b")
    try:
        with psycopg.connect(_libpq(postgres_server, first), autocommit=True) as conn:
            conn.execute("CREATE TABLE marker (value text)")
            conn.execute("INSERT INTO marker VALUES ('only in a')")
        with psycopg.connect(_libpq(postgres_server, second), autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass('public.marker') IS NOT NULL").fetchone()
            assert exists == (False,)
        with psycopg.connect(_libpq(postgres_server, first)) as conn:
            assert conn.execute("SELECT value FROM marker").fetchall() == [("only in a",)]
    finally:
        postgres_server.drop_database("isolation_a")
        postgres_server.drop_database("isolation_b")


@pytest.mark.postgres
def test_postgres_dsn_is_a_new_empty_database(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    with psycopg.connect(_libpq(postgres_server, postgres_dsn)) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)


@pytest.mark.postgres
def test_listen_notify_is_delivered(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    dsn = _libpq(postgres_server, postgres_dsn)
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as notifier,
    ):
        listener.execute("LISTEN slurmlink_events")
        notifier.execute("SELECT pg_notify('slurmlink_events', 'hello 1')")
        notifier.execute("NOTIFY slurmlink_events, 'hello 2'")
        received = list(listener.notifies(timeout=10.0, stop_after=2))
        sender_pid = notifier.info.backend_pid
    assert [(n.channel, n.payload) for n in received] == [
        ("slurmlink_events", "hello 1"),
        ("slurmlink_events", "hello 2"),
    ]
    assert all(n.pid == sender_pid for n in received)


def _client_git_version(binary: Path, home: Path, tmp_path: Path) -> str:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    result = run_kubectl(binary, kubeconfig, "version", "--client", "-o", "json", home=home)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["clientVersion"]["gitVersion"])


@pytest.mark.kubectl
def test_kubectl_120_reports_v1_20(kubectl_120: Path, kubectl_home: Path, tmp_path: Path) -> None:
    assert _client_git_version(kubectl_120, kubectl_home, tmp_path).startswith("v1.20.")


@pytest.mark.kubectl
def test_kubectl_132_reports_v1_3x(kubectl_132: Path, kubectl_home: Path, tmp_path: Path) -> None:
    version = _client_git_version(kubectl_132, kubectl_home, tmp_path)
    assert version.startswith("v1.3"), version
    assert not version.endswith("-dispatcher"), version
