"""What an operator asked of the dashboard: the DLQ shows error messages, the task filter takes
short names, a search box finds jobs by id or argument (on every store), the Workers page shows
what each worker runs, and the Tasks page per-task outcomes and run times."""

from __future__ import annotations

import contextlib
import html
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_for
from web_helpers import AUTH, Client, make_dead

from contract.backends import BACKENDS
from conveyor import Conveyor, Retry, RetryPolicy
from conveyor.web import views


@pytest.fixture
def shop(app: Conveyor) -> Conveyor:
    @app.task(name="shop.billing.charge", queue="payments")
    def charge(order: int, card_token: str = "") -> None: ...

    @app.task(name="shop.billing.refund", queue="payments")
    def refund(order: int) -> None: ...

    return app


def listed(page: str, ids: list[str]) -> set[str]:
    return {i for i in ids if i in page}


def test_the_dead_letter_list_shows_each_message_redacted_and_cut(
    shop: Conveyor, serve, client: Client
) -> None:
    charge = shop.tasks["shop.billing.charge"]
    charge.enqueue(1, card_token="tok-live-7731")
    long = "card declined by the issuer " + "x" * 400
    secret = make_dead(shop, "payments", "CardDeclined", "gateway said no for tok-live-7731 (code 51)")
    charge.enqueue(2)
    wordy = make_dead(shop, "payments", "CardDeclined", long)
    with serve(shop) as url:
        page = html.unescape(client.get(url + "/dead", headers=AUTH).text)
        assert "gateway said no for *** (code 51)" in page
        assert "tok-live-7731" not in page
        assert "card declined by the issuer xxx" in page
        assert "x" * 300 not in page and "more characters not shown" in page  # cut in the list
        full = html.unescape(client.get(url + f"/jobs/{wordy}", headers=AUTH).text)
        assert long in full  # whole on the job page
        assert "gave up" in full and "was not retried" in full  # why it is in the DLQ (attempt 1 of 5)
    assert secret and wordy


def test_the_task_filter_takes_the_last_part_of_a_name_as_the_cli_does(
    shop: Conveyor, serve, client: Client
) -> None:
    charge, refund = shop.tasks["shop.billing.charge"], shop.tasks["shop.billing.refund"]
    charge.enqueue(1)
    charged = make_dead(shop, "payments")
    refund.enqueue(2)
    refunded = make_dead(shop, "payments")
    every = [charged, refunded]
    bare = Conveyor(shop.url)  # a store URL target: no registry to resolve names with
    try:
        for app in (shop, bare):
            with serve(app) as url:

                def shown(query: str, base: str = url) -> set[str]:
                    return listed(client.get(base + "/dead" + query, headers=AUTH).text, every)

                assert shown("?task=shop.billing.charge") == {charged}
                assert shown("?task=charge") == {charged}
                assert shown("?task=refund") == {refunded}
                assert shown("?task=billing") == set()
    finally:
        bare.close()


@contextlib.contextmanager
def store_app(name: str, tmp_path: Path) -> Iterator[Conveyor]:
    backend = BACKENDS[name]
    store = backend.new_store(tmp_path)
    app = Conveyor(store)
    try:
        yield app
    finally:
        app.close()
        if backend.drop_store is not None:
            with contextlib.suppress(Exception):
                backend.drop_store(store)


@pytest.mark.parametrize("store", ["sqlite", "postgres", "redis"])
def test_search_opens_a_job_by_id_and_finds_jobs_by_argument(
    store: str, tmp_path: Path, serve, client: Client
) -> None:
    with store_app(store, tmp_path) as app:

        @app.task(name="mail.send", queue="mail")
        def send(address: str, smtp_password: str = "") -> None: ...

        wanted = send.enqueue("ada@example.org", smtp_password="hunter2-canary")
        later = send.enqueue("ADA@example.org", delay=3600)
        other = send.enqueue("bob@example.org")
        make_dead(app, "mail")  # the first one: dead jobs are searched too
        every = [wanted.id, later.id, other.id]
        with serve(app) as url:
            r = client.get(url + "/search", params={"q": other.id}, headers=AUTH)
            assert r.status_code == 303 and r.headers["location"] == f"/jobs/{other.id}"

            page = client.get(url + "/search", params={"q": "ada@EXAMPLE"}, headers=AUTH).text
            assert listed(page, every) == {wanted.id, later.id}
            assert "among the" in page  # the page states the bound of the scan
            # Secrets are masked before matching: a search cannot probe them.
            page = client.get(url + "/search", params={"q": "hunter2"}, headers=AUTH).text
            assert listed(page, every) == set()
            assert client.get(url + "/search", params={"q": "x\x00"}, headers=AUTH).status_code == 400


