"""Canary secrets: a password in the store URL and a secret-named task argument appear nowhere
a user or operator looks: worker logs, CLI output and error messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster
from stores import STORES

pytestmark = pytest.mark.slow

URL_CANARY = "canary-url-5e1f9a"
ARG_CANARY = "canary-arg-77c2d0"


@pytest.fixture
def secret_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """PostgreSQL (trust auth ignores the password, so the canary can sit in a working URL)."""
    store = STORES["postgres"](tmp_path)
    store.url = store.url.replace("://postgres@", f"://postgres:{URL_CANARY}@")
    assert URL_CANARY in store.url
    cluster = Cluster(tmp_path, store)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.app.close()
        store.close()


def test_canaries_never_show(secret_cluster: Cluster, tmp_path: Path) -> None:
    cluster = secret_cluster
    from e2e_app import login

    cluster.supervisor("--processes", "1", "--log-level", "INFO")
    job = login.enqueue("ada", ARG_CANARY)
    with pytest.raises(Exception, match="login refused"):
        job.result(timeout=60)

    outputs = [
        cluster.cli("status", "e2e_app:app").stdout,
        cluster.cli("job", "e2e_app:app", job.id).stdout,
        cluster.cli("dead", "list", "e2e_app:app").stdout,
        cluster.cli("dead", "list", "e2e_app:app", "--json").stdout,
        cluster.cli("dead", "show", "e2e_app:app", job.id).stdout,
    ]
    shown = cluster.cli("dead", "show", "e2e_app:app", job.id).stdout
    assert "login refused for ada with password ***" in shown
    assert 'arguments: {"args": ["ada", "***"]' in shown
    bad = cluster.cli("job", cluster.url.replace("/test?", "/no_such_db?"), job.id, check=False)
    outputs += [bad.stdout, bad.stderr]
    assert bad.returncode != 0
    cluster.stop_all()
    logs = cluster.log_text()
    assert "login refused for ada" in logs  # the failure is logged ...
    for text in [*outputs, logs]:
        assert URL_CANARY not in text
        assert ARG_CANARY not in text  # ... with the secret masked
    # The store keeps the raw error (it holds the argument anyway); only views mask it.
    assert ARG_CANARY in job.info().errors[0]["message"]
