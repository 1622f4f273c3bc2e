"""What the pages show and do: queue detail, job detail, DLQ filters and bulk actions, schedules."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from web_helpers import AUTH, Client, csrf_of, make_dead

from conveyor import Conveyor


@pytest.fixture
def shop(app: Conveyor) -> Conveyor:
    @app.task(name="shop.charge", queue="payments")
    def charge(order: int) -> None: ...

    @app.task(name="shop.refund", queue="payments")
    def refund(order: int) -> None: ...

    @app.periodic(name="shop.report", cron="0 3 * * *")
    def report() -> None: ...

    return app


def ids_on(html: str, ids: list[str]) -> set[str]:
    return {i for i in ids if i in html}


def test_dead_letter_filters_by_task_error_type_and_time(shop: Conveyor, serve, client: Client) -> None:
    charge, refund = shop.tasks["shop.charge"], shop.tasks["shop.refund"]
    old = time.time() - 3 * 3600
    jobs = {}
    for name, task, error, when in [
        ("charge-key", charge, "KeyError", None),
        ("charge-value", charge, "ValueError", None),
        ("refund-key", refund, "KeyError", None),
        ("charge-key-old", charge, "KeyError", old),
    ]:
        task.enqueue(1)
        jobs[name] = make_dead(shop, "payments", error_type=error, now=when)
    every = list(jobs.values())
    with serve(shop) as url:

        def shown(query: str) -> set[str]:
            html = client.get(url + "/dead" + query, headers=AUTH).text
            return {k for k, v in jobs.items() if v in ids_on(html, every)}

        assert shown("") == set(jobs)
        assert shown("?task=shop.charge") == {"charge-key", "charge-value", "charge-key-old"}
        assert shown("?error=keyerror") == {"charge-key", "refund-key", "charge-key-old"}
        assert shown("?task=shop.charge&error=KeyError&since=1h") == {"charge-key"}
        assert shown("?queue=other") == set()

        page = client.get(url + "/dead?error=KeyError&since=1h", headers=AUTH).text
        r = client.post(
            url + "/dead/replay",
            headers=AUTH,
            data={"csrf": csrf_of(page), "scope": "matching", "error": "KeyError", "since": "1h"},
        )
        assert r.status_code == 303 and "replayed=2" in r.headers["location"]
        states = {k: shop.broker.get(v).state for k, v in jobs.items()}
        assert states == {
            "charge-key": "ready",
            "refund-key": "ready",
            "charge-value": "dead",
            "charge-key-old": "dead",
        }

        r = client.post(
            url + "/dead/purge", headers=AUTH, data={"csrf": csrf_of(page), "ids": [jobs["charge-value"]]}
        )
        assert "purged=1" in r.headers["location"]
        assert shop.broker.get(jobs["charge-value"]) is None
        assert shop.broker.get(jobs["charge-key-old"]).state == "dead"


def test_queue_job_and_scheduled_pages(shop: Conveyor, serve, client: Client) -> None:
    charge = shop.tasks["shop.charge"]
    ready = charge.enqueue(7, priority="high")
    later = charge.enqueue(8, delay=3600)
    charge.enqueue(9)
    dead = make_dead(
        shop, "payments", error_type="CardDeclined", message="card 4242 declined"
    )  # the high one
    assert dead == ready.id
    with serve(shop) as url:
        queue = client.get(url + "/queues/payments", headers=AUTH).text
        assert "shop.charge" in queue and later.id not in queue  # the ready tab
        assert later.id in client.get(url + "/queues/payments?state=scheduled", headers=AUTH).text
        assert dead in client.get(url + "/queues/payments?state=dead", headers=AUTH).text

        job = client.get(url + f"/jobs/{dead}", headers=AUTH).text
        assert "CardDeclined" in job and "card 4242 declined" in job and "Traceback" in job
        assert 'action="/jobs/' + dead + '/replay"' in job

        page = client.get(url + f"/jobs/{later.id}", headers=AUTH).text
        r = client.post(url + f"/jobs/{later.id}/cancel", headers=AUTH, data={"csrf": csrf_of(page)})
        assert r.status_code == 303
        assert later.status() == "cancelled"

        scheduled = client.get(url + "/scheduled", headers=AUTH).text
        assert "shop.report" in scheduled and "cron 0 3 * * * (UTC)" in scheduled
        assert client.get(url + "/jobs/does-not-exist", headers=AUTH).status_code == 404


def test_a_url_target_needs_no_application_code(shop: Conveyor, serve, client: Client) -> None:
    shop.tasks["shop.charge"].enqueue(1)
    bare = Conveyor(shop.url)
    try:
        with serve(bare) as url:
            assert "shop.charge" in client.get(url + "/queues/payments", headers=AUTH).text
            assert "No periodic tasks" in client.get(url + "/scheduled", headers=AUTH).text
    finally:
        bare.close()


def test_every_interval_schedule_is_described(app: Conveyor, serve, client: Client) -> None:
    @app.periodic(name="tick", every=timedelta(seconds=90))
    def tick() -> None: ...

    with serve(app) as url:
        assert "every 90 s" in client.get(url + "/scheduled", headers=AUTH).text


def test_the_job_page_shows_headers_with_secret_ones_masked(shop: Conveyor, serve, client: Client) -> None:
    charge = shop.tasks["shop.charge"]
    job = charge.enqueue(7, headers={"request-id": "r-<b>42</b>", "api-token": "s3cr3t-value"})
    plain = charge.enqueue(8)
    with serve(shop) as url:
        page = client.get(url + f"/jobs/{job.id}", headers=AUTH).text
        assert "request-id: r-&lt;b&gt;42&lt;/b&gt;" in page
        assert "api-token: " in page and "s3cr3t-value" not in page
        assert 'id="job-headers"' not in client.get(url + f"/jobs/{plain.id}", headers=AUTH).text


def test_the_job_page_shows_progress(shop: Conveyor, serve, client: Client) -> None:
    from conveyor.priority import Fairness
    from conveyor.progress import encode
    from conveyor.records import Progress

    job = shop.tasks["shop.charge"].enqueue(7)
    (d,) = shop.broker.reserve(["payments"], 1, 60.0, "w", Fairness(shop.priorities.weights))
    shop.broker.set_progress([(d.id, d.token, encode(Progress(0.42, "<i>42</i> of 100")))])
    with serve(shop) as url:
        page = client.get(url + f"/jobs/{job.id}", headers=AUTH).text
    assert '<progress max="1" value="0.42"></progress> 42 % — &lt;i&gt;42&lt;/i&gt; of 100' in page
