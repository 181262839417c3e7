"""Logging in on the page: the session cookie, CSRF on changes, logging out, and what is audited."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance.db import Store
from tests.inspect_store import audit_events as _events
from tests.web.conftest import Scenario, bearer
from web.app import create_app


def _log_in(client: TestClient, token: str, next_path: str = "/") -> httpx.Response:
    page = client.get("/login", params={"next": next_path})
    assert page.status_code == 200
    csrf = client.cookies["cxr_csrf"]
    assert f'value="{csrf}"' in page.text
    return client.post(
        "/login",
        data={"token": token, "csrf": csrf, "next": next_path},
        follow_redirects=False,
    )


def test_login_sets_an_httponly_strict_cookie_and_is_audited(
    client: TestClient, store: Store, scenario: Scenario, tokens: dict[str, str]
) -> None:
    token = tokens["radiologist"]
    uid = scenario.uids["A"]
    response = _log_in(client, token, f"/studies/{uid}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/studies/{uid}"
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("cxr_session="))
    attributes = {part.strip().lower() for part in session.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain HTTP here; set over HTTPS
    csrf = next(c for c in cookies if c.startswith("cxr_csrf="))
    assert "httponly" not in csrf.lower()  # the page's script reads it to send the header

    assert client.get("/api/me").json()["name"] == "radiologist"
    page = client.get(f"/studies/{uid}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and f'data-uid="{uid}"' in page.text
    logins = [e for e in _events(store, "user_authenticated") if e.detail["method"] == "login"]
    assert len(logins) == 1
    assert logins[0].event_code == "110114" and logins[0].actor == "radiologist"
    assert logins[0].detail["token_prefix"] == token[:12]
    assert token not in str(logins[0].detail)
    # Opening the study page is audited as an access (110103).
    viewed = _events(store, "study_viewed")
    assert [(e.object_uid, e.event_code, e.detail["via"]) for e in viewed] == [
        (uid, "110103", "page")
    ]


def test_a_cookie_change_needs_the_csrf_header(
    client: TestClient, store: Store, scenario: Scenario, tokens: dict[str, str]
) -> None:
    _log_in(client, tokens["radiologist"])
    uid = scenario.uids["B"]
    forged = client.post(f"/api/studies/{uid}/acknowledge")
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    wrong = client.post(f"/api/studies/{uid}/acknowledge", headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    # Audited once a minute per address: the second refusal waits to be counted into the next.
    refusals = [e for e in _events(store, "token_refused") if e.detail["reason"] == "csrf"]
    assert len(refusals) == 1 and refusals[0].actor == "radiologist"
    assert _events(store, "study_acknowledged") == []
    good = client.post(
        f"/api/studies/{uid}/acknowledge", headers={"X-CSRF-Token": client.cookies["cxr_csrf"]}
    )
    assert good.status_code == 200 and good.json()["acknowledged_by"] == "radiologist"


def test_a_bearer_change_needs_no_csrf_header(radiologist: TestClient, scenario: Scenario) -> None:
    # A browser never sends an Authorization header by itself, so there is nothing to forge.
    response = radiologist.post(f"/api/studies/{scenario.uids['B']}/acknowledge")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("form", "status", "reason"),
    [
        ({"token": "cxr_nope"}, 401, "unknown token"),
        ({"token": "x", "csrf": "stale"}, 403, "csrf"),
    ],
)
def test_a_failed_login_stays_on_the_page_and_is_audited(
    client: TestClient, store: Store, form: dict[str, str], status: int, reason: str
) -> None:
    client.get("/login")
    data = {"csrf": client.cookies["cxr_csrf"], "next": "/", **form}
    response = client.post("/login", data=data, follow_redirects=False)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in response.text
    assert "cxr_session" not in client.cookies
    refusals = _events(store, "token_refused")
    assert [e.detail["reason"] for e in refusals] == [reason]
    assert refusals[0].detail["route"] == "/login" and refusals[0].event_code == "110113"


def test_login_only_returns_to_this_site(client: TestClient, tokens: dict[str, str]) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = _log_in(client, tokens["radiologist"], target)
        assert response.headers["location"] == "/", target


def test_logout_deletes_the_cookie_and_is_audited(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    _log_in(client, tokens["auditor"])
    assert client.get("/api/me").status_code == 200
    response = client.post(
        "/logout", data={"csrf": client.cookies["cxr_csrf"]}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert "cxr_session" not in client.cookies
    assert client.get("/api/me").status_code == 401
    logouts = _events(store, "user_logged_out")
    assert [(e.actor, e.event_code) for e in logouts] == [("auditor", "110114")]


def test_a_bearer_token_is_noted_once_a_minute_and_audited_once_a_session(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    from governance.models import ApiToken

    for _ in range(5):
        assert client.get("/api/me", headers=bearer(tokens["admin"])).status_code == 200
    authenticated = [e for e in _events(store, "user_authenticated") if e.actor == "admin"]
    assert len(authenticated) == 1 and authenticated[0].detail["method"] == "bearer"
    with store.read() as session:
        used = session.scalar(select(ApiToken.last_used_at).where(ApiToken.name == "admin"))
    assert used is not None


def test_a_malformed_authorization_header_is_refused(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    response = client.get("/api/me", headers={"Authorization": f"Basic {tokens['admin']}"})
    assert response.status_code == 401
    refusals = _events(store, "token_refused")
    assert [e.detail["reason"] for e in refusals] == ["malformed authorization header"]
    assert refusals[0].detail["token_prefix"] == "none"


def test_the_cookie_is_secure_over_https(
    store: Store, web_settings: Settings, tokens: dict[str, str]
) -> None:
    with TestClient(create_app(web_settings, store), base_url="https://triage.local") as client:
        response = _log_in(client, tokens["radiologist"])
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("cxr_session="))
    assert "secure" in session.lower()


def test_the_cookies_are_secure_behind_a_tls_proxy_when_configured(
    store: Store, web_settings: Settings
) -> None:
    # Behind a TLS-terminating proxy the request arrives as plain HTTP.
    def csrf_cookie(settings: Settings) -> str:
        with TestClient(create_app(settings, store), base_url="http://triage.local") as client:
            response = client.get("/login")
        return next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("cxr_csrf=")
        ).lower()

    assert "secure" not in csrf_cookie(web_settings)
    proxied = web_settings.model_copy(update={"web_secure_cookies": True})
    assert "secure" in csrf_cookie(proxied)


def test_the_study_page_sends_a_stranger_to_the_login_page(
    client: TestClient, scenario: Scenario
) -> None:
    uid = scenario.uids["A"]
    response = client.get(f"/studies/{uid}", follow_redirects=False)
    assert response.status_code == 303
    follow = client.get(response.headers["location"])
    assert follow.status_code == 200
    assert f'name="next" value="/studies/{uid}"' in follow.text


def test_a_bad_role_on_the_study_page_is_a_403_page(admin: TestClient, scenario: Scenario) -> None:
    page = admin.get(f"/studies/{scenario.uids['A']}", headers={"Accept": "text/html"})
    assert page.status_code == 403
    assert page.headers["content-type"].startswith("text/html")
    assert "radiologist role" in page.text


def test_the_web_binds_to_this_machine_by_default() -> None:
    assert Settings(_env_file=None).web_host == "127.0.0.1"  # type: ignore[call-arg]
