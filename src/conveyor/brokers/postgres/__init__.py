"""The PostgreSQL backend: ``postgresql://user:password@host:port/db?schema=NAME``.

The URL is libpq's (any of its options pass through, e.g. ``sslmode=require``) plus ``schema``:
the schema holding Conveyor's tables (default ``conveyor``), so several applications or test
runs can share a database. The broker creates or upgrades its schema on first use; run
``conveyor migrate URL`` (or :func:`migrate`) beforehand when workers connect with a role that
may not change the schema.

Transactional effects (``current_job().execute(sql, params)``) and ``enqueue(...,
connection=conn)`` run on the same database, with psycopg's placeholders (``%s``,
``%(name)s``). Effects resolve unqualified table names through the connection's
``search_path`` (set one with the URL's ``options=-csearch_path%3Dmyschema``); they should not
change session settings, as pooled connections are reused.

Grants, for a schema ``conveyor`` and roles ``conveyor_admin`` (migrates) and ``conveyor_worker``
(workers, producers, dashboard)::

    GRANT CREATE ON DATABASE mydb TO conveyor_admin;  -- or own an existing schema
    GRANT USAGE ON SCHEMA conveyor TO conveyor_worker;
    GRANT SELECT ON conveyor.conveyor_migrations TO conveyor_worker;
    GRANT SELECT, INSERT, UPDATE, DELETE ON conveyor.jobs, conveyor.workers, conveyor.paused TO conveyor_worker;
    GRANT SELECT, INSERT, UPDATE, DELETE ON conveyor.limit_groups, conveyor.limit_keys TO conveyor_worker;
    GRANT SELECT, INSERT, DELETE ON conveyor.limit_waiters TO conveyor_worker;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA conveyor TO conveyor_worker;

LISTEN/NOTIFY and advisory locks need no grants. (Migrations 5 and 6 gave the roles with rights
on ``jobs`` the same on the tables they create: ``paused``, and the limit tables, which every
reservation reads.) The jobs table's identity column needs no sequence grant. The functions
(``reserve``: a whole reservation in one round trip, and those of pauses and limits) run with the
caller's rights; PUBLIC may execute new functions unless the database revoked that.

Throughput: a reserve, an ack batch and an enqueue batch without keys are one statement and one
commit each, and every commit waits for its WAL flush, so acknowledged outcomes survive a server
crash. Where losing the last fraction of a second of commits in a crash is acceptable
(finished tasks may then run again, and a claim's attempt may go uncounted), the URL can turn
the wait off for the broker's sessions: ``?schema=conveyor&options=-csynchronous_commit%3Doff``.
The broker never does so itself: keep the default unless re-running tasks after a server crash
is acceptable.
"""

from conveyor.brokers.postgres.broker import PostgresBroker
from conveyor.brokers.postgres.migrate import migrate

__all__ = ["PostgresBroker", "migrate"]
