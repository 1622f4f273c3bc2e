"""Store URLs: the schema parameter, libpq options passed through, passwords kept out of sight."""

from __future__ import annotations

import psycopg
import pytest

from conveyor.brokers import open_broker
from conveyor.brokers.postgres import PostgresBroker, migrate
from conveyor.brokers.postgres.dsn import parse
from conveyor.errors import ConfigurationError


def test_the_schema_is_taken_out_and_the_rest_passes_to_libpq():
    target = parse(
        "postgresql://u:p%40ss@db:6432/jobs?sslmode=require&schema=billing&options=-csearch_path%3Dapp"
    )

    assert target.schema == "billing"
    assert target.ident == '"billing"'
    assert target.channel == "conveyor.billing"
    params = psycopg.conninfo.conninfo_to_dict(target.conninfo)
    assert params["password"] == "p@ss"
    assert (params["host"], params["port"], params["dbname"]) == ("db", "6432", "jobs")
    assert (params["sslmode"], params["options"]) == ("require", "-csearch_path=app")
    assert "schema" not in params
    assert params["application_name"] == "conveyor"  # a default the URL may override


def test_defaults():
    target = parse("postgres://h/db?application_name=billing-worker")

    assert target.schema == "conveyor"
    assert psycopg.conninfo.conninfo_to_dict(target.conninfo)["application_name"] == "billing-worker"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h/db?schema=bad-name",
        "postgresql://h/db?schema=",
        "postgresql://h/db?schema=a&schema=b",
        f"postgresql://h/db?schema={'x' * 49}",
        "postgresql://u:secret@h/db?no_such_option=1",
    ],
)
def test_invalid_urls_are_refused_without_their_password(url):
    with pytest.raises(ConfigurationError) as caught:
        PostgresBroker(url)
    assert "secret" not in str(caught.value)


def test_the_password_stays_out_of_display_and_repr():
    broker = open_broker("postgresql://admin:hunter2@db.example:5432/queue?schema=s")

    assert broker.display_url == "postgresql://admin:***@db.example:5432/queue?schema=s"
    assert "hunter2" not in repr(broker.__dict__)
    broker.close()  # never connected


def test_a_connection_error_does_not_show_the_password():
    with pytest.raises(psycopg.OperationalError) as caught:
        migrate("postgresql://postgres:hunter2@127.0.0.1:1/test?schema=s&connect_timeout=2")
    assert "hunter2" not in str(caught.value)
