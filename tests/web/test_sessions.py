"""Web sessions, login and refusal limits, separation of duties, out-of-range parameters.

The login cookie is a server-side session (never the token) that ends when idle, at its
absolute expiry, at logout and when its token is revoked; a flood of logins or wrong tokens from
one address is answered 429 past the limit and adds at most one audit row a minute.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from cxr_triage.settings import Settings
from governance.db import Store
from governance.models import ApiToken, AuditEvent, WebSession
from governance.tokens import revoke_token
from tests.inspect_store import audit_events as _events
from tests.web.conftest import bearer
from web.app import create_app
from web.throttle import AuthThrottle, RefusalAudit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log_in(client: TestClient, token: str) -> httpx.Response:
    client.get("/login")
    return client.post(
        "/login",
        data={"token": token, "csrf": client.cookies["cxr_csrf"], "next": "/"},
        follow_redirects=False,
    )


def _refusal_rows(store: Store) -> int:
    with store.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "token_refused")
            )
            or 0
        )


def test_the_cookie_is_a_session_id_stored_hashed_not_the_token(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    response = _log_in(client, tokens["radiologist"])
    assert response.status_code == 303
    cookie = client.cookies["cxr_session"]
    assert cookie != tokens["radiologist"] and tokens["radiologist"] not in cookie
    assert cookie.startswith("cxs_")
    max_age = next(c for c in response.headers.get_list("set-cookie") if "cxr_session" in c)
    assert "max-age=43200" in max_age.lower()  # the absolute expiry, 12 hours by default
    with store.read() as session:
        rows = session.scalars(select(WebSession)).all()
        assert [r.session_hash for r in rows] == [hashlib.sha256(cookie.encode()).hexdigest()]
        assert cookie not in str([(r.session_hash, r.actor_address) for r in rows])
    assert client.get("/api/me").json()["name"] == "radiologist"
    # The session id is no token: as a bearer it is refused.
    assert client.get("/api/me", headers=bearer(cookie)).status_code == 401


def test_logout_ends_the_session_on_the_server(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    _log_in(client, tokens["auditor"])
    stolen = client.cookies["cxr_session"]
    client.post("/logout", data={"csrf": client.cookies["cxr_csrf"]}, follow_redirects=False)
    # A copy of the cookie taken before logout no longer works.
    client.cookies.set("cxr_session", stolen)
    replay = client.get("/api/me")
    assert replay.status_code == 401 and "log in again" in replay.json()["detail"]
    with store.read() as session:
        row = session.scalars(select(WebSession)).one()
        assert row.ended_at is not None and row.ended_reason == "logout"


def test_a_session_ends_when_idle_and_at_its_absolute_expiry(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    _log_in(client, tokens["radiologist"])
    assert client.get("/api/me").status_code == 200
    now = dt.datetime.now(dt.UTC)
    store.run(
        lambda s: s.execute(update(WebSession).values(last_seen_at=now - dt.timedelta(minutes=31)))
    )
    idle = client.get("/api/me")
    assert idle.status_code == 401
    reasons = [e.detail["reason"] for e in _events(store, "token_refused")]
    assert reasons == ["session idle"]

    client.cookies.clear()
    _log_in(client, tokens["radiologist"])
    assert client.get("/api/me").status_code == 200
    # Active all along, but past the absolute expiry.
    store.run(
        lambda s: s.execute(
            update(WebSession)
            .where(WebSession.ended_at.is_(None))
            .values(last_seen_at=now, expires_at=now - dt.timedelta(seconds=1))
        )
    )
    assert client.get("/api/me").status_code == 401


def test_sessions_long_expired_are_deleted_at_the_next_login(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    _log_in(client, tokens["radiologist"])
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
    store.run(lambda s: s.execute(update(WebSession).values(expires_at=long_ago)))
    client.cookies.clear()
    _log_in(client, tokens["radiologist"])
    with store.read() as session:
        assert len(session.scalars(select(WebSession)).all()) == 1


def test_a_used_session_is_kept_alive_but_written_at_most_once_a_minute(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    _log_in(client, tokens["radiologist"])
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    store.run(lambda s: s.execute(update(WebSession).values(last_seen_at=old)))
    assert client.get("/api/me").status_code == 200
    with store.read() as session:
        seen = session.scalar(select(WebSession.last_seen_at))
    assert seen is not None and seen > old + dt.timedelta(minutes=19)
    for _ in range(3):
        assert client.get("/api/me").status_code == 200
    with store.read() as session:
        assert session.scalar(select(WebSession.last_seen_at)) == seen


def test_revoking_the_token_ends_its_sessions(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    _log_in(client, tokens["radiologist"])
    assert client.get("/api/me").status_code == 200
    store.run(lambda s: revoke_token(s, "radiologist", actor="cli:pytest"))
    assert client.get("/api/me").status_code == 401
    with store.read() as session:
        row = session.scalars(select(WebSession)).one()
        assert row.ended_reason == "token revoked"
    revoked = _events(store, "token_revoked")
    assert revoked[-1].detail["sessions_ended"] == 1


def test_login_flood_is_429_past_the_limit_and_audited_once_a_minute(
    store: Store, web_settings: Settings
) -> None:
    settings = web_settings.model_copy(update={"web_auth_limit": 5})
    clock = FakeClock()
    app = create_app(settings, store)
    app.state.auth_throttle = AuthThrottle(5, clock=clock)
    app.state.refusal_audit = RefusalAudit(clock=clock)
    with TestClient(app) as client:
        client.get("/login")
        csrf = client.cookies["cxr_csrf"]
        statuses = []
        for n in range(30):
            response = client.post(
                "/login", data={"token": f"cxr_guess{n}", "csrf": csrf}, follow_redirects=False
            )
            statuses.append(response.status_code)
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429] * 25
        assert int(response.headers["retry-after"]) >= 1
        assert _refusal_rows(store) == 1  # 30 refusals, one row this minute
        clock.now += 61
        for n in range(10):
            client.post("/login", data={"token": f"cxr_again{n}", "csrf": csrf})
        events = _events(store, "token_refused")
        assert len(events) == 2  # the next minute: one more row, counting what it stands for
        assert events[0].detail["count"] == 1
        assert events[1].detail["count"] == 30  # 29 held back and this one
        assert events[1].actor_address == "testclient"


def test_refusals_held_back_are_audited_when_the_web_stops(
    store: Store, web_settings: Settings
) -> None:
    clock = FakeClock()
    app = create_app(web_settings, store)
    app.state.refusal_audit = RefusalAudit(clock=clock)
    with TestClient(app) as client:
        client.get("/login")
        csrf = client.cookies["cxr_csrf"]
        for n in range(4):
            client.post("/login", data={"token": f"cxr_guess{n}", "csrf": csrf})
        assert _refusal_rows(store) == 1  # the first now, three held back
    events = _events(store, "token_refused")  # the lifespan's shutdown wrote what was held
    assert [e.detail["count"] for e in events] == [1, 3]
    assert events[1].actor_address == "testclient"
    assert app.state.refusal_audit.drain() == []


def test_wrong_token_flood_on_the_api_is_429_and_audited_once_a_minute(
    client: TestClient, store: Store, tokens: dict[str, str]
) -> None:
    limit = client.app.state.auth_throttle.limit  # type: ignore[attr-defined]
    codes = [
        client.get("/api/worklist", headers=bearer(f"cxr_bad{n}")).status_code
        for n in range(limit + 20)
    ]
    assert codes[:limit] == [401] * limit and set(codes[limit:]) == {429}
    assert client.get("/api/worklist").status_code == 429  # no token at all, same address
    assert _refusal_rows(store) == 1
    # A valid token from that address still works: the limit stops guessing, not users.
    assert client.get("/api/me", headers=bearer(tokens["radiologist"])).status_code == 200


def test_an_admin_cannot_mint_admin_or_auditor_tokens_through_the_web(
    admin: TestClient, store: Store
) -> None:
    for role in ("admin", "auditor"):
        response = admin.post("/api/tokens", json={"name": f"new {role}", "role": role})
        assert response.status_code == 403, role
        assert "cxr-triage token create" in response.json()["detail"]
    with store.read() as session:
        names = set(session.scalars(select(ApiToken.name)))
    assert not names & {"new admin", "new auditor"}
    refused = _events(store, "token_refused")
    assert refused[0].detail["reason"] == "separation of duties"
    ok = admin.post("/api/tokens", json={"name": "reader", "role": "radiologist"})
    assert ok.status_code == 201


def test_out_of_range_query_parameters_are_422_not_500(auditor: TestClient) -> None:
    for params in (
        {"since": "99999999999d"},
        {"until": "9999999999999999999999w"},
        {"since": "99999-01-01"},
        {"before_id": str(10**30)},
    ):
        response = auditor.get("/api/audit", params=params)
        assert response.status_code == 422, (params, response.text)
