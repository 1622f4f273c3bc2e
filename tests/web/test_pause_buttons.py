"""Pause and Resume on the dashboard: POSTs authenticated and CSRF-checked like replay and cancel,
the paused state on the overview and the queue page, and the conveyor_queue_paused gauge."""

from __future__ import annotations

from test_metrics import samples
from web_helpers import AUTH, Client, csrf_of

from conveyor import Conveyor


def paused(app: Conveyor) -> list[tuple[str, str | None]]:
    return [(p.queue, p.task) for p in app.broker.paused()]


def test_pause_and_resume_a_queue_from_its_page(app: Conveyor, serve, client: Client) -> None:
    @app.task(queue="emails")
    def send() -> None: ...

    send.enqueue()
    with serve(app) as url:
        page = client.get(url + "/queues/emails", headers=AUTH).text
        assert 'action="/queues/emails/pause"' in page
        csrf = csrf_of(page)

        r = client.post(url + "/queues/emails/pause", headers=AUTH, data={"csrf": csrf})
        assert r.status_code == 303
        assert r.headers["location"] == "/queues/emails"
        assert paused(app) == [("emails", None)]

        page = client.get(url + "/queues/emails", headers=AUTH).text
        assert 'class="badge paused"' in page
        assert 'id="resume"' in page
        overview = client.get(url + "/", headers=AUTH).text
        assert 'class="badge paused"' in overview
        assert '<table id="paused">' in overview
        assert client.get(url + "/api/overview", headers=AUTH).json()["rows"][0]["paused"] is True

        r = client.post(url + "/queues/emails/resume", headers=AUTH, data={"csrf": csrf})
        assert r.status_code == 303
        assert paused(app) == []
        assert 'class="badge paused"' not in client.get(url + "/", headers=AUTH).text


def test_pause_and_resume_a_task_of_a_queue(app: Conveyor, serve, client: Client) -> None:
    with serve(app) as url:
        csrf = csrf_of(client.get(url + "/queues/emails", headers=AUTH).text)
        r = client.post(url + "/queues/emails/pause", headers=AUTH, data={"csrf": csrf, "task": "app.send"})
        assert r.status_code == 303
        assert paused(app) == [("emails", "app.send")]
        page = client.get(url + "/queues/emails", headers=AUTH).text
        assert "<code>app.send</code>" in page
        assert 'id="pause-queue"' in page  # the queue itself is not paused

        client.post(url + "/queues/emails/resume", headers=AUTH, data={"csrf": csrf, "task": "app.send"})
        assert paused(app) == []


def test_pause_without_a_valid_csrf_token_is_403_and_pauses_nothing(
    app: Conveyor, serve, client: Client
) -> None:
    with serve(app) as url:
        for data in ({}, {"csrf": "forged"}):
            assert client.post(url + "/queues/emails/pause", headers=AUTH, data=data).status_code == 403
        assert client.post(url + "/queues/emails/pause", data={"csrf": "x"}).status_code == 401
    assert paused(app) == []


def test_resume_without_a_valid_csrf_token_is_403_and_resumes_nothing(
    app: Conveyor, serve, client: Client
) -> None:
    app.pause("emails")
    with serve(app) as url:
        assert (
            client.post(url + "/queues/emails/resume", headers=AUTH, data={"csrf": "0" * 64}).status_code
            == 403
        )
        assert client.post(url + "/queues/emails/resume", data={}).status_code == 401
    assert paused(app) == [("emails", None)]


def test_bad_names_are_refused_and_pause_nothing(app: Conveyor, serve, client: Client) -> None:
    with serve(app) as url:
        csrf = csrf_of(client.get(url + "/queues/emails", headers=AUTH).text)
        r = client.post(url + "/queues/emails/pause", headers=AUTH, data={"csrf": csrf, "task": "t" * 300})
        assert r.status_code == 400
        r = client.post(url + "/queues/bad%20queue/pause", headers=AUTH, data={"csrf": csrf})
        assert r.status_code == 400
        r = client.post(url + "/queues/emails/stop", headers=AUTH, data={"csrf": csrf})
        assert r.status_code == 404
    assert paused(app) == []


def test_the_paused_gauge(app: Conveyor, serve, client: Client) -> None:
    app.pause("emails")
    app.pause("reports", task="app.build")
    with serve(app) as url:
        got = samples(client.get(url + "/metrics", headers=AUTH).text)
    assert got[("conveyor_queue_paused", (("queue", "emails"), ("task", "")))] == 1
    assert got[("conveyor_queue_paused", (("queue", "reports"), ("task", "app.build")))] == 1
    assert len([k for k in got if k[0] == "conveyor_queue_paused"]) == 2
