"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

Logs in with the token form, loads every page, replays a dead job with a click in the dead
letter queue and sees it succeed. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from web_helpers import TOKEN

from conveyor import Conveyor, RetryPolicy

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def _unavailable(reason: str) -> None:
    pytest.fail(f"{reason} (`make test` installs Debian's chromium; Playwright comes from pyproject.toml)")


@pytest.fixture
def browser() -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        _unavailable(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Conveyor]:
    monkeypatch.chdir(tmp_path)  # a short store URL in the screenshots
    app = Conveyor("sqlite:///shop.db")
    yield app
    app.close()


@pytest.mark.slow
def test_every_page_and_replaying_a_dead_job(
    shop: Conveyor, run_worker, serve, browser, tmp_path: Path
) -> None:
    app = shop
    healed = tmp_path / "healed"

    @app.task(name="shop.send_receipt", queue="emails", retry=RetryPolicy(max_attempts=1))
    def send_receipt(order: int, smtp_password: str) -> str:
        if not healed.exists():
            raise ConnectionRefusedError(f"smtp.example.com:587 refused the connection for order {order}")
        return f"receipt {order} sent"

    @app.task(name="shop.send_newsletter", queue="emails")
    def send_newsletter(user: int) -> None:
        time.sleep(random.uniform(0.005, 0.03))

    @app.task(name="media.resize_image")
    def resize_image(image: int) -> int:
        time.sleep(random.uniform(0.001, 0.01))
        return image

    @app.periodic(name="maintenance.nightly_cleanup", every=timedelta(hours=1))
    def nightly_cleanup() -> None: ...

    SHOTS.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def produce() -> None:  # a live workload for the chart
        n = 0
        while not stop.is_set():
            burst = random.randint(5, 40)
            app.enqueue_many(
                [
                    resize_image.message(n + i, priority=random.choice(["high", "normal", "low"]))
                    for i in range(burst)
                ]
                + [send_newsletter.message(n + i) for i in range(burst // 3)]
            )
            n += burst
            stop.wait(0.25)

    with run_worker(app, queues=["default", "emails"], heartbeat=0.25, concurrency=8), serve(app) as url:
        dead = send_receipt.enqueue(1042, smtp_password="hunter2-canary")
        for i in range(5):
            send_newsletter.enqueue(i, delay=600 + 60 * i)
        deadline = time.monotonic() + 15
        while dead.status() != "dead":
            assert time.monotonic() < deadline, "the failing job did not die"
            time.sleep(0.05)
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/")
            assert page.locator("h1").inner_text() == "Log in"
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(url + "/")
            assert page.locator("h1").inner_text() == "Overview"
            # While samples are few the throughput axis counts whole tasks: 0, 1, 2, never "1, 1, 0".
            assert page.evaluate("window.conveyorTicks(1.15, true)") == [0, 1, 2]
            assert page.evaluate("window.conveyorTicks(0, true)") == [0, 1]
            assert page.evaluate("window.conveyorTicks(37, true)") == [0, 10, 20, 30, 40]
            page.wait_for_timeout(9000)  # a few polls of the live chart
            marks = page.locator("#throughput").get_attribute("data-ticks").split(",")
            assert [int(m) for m in marks] == sorted({int(m) for m in marks}), marks
            assert page.locator("#workers").inner_text() == "1"
            assert page.locator("#succeeded").inner_text() not in ("", "\u2013")
            page.screenshot(path=SHOTS / "overview.png")

            page.click("#queues a[href='/queues/emails']")
            page.wait_for_url(url + "/queues/emails")
            assert "Queue emails" in page.locator("h1").inner_text()
            page.click(".tabs a:text('scheduled')")
            page.wait_for_selector("table.jobs a[href^='/jobs/']")
            page.screenshot(path=SHOTS / "queue.png")

            page.goto(url + f"/jobs/{dead.id}")
            assert page.locator("#job-state").inner_text() == "dead"
            assert "ConnectionRefusedError" in page.content()
            assert "hunter2-canary" not in page.content()
            page.screenshot(path=SHOTS / "job-dead.png", full_page=True)

            page.click("nav a:text('Dead letters')")
            page.wait_for_url(url + "/dead")
            row = page.locator("table.jobs tr", has_text=dead.id)
            assert row.count() == 1
            # The last error's message, not only its type.
            assert "refused the connection for order 1042" in row.inner_text()
            page.screenshot(path=SHOTS / "dead-letter-queue.png")

            healed.touch()  # the outside problem is fixed: replaying now succeeds
            row.locator("input[name=ids]").check()
            page.click("#replay-selected")
            page.wait_for_url("**/dead?*replayed=1*")
            assert "Replayed 1 job(s)." in page.locator(".notice").inner_text()

            page.goto(url + f"/jobs/{dead.id}")
            deadline = time.monotonic() + 15
            while page.locator("#job-state").inner_text() != "succeeded":
                assert time.monotonic() < deadline, "the replayed job did not succeed"
                page.wait_for_timeout(200)
                page.reload()
            assert "receipt 1042 sent" in page.content()
            page.screenshot(path=SHOTS / "job-replayed.png", full_page=True)

            page.click("nav a:text('Scheduled')")
            page.wait_for_url(url + "/scheduled")
            assert "nightly_cleanup" in page.content()
            page.screenshot(path=SHOTS / "scheduled.png")

            page.click("nav a:text('Workers')")
            page.wait_for_url(url + "/workers")
            assert page.locator("#workers tbody tr").count() == 2  # the worker, and what it runs
            page.screenshot(path=SHOTS / "workers.png")

            page.click("nav a:text('Tasks')")
            page.wait_for_url(url + "/tasks")
            assert "media.resize_image" in page.locator("#task-stats").inner_text()
            page.screenshot(path=SHOTS / "tasks.png")

            page.fill("#search", "1042")  # an argument of the replayed job
            page.press("#search", "Enter")
            page.wait_for_url("**/search?q=1042")
            assert page.locator(f"table.jobs a:text('{dead.id}')").count() == 1
            page.fill("#search", dead.id)  # an exact id opens the job
            page.press("#search", "Enter")
            page.wait_for_url(url + f"/jobs/{dead.id}")

            narrow = browser.new_page(viewport={"width": 420, "height": 800})
            narrow.set_extra_http_headers({"Authorization": f"Bearer {TOKEN}"})
            narrow.goto(url + "/dead")
            header = narrow.locator("header")
            assert header.evaluate("h => h.scrollWidth <= h.clientWidth")  # nothing cut off
            links = narrow.locator("header nav a")
            assert links.count() == 6
            for i in range(links.count()):
                box = links.nth(i).bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 420, box
            narrow.screenshot(path=SHOTS / "narrow-420px.png")
            for path in ("/", "/dead", "/workers", "/tasks", "/limits", f"/jobs/{dead.id}"):
                narrow.goto(url + path)
                width = narrow.evaluate("document.documentElement.scrollWidth")
                assert width <= 420, (path, width)  # wide tables scroll inside the page
            narrow.click("nav a:text('Limits')")
            narrow.wait_for_url(url + "/limits")
        finally:
            stop.set()
            producer.join(10)
    assert dead.result(timeout=5) == "receipt 1042 sent"
