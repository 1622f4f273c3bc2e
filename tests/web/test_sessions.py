"""Login sessions: each has its own id, and logging out revokes it on pages and actions alike."""

from __future__ import annotations

import time

import httpx
import pytest
from web_helpers import TOKEN, Client, csrf_of

from conveyor import Conveyor
from conveyor.web.sessions import Sessions


@pytest.fixture
def pending(app: Conveyor) -> tuple[Conveyor, str]:
    @app.task
    def later() -> None: ...

    return app, later.enqueue(delay=3600).id


def login(client: Client, url: str) -> str:
    """A fresh session cookie from the login form."""
    page = client.get(url + "/", headers={"Accept": "text/html"})
    data = {"csrf": csrf_of(page.text), "token": TOKEN, "next": "/"}
    r = client.post(url + "/login", data=data, cookies=page.cookies)
    assert r.status_code == 303
    return str(r.cookies["conveyor_session"])


def test_two_logins_in_the_same_second_get_different_sessions(pending, serve, client: Client) -> None:
    app, _ = pending
    with serve(app) as url:
        for _ in range(5):
            before = int(time.time())
            first, second = login(client, url), login(client, url)
            if int(time.time()) == before:
                break
        else:
            pytest.fail("could not log in twice within one second")
        assert first != second


def test_logout_revokes_the_session_for_pages_and_actions(pending, serve, client: Client) -> None:
    app, job_id = pending
    with serve(app) as url:
        cookie, other = login(client, url), login(client, url)
        session = {"conveyor_session": cookie}
        page = client.get(url + f"/jobs/{job_id}", cookies=session)
        assert page.status_code == 200
        csrf = csrf_of(page.text)

        out = client.post(url + "/logout", data={"csrf": csrf}, cookies=session)
        assert out.status_code == 303
        assert 'conveyor_session=""' in out.headers["set-cookie"]

        html = {"Accept": "text/html"}
        assert client.get(url + "/", cookies=session).status_code == 401
        r = client.get(url + "/", cookies=session, headers=html)
        assert r.status_code == 401
        assert 'action="/login"' in r.text
        cancel = client.post(url + f"/jobs/{job_id}/cancel", data={"csrf": csrf}, cookies=session)
        assert cancel.status_code == 401
        assert app.broker.get(job_id).state == "scheduled"

        # Another session of the same token is unaffected.
        assert client.get(url + "/", cookies={"conveyor_session": other}).status_code == 200


def test_forged_and_malformed_session_cookies_are_401(pending, serve, capfd) -> None:
    app, _ = pending
    with serve(app) as url:
        for value in ("99999999999.x." + "0" * 64, "\xb2.x", "9" * 5000 + ".x", "..", "1.2.3.4", ""):
            # Raw header: the value goes out byte for byte (latin-1), as a hostile client sends it.
            header = f"conveyor_session={value}".encode("latin-1")
            r = httpx.get(url + "/", headers=[(b"Cookie", header)], timeout=10)
            assert r.status_code == 401, value[:20]
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "Traceback" not in capfd.readouterr().err


def test_revoked_ids_are_forgotten_when_their_session_expires() -> None:
    sessions = Sessions("token", seconds=100)
    cookie = sessions.new(now=1000.0)
    assert sessions.check(cookie, now=1050.0) is not None
    sessions.revoke(cookie, now=1050.0)
    assert sessions.check(cookie, now=1050.0) is None
    assert sessions.revoked == 1
    later = sessions.new(now=1200.0)
    sessions.revoke(later, now=1200.0)  # pruning drops the first, now expired anyway
    assert sessions.revoked == 1
    assert sessions.check(cookie, now=1200.0) is None


def test_a_full_revocation_set_ends_every_session_rather_than_forget_one() -> None:
    sessions = Sessions("token", seconds=100, max_revoked=2)
    live = sessions.new(now=0.0)
    revoked = [sessions.new(now=0.0) for _ in range(3)]
    for cookie in revoked[:2]:
        sessions.revoke(cookie, now=1.0)
    assert sessions.check(live, now=1.0) is not None
    sessions.revoke(revoked[2], now=1.0)
    assert all(sessions.check(c, now=1.0) is None for c in [live, *revoked])
    assert sessions.check(sessions.new(now=1.0), now=1.0) is not None


def test_sessions_end_with_the_process_and_with_the_token() -> None:
    cookie = Sessions("token").new(now=time.time())
    assert Sessions("token").check(cookie, now=time.time()) is None
    assert Sessions("other").check(cookie, now=time.time()) is None
