"""Every POST needs a valid CSRF token: 403 without one, and nothing changes."""

from __future__ import annotations

import base64

import pytest
from web_helpers import AUTH, Client, csrf_of, make_dead

from conveyor import Conveyor
from conveyor.web.credentials import Credentials


@pytest.fixture
def dead_app(app: Conveyor) -> Conveyor:
    @app.task
    def fails() -> None: ...

    for _ in range(3):
        fails.enqueue()
    return app


@pytest.mark.parametrize("token", [None, "", "forged", "0" * 64])
def test_post_without_a_valid_csrf_token_is_403(dead_app, serve, client: Client, token) -> None:
    dead = make_dead(dead_app)
    data = {} if token is None else {"csrf": token}
    with serve(dead_app) as url:
        for path in (f"/jobs/{dead}/replay", f"/jobs/{dead}/purge", "/dead/purge", "/dead/replay"):
            r = client.post(url + path, headers=AUTH, data={**data, "ids": dead, "scope": "matching"})
            assert r.status_code == 403, path
        r = client.post(url + "/dead/purge", headers={**AUTH, "X-CSRF-Token": "forged"}, data={"ids": dead})
        assert r.status_code == 403
    assert dead_app.broker.get(dead).state == "dead"


def test_post_with_the_pages_csrf_token_acts(dead_app, serve, client: Client) -> None:
    first, second = make_dead(dead_app), make_dead(dead_app)
    with serve(dead_app) as url:
        csrf = csrf_of(client.get(url + "/dead", headers=AUTH).text)
        r = client.post(url + f"/jobs/{first}/replay", headers=AUTH, data={"csrf": csrf})
        assert r.status_code == 303
        assert dead_app.broker.get(first).state == "ready"
        r = client.post(url + "/dead/purge", headers={**AUTH, "X-CSRF-Token": csrf}, data={"ids": second})
        assert r.status_code == 303
        assert r.headers["location"].endswith("purged=1")
    assert dead_app.broker.get(second) is None


def test_a_csrf_token_belongs_to_one_principal(dead_app, serve, client: Client) -> None:
    dead = make_dead(dead_app)
    credentials = Credentials(token="t0ken", user="admin", password="pw")
    as_basic = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}
    as_bearer = {"Authorization": "Bearer t0ken"}
    with serve(dead_app, credentials) as url:
        bearer_csrf = csrf_of(client.get(url + "/dead", headers=as_bearer).text)
        r = client.post(url + f"/jobs/{dead}/purge", headers=as_basic, data={"csrf": bearer_csrf})
        assert r.status_code == 403
        basic_csrf = csrf_of(client.get(url + "/dead", headers=as_basic).text)
        r = client.post(url + f"/jobs/{dead}/purge", headers=as_basic, data={"csrf": basic_csrf})
        assert r.status_code == 303
    assert dead_app.broker.get(dead) is None


def test_unauthenticated_post_is_401_before_csrf(dead_app, serve, client: Client) -> None:
    dead = make_dead(dead_app)
    with serve(dead_app) as url:
        assert client.post(url + f"/jobs/{dead}/purge", data={"csrf": "x"}).status_code == 401
    assert dead_app.broker.get(dead).state == "dead"