def test_search_reads_a_bounded_number_of_jobs(
    app: Conveyor, serve, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "SEARCH_SCAN", 5)

    @app.task(name="t")
    def t(n: int) -> None: ...

    app.enqueue_many([t.message(n) for n in range(20)] + [t.message(n, delay=600) for n in range(20)])
    with serve(app) as url:
        page = client.get(url + "/search", params={"q": "needle"}, headers=AUTH).text
        assert "among the 10 jobs looked at" in page  # ready and scheduled: 5 each at most


@pytest.mark.parametrize("store", ["sqlite", "postgres", "redis"])
def test_the_workers_page_shows_what_each_worker_runs(
    store: str, tmp_path: Path, run_worker, serve, client: Client
) -> None:
    with store_app(store, tmp_path) as app:
        workers_page(app, run_worker, serve, client)


def workers_page(app: Conveyor, run_worker, serve, client: Client) -> None:
    release = threading.Event()

    @app.task(name="media.transcode")
    def transcode(n: int) -> None:
        release.wait(20)

    @app.task(name="media.probe")
    async def probe(n: int) -> None:
        import asyncio

        while not release.is_set():
            await asyncio.sleep(0.01)

    jobs = [transcode.enqueue(1), probe.enqueue(2)]
    try:
        with run_worker(app, concurrency=4, heartbeat=0.1) as worker, serve(app) as url:
            wait_for(lambda: all(j.status() == "running" for j in jobs), what="both jobs to start")
            wait_for(app.broker.workers, what="the worker's heartbeat")
            page = client.get(url + "/workers", headers=AUTH).text
            row = page[page.index(worker.id) :]
            for job, name in zip(jobs, ("media.transcode", "media.probe"), strict=True):
                assert job.id in row and name in row
            assert re.search(r"since [0-9.]+ (ms|s) ago", row)
            release.set()
            wait_for(lambda: all(j.status() == "succeeded" for j in jobs), what="both jobs to finish")
            assert "idle: no job leased" in client.get(url + "/workers", headers=AUTH).text
    finally:
        release.set()


@pytest.mark.parametrize("store", ["sqlite", "postgres", "redis"])
def test_the_tasks_page_counts_outcomes_and_run_times_per_task(
    store: str, tmp_path: Path, run_worker, serve, client: Client
) -> None:
    with store_app(store, tmp_path) as app:
        tasks_page(app, run_worker, serve, client)


def tasks_page(app: Conveyor, run_worker, serve, client: Client) -> None:
    @app.task(name="etl.load")
    def load(n: int) -> None:
        time.sleep(0.05)

    @app.task(name="etl.flaky", retry=RetryPolicy(max_attempts=3, base=0.01, max_delay=0.01))
    def flaky(n: int) -> None:
        from conveyor.context import current_job

        if current_job().attempt < 2:
            raise Retry(delay=0.01)

    @app.task(name="etl.broken", retry=RetryPolicy(max_attempts=2, base=0.01, max_delay=0.01))
    def broken(n: int) -> None:
        raise ValueError("bad row")

    jobs = [load.enqueue(i) for i in range(4)] + [flaky.enqueue(0), broken.enqueue(0)]
    with run_worker(app, concurrency=4):
        wait_for(lambda: all(j.status() in ("succeeded", "dead") for j in jobs), what="every job to finish")
    with serve(app) as url:
        page = client.get(url + "/tasks", headers=AUTH).text
    assert "last 60 minutes" in page

    def row(task: str) -> list[str]:
        match = re.search(rf"<tr><td class=\"mono task\">{re.escape(task)}</td>(.*?)</tr>", page, re.S)
        assert match, f"no row for {task}"
        return [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)
        ]

    load_row = row("etl.load")
    assert load_row[:3] == ["4", "0", "0"]
    assert load_row[3].endswith("ms") and int(load_row[3].split()[0]) >= 50  # p50 of 50 ms sleeps
    assert row("etl.flaky")[:3] == ["1", "1", "0"]
    assert row("etl.broken")[:3] == ["0", "2", "1"]
