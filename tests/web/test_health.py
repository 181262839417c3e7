"""``/healthz`` and what a user sees when the store or the broker is down."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from cxr_triage.settings import Settings
from governance.db import Store
from tests.conftest import REDIS_URL, free_port
from tests.web.conftest import Scenario
from web.app import STORE_DOWN, create_app


def test_healthz_is_ok_with_the_embedded_broker(client: TestClient, scenario: Scenario) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "store_reachable": True,
        "schema_ok": True,
        "broker": {"reachable": True, "detail": None},
        "active_model": scenario.model_version,
    }


def test_healthz_is_degraded_when_the_broker_is_down(
    store: Store, make_settings: Callable[..., Settings], database_url: str
) -> None:
    settings = make_settings(
        database_url=database_url, broker_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    with TestClient(create_app(settings, store)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["store_reachable"] is True and body["schema_ok"] is True
    assert body["broker"]["reachable"] is False
    assert body["broker"]["detail"]
    assert body["active_model"] is None


@pytest.mark.integration
def test_healthz_reaches_a_real_redis_broker(
    make_settings: Callable[..., Settings], make_database_url: Callable[[str], str]
) -> None:
    settings = make_settings(database_url=make_database_url("sqlite"), broker_url=REDIS_URL)
    with TestClient(create_app(settings)) as client:
        body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["broker"] == {"reachable": True, "detail": None}


def _assert_store_down(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert health.json()["store_reachable"] is False
    for path in ("/api/worklist", "/api/studies/1.2.3", "/api/models", "/api/policies"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.json() == {"detail": STORE_DOWN}
        assert response.headers["retry-after"] == "5"
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert "not answering" in page.text
    for text in (health.text, page.text):
        assert "Traceback" not in text and "locked" not in text and "psycopg" not in text
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "cxr_triage_store_up 0.0" in metrics.text


def test_an_unreachable_postgresql_store_answers_503_in_one_line(
    make_settings: Callable[..., Settings],
) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    settings = make_settings(database_url=url)
    with TestClient(create_app(settings)) as client:
        _assert_store_down(client)


def test_a_locked_sqlite_store_never_shows_database_is_locked(
    make_settings: Callable[..., Settings], make_database_url: Callable[[str], str]
) -> None:
    url = make_database_url("sqlite")
    path = url.removeprefix("sqlite:///")
    # A rollback-journal file with an exclusive lock blocks readers too (WAL would not).
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    store = Store(create_engine(url, connect_args={"timeout": 0.05}))
    try:
        with TestClient(create_app(make_settings(database_url=url), store)) as client:
            _assert_store_down(client)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.dispose()
