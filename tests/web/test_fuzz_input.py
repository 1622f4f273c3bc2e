"""Arbitrary text in every path segment, query parameter and form field the dashboard reads, on
every store: never a 500, always the security headers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web_helpers import AUTH, Client, make_dead

from conveyor import Conveyor

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS", "redis://127.0.0.1:6379/10")
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=300) | st.sampled_from(
    ["", "\x00", "²", "-1", "9" * 5000, "a}b{c", "%", "../..", "<script>", "default", "0", "1e308"]
)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    """An application on a fresh store of each backend, removed afterwards."""
    tag = os.urandom(4).hex()
    if request.param == "sqlite":
        app = Conveyor(f"sqlite:///{tmp_path}/fuzz.db")
    elif request.param == "postgres":
        app = Conveyor(f"{POSTGRES_URL}?schema=conveyor_webfuzz_{tag}")
    else:
        app = Conveyor(f"{REDIS_URL}?prefix=webfuzz-{tag}")

    @app.task
    def noop() -> None: ...

    noop.enqueue()
    noop.enqueue(delay=60)
    make_dead(app)
    noop.enqueue()
    try:
        yield app
    finally:
        app.close()
        if request.param == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS conveyor_webfuzz_{tag} CASCADE")
        elif request.param == "redis":
            from redis.client import Redis

            client = Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"webfuzz-{tag}:*", count=1000))
            if keys:
                client.unlink(*keys)
            client.close()


def answered(r) -> None:
    assert r.status_code < 500, (r.request.method, str(r.request.url)[:200], r.text[:300])
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_crafted_requests_never_make_a_500(store_app: Conveyor, serve, client: Client) -> None:
    with serve(store_app) as url:
        csrf_page = client.get(url + "/dead", headers=AUTH)
        assert csrf_page.status_code == 200
        post_headers = {**AUTH, "X-CSRF-Token": csrf_page.text.split('name="csrf" value="')[1].split('"')[0]}

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(a=TEXT, b=TEXT, c=TEXT, d=TEXT)
        def run(a: str, b: str, c: str, d: str) -> None:
            seg = quote(a, safe="")
            answered(client.get(f"{url}/queues/{seg}?{urlencode({'state': b, 'offset': c})}", headers=AUTH))
            answered(client.get(f"{url}/jobs/{seg}", headers=AUTH))
            query = urlencode({"queue": a, "task": b, "error": c, "since": d, "offset": d})
            answered(client.get(f"{url}/dead?{query}", headers=AUTH))
            answered(client.get(f"{url}/scheduled?{urlencode({'offset': b})}", headers=AUTH))
            answered(client.get(f"{url}/search?{urlencode({'q': a})}", headers=AUTH))
            answered(client.post(f"{url}/jobs/{seg}/cancel", headers=post_headers))
            answered(client.post(f"{url}/jobs/{seg}/replay", data={"queue": b}, headers=post_headers))
            answered(
                client.post(
                    f"{url}/dead/replay", data={"ids": [a, c], "into": b, "queue": d}, headers=post_headers
                )
            )
            answered(client.post(f"{url}/dead/purge", data={"ids": [c], "task": d}, headers=post_headers))

        run()
