"""Versioned migrations: idempotent, equal to the fresh schema, safe when run concurrently."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from conveyor.brokers.postgres import PostgresBroker, migrate
from conveyor.brokers.postgres.dsn import parse
from conveyor.brokers.postgres.migrate import apply, latest, migrations
from conveyor.ids import new_id
from conveyor.records import Message


def shape(admin: Any, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What a schema is made of, with its name taken out of the definitions."""

    def rows(query: str) -> list[tuple[Any, ...]]:
        found = admin.execute(query, [schema]).fetchall()
        return sorted(tuple(str(v).replace(schema, "S") for v in row) for row in found)

    return {
        "columns": rows(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity,"
            " identity_generation FROM information_schema.columns WHERE table_schema = %s"
        ),
        "indexes": rows("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s"),
        "functions": rows(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s"
        ),
        "constraints": rows(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s"
        ),
    }


def versions(admin: Any, schema: str) -> list[int]:
    return [v for (v,) in admin.execute(f'SELECT version FROM "{schema}".conveyor_migrations ORDER BY 1')]


def test_migrate_creates_the_schema_then_has_nothing_left_to_do(admin, store_url):
    schema = parse(store_url).schema
    every = [m.version for m in migrations()]

    assert migrate(store_url) == every
    assert migrate(store_url) == []

    assert versions(admin, schema) == every
    assert every[-1] == latest()


def test_every_migration_in_order_gives_the_fresh_schema(admin, new_store):
    fresh, stepped = parse(new_store()), parse(new_store())
    migrate(fresh.display)
    with psycopg.connect(stepped.conninfo, autocommit=True) as conn:
        assert apply(conn, stepped, fresh_install=False) == [m.version for m in migrations()]

    assert shape(admin, stepped.schema) == shape(admin, fresh.schema)
    assert shape(admin, fresh.schema)["indexes"]  # the comparison compared something
    assert shape(admin, fresh.schema)["functions"]
    assert versions(admin, stepped.schema) == versions(admin, fresh.schema)


def test_concurrent_migrators_apply_each_version_once(admin, store_url):
    start = threading.Barrier(8)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            results.append(migrate(store_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert errors == []
    assert sorted(results) == [[]] * 7 + [[m.version for m in migrations()]]
    assert versions(admin, parse(store_url).schema) == [m.version for m in migrations()]


def test_a_schema_made_by_someone_else_is_used_as_it_is(admin, store_url):
    schema = parse(store_url).schema
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(f'CREATE TABLE "{schema}".ledger (n integer)')  # the user's own table

    assert migrate(store_url) == [m.version for m in migrations()]

    assert admin.execute(f'SELECT count(*) FROM "{schema}".ledger').fetchone() == (0,)


def test_the_broker_migrates_on_first_use(admin, store_url):
    broker = PostgresBroker(store_url)
    try:
        message = Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[[],{}]")
        assert broker.enqueue([message])[0].created
        assert versions(admin, parse(store_url).schema) == [m.version for m in migrations()]
    finally:
        broker.close()


def test_the_migrate_command(store_url):
    from click.testing import CliRunner

    from conveyor.cli import main

    first = CliRunner().invoke(main, ["migrate", store_url])
    again = CliRunner().invoke(main, ["migrate", store_url])

    assert (first.exit_code, again.exit_code) == (0, 0), first.output + again.output
    assert "applied 1" in first.output
    assert "up to date" in again.output
    refused = CliRunner().invoke(main, ["migrate", "sqlite:///x.db"])
    assert refused.exit_code != 0
