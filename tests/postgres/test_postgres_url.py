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
    assert params["sslmode"] == "require"
    assert params["options"].startswith("-csearch_path=app -c ")  # the user's, then our timeouts
    assert "schema" not in params
    assert params["application_name"] == "conveyor"  # a default the URL may override


def test_defaults():
    target = parse("postgres://h/db?application_name=billing-worker")

    assert target.schema == "conveyor"
    assert psycopg.conninfo.conninfo_to_dict(target.conninfo)["application_name"] == "billing-worker"


def test_sessions_get_timeouts_by_default_and_the_url_overrides_each():
    params = psycopg.conninfo.conninfo_to_dict(parse("postgresql://h/db").conninfo)
    assert params["connect_timeout"] == "5"
    assert (params["keepalives"], params["keepalives_idle"], params["keepalives_count"]) == ("1", "5", "3")
    assert params["tcp_user_timeout"] == "10000"
    assert params["options"] == (
        "-c statement_timeout=15s -c lock_timeout=10s -c idle_in_transaction_session_timeout=10s"
    )
    assert parse("postgresql://h/db").command_timeout == 60.0

    target = parse(
        "postgresql://h/db?connect_timeout=2&keepalives_idle=1&statement_timeout=500ms"
        "&idle_in_transaction_session_timeout=1s&command_timeout=3"
    )
    params = psycopg.conninfo.conninfo_to_dict(target.conninfo)
    assert (params["connect_timeout"], params["keepalives_idle"]) == ("2", "1")
    assert "-c statement_timeout=500ms" in params["options"]
    assert "-c idle_in_transaction_session_timeout=1s" in params["options"]
    assert "statement_timeout=15s" not in params["options"]
    assert target.command_timeout == 3.0


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h/db?options=-cstatement_timeout%3D5s",
        "postgresql://h/db?statement_timeout=five",
        "postgresql://h/db?command_timeout=-1",
    ],
)
def test_a_timeout_is_set_one_way_with_a_valid_value(url):
    with pytest.raises(ConfigurationError):
        parse(url)


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
    with pytest.raises(psycopg.OperationalError) as caught:  # migrate() is not a broker call
        migrate("postgresql://postgres:hunter2@127.0.0.1:1/test?schema=s&connect_timeout=2")
    assert "hunter2" not in str(caught.value)
