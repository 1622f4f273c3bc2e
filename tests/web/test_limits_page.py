"""The dashboard's limits page: what it lists, setting and clearing a run-time limit, bad input,
and the limit gauges on /metrics."""

from __future__ import annotations

from urllib.parse import unquote_plus

from web_helpers import AUTH, Client, csrf_of

from conveyor import Conveyor, Limit
from conveyor.priority import Fairness


def test_limits_page_lists_sets_and_clears(app: Conveyor, serve, client: Client) -> None:
    @app.task(name="shop.charge", queue="payments", limits=[Limit(key="acct:{account}", concurrency=2)])
    def charge(account: str) -> None: ...

    for _ in range(3):
        charge.enqueue("a1")
    app.broker.reserve(["payments"], 5, 30.0, "w", Fairness(app.priorities.weights))

    with serve(app) as url:
        assert client.get(url + "/limits").status_code == 401
        page = client.get(url + "/limits", headers=AUTH).text
        assert "acct:a1" in page and "declared" in page
        assert "1 held back by limits" in client.get(url + "/queues/payments", headers=AUTH).text
        metrics = client.get(url + "/metrics", headers=AUTH).text
        assert 'conveyor_throttled_jobs{queue="payments"} 1.0' in metrics

        r = client.post(
            url + "/limits/set",
            headers=AUTH,
            data={"csrf": csrf_of(page), "queue": "payments", "key": "", "rate": "5/s", "concurrency": "4"},
        )
        assert r.status_code == 303 and "limit set on payments (queue)" in unquote_plus(r.headers["location"])
        (queue,) = [i for i in app.limits("payments") if i.key == ""]
        assert (queue.rate, queue.concurrency, queue.override) == (5.0, 4, True)

        metrics = client.get(url + "/metrics", headers=AUTH).text
        assert 'conveyor_limit_running{key="acct:a1",queue="payments"} 2.0' in metrics
        assert 'conveyor_limit_tokens{key="(queue)",queue="payments"}' in metrics

        r = client.post(
            url + "/limits/clear", headers=AUTH, data={"csrf": csrf_of(page), "queue": "payments"}
        )
        assert r.status_code == 303 and "cleared" in unquote_plus(r.headers["location"])
        assert [i.key for i in app.limits("payments") if i.override] == []

        # Bad input: a clear message, nothing stored; no CSRF: refused.
        r = client.post(
            url + "/limits/set",
            headers=AUTH,
            data={"csrf": csrf_of(page), "queue": "payments", "rate": "fast"},
        )
        assert r.status_code == 303 and "rate 'fast'" in unquote_plus(r.headers["location"])
        r = client.post(
            url + "/limits/set",
            headers=AUTH,
            data={"csrf": csrf_of(page), "queue": "payments", "burst": "-1"},
        )
        assert r.status_code == 400
        assert client.post(url + "/limits/set", headers=AUTH, data={"queue": "payments"}).status_code == 403
        assert [i.key for i in app.limits("payments") if i.override] == []
