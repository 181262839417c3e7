"""Who may call what: every route with every kind of caller, on SQLite and PostgreSQL.

For each route: no token and a bad or revoked token get 401, a token of another role 403, the
right role gets through; every refusal leaves a security-alert event (110113) with the route
template, the method, the role, the token's prefix (never the token) and the address. The
open routes (health, metrics, page shells, static files, login, OpenAPI) answer everyone and
record nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from governance.actions import override
from governance.db import Store
from governance.models import AuditEvent, Role
from governance.tokens import create_token, revoke_token
from tests.web.conftest import ROOT, Scenario, bearer
from web.throttle import RefusalAudit

UID = f"{ROOT}.{ord('A')}"
RAD, ADMIN, AUDITOR = (Role.RADIOLOGIST,), (Role.ADMIN,), (Role.AUDITOR,)
ANY = Role.ALL
OPEN = ("open",)


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    path: str
    allowed: tuple[str, ...]
    ok: int = 200
    body: dict[str, Any] | None = None
    prepare: Callable[[Store], None] | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def _spare_token(store: Store) -> None:
    store.run(lambda s: create_token(s, name="spare", role=Role.AUDITOR, created_by="pytest"))


def _an_override(store: Store) -> None:
    store.run(
        lambda s: override(s, UID, priority="routine", reason="seen on the prior", actor="dr x")
    )


STUDY = "/api/studies/{study_instance_uid}"
ROUTES = [
    Route("GET", "/api/me", "/api/me", ANY),
    Route("GET", "/api/status", "/api/status", ANY),
    Route("GET", "/api/worklist", "/api/worklist", RAD),
    Route("GET", STUDY, f"/api/studies/{UID}", RAD),
    Route("POST", f"{STUDY}/acknowledge", f"/api/studies/{UID}/acknowledge", RAD),
    Route(
        "POST",
        f"{STUDY}/override",
        f"/api/studies/{UID}/override",
        RAD,
        body={"priority": "routine", "reason": "old film"},
    ),
    Route(
        "POST",
        f"{STUDY}/override/clear",
        f"/api/studies/{UID}/override/clear",
        RAD,
        body={"reason": "new information"},
        prepare=_an_override,
    ),
    Route(
        "POST",
        f"{STUDY}/final-read",
        f"/api/studies/{UID}/final-read",
        RAD,
        body={"pneumonia": True},
    ),  # fmt: skip
    Route("GET", "/studies/{study_instance_uid}", f"/studies/{UID}", RAD),
    Route("GET", "/api/models", "/api/models", ADMIN),
    Route("POST", "/api/models/{version}/activate", "/api/models/demo-0/activate", ADMIN),
    Route("POST", "/api/models/rollback", "/api/models/rollback", ADMIN),
    Route("GET", "/api/policies", "/api/policies", ADMIN),
    Route(
        "POST",
        "/api/policies",
        "/api/policies",
        ADMIN,
        ok=201,
        body={
            "model_version": "demo-1",
            "operating_point": "precision",
            "tau": 0.7,
            "rationale": "fewer false alarms at night",
            "approved_by": "qa lead",
        },
    ),  # fmt: skip
    Route("GET", "/api/tokens", "/api/tokens", ADMIN),
    Route(
        "POST",
        "/api/tokens",
        "/api/tokens",
        ADMIN,
        ok=201,
        body={"name": "new reader", "role": "radiologist"},
    ),  # fmt: skip
    Route(
        "POST",
        "/api/tokens/{name}/revoke",
        "/api/tokens/spare/revoke",
        ADMIN,
        prepare=_spare_token,
    ),  # fmt: skip
    Route("GET", "/api/audit", "/api/audit", AUDITOR),
    Route("GET", "/api/audit/verify", "/api/audit/verify", AUDITOR),
    # Open: probes, Prometheus, page shells and static files hold no study data.
    Route("GET", "/healthz", "/healthz", OPEN),
    Route("GET", "/metrics", "/metrics", OPEN),
    Route("GET", "/", "/", OPEN),
    Route("GET", "/login", "/login", OPEN),
    Route("GET", "/openapi.json", "/openapi.json", OPEN),
    Route("GET", "/static/worklist.js", "/static/worklist.js", OPEN),
]

CALLERS = ("none", "bad", "revoked", *Role.ALL)


def _refusals(store: Store) -> list[AuditEvent]:
    with store.read() as session:
        events = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == "token_refused")
                .order_by(AuditEvent.id)
            )
        )
        session.expunge_all()
        return events


def _count(store: Store) -> int:
    with store.read() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _headers(caller: str, tokens: dict[str, str], revoked: str) -> dict[str, str]:
    if caller == "none":
        return {}
    if caller == "bad":
        return bearer("cxr_" + "x" * 43)
    if caller == "revoked":
        return bearer(revoked)
    return bearer(tokens[caller])


def _prefix(caller: str, tokens: dict[str, str], revoked: str) -> str:
    if caller == "none":
        return "none"
    if caller == "bad":
        return "cxr_xxxxxxxx"
    return (revoked if caller == "revoked" else tokens[caller])[:12]


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_caller_of_a_route_is_let_in_or_refused_and_audited(
    route: Route,
    client: TestClient,
    store: Store,
    scenario: Scenario,
    tokens: dict[str, str],
) -> None:
    _, revoked = store.run(
        lambda s: create_token(s, name="gone", role=Role.RADIOLOGIST, created_by="pytest")
    )
    store.run(lambda s: revoke_token(s, "gone", actor="pytest"))
    if route.prepare is not None:
        route.prepare(store)
    for caller in CALLERS:
        # Each caller as the first refusal of its address this minute (later ones are counted
        # into one event a minute: test_login_flood).
        client.app.state.refusal_audit = RefusalAudit()  # type: ignore[attr-defined]
        before = len(_refusals(store))
        events_before = _count(store)
        response = client.request(
            route.method,
            route.path,
            json=route.body,
            headers=_headers(caller, tokens, revoked),
            follow_redirects=False,
        )
        refusals = _refusals(store)
        where = f"{route} as {caller}: {response.status_code} {response.text[:200]}"
        if route.allowed == OPEN:
            assert response.status_code == route.ok, where
            assert len(refusals) == before, where
            if route.template in {"/healthz", "/metrics", "/login", "/openapi.json", "/"}:
                assert _count(store) == events_before, f"{where}: an open route wrote events"
            continue
        if caller in route.allowed:
            assert response.status_code == route.ok, where
            assert len(refusals) == before, where
            continue
        page = not route.template.startswith("/api/")
        if caller in ("none", "bad", "revoked"):
            if page:  # a person is sent to the login page and back
                assert response.status_code == 303, where
                assert response.headers["location"].startswith("/login?next=%2Fstudies%2F")
            else:
                assert response.status_code == 401, where
                assert response.headers["www-authenticate"].startswith("Bearer")
            reason = {"none": "no token", "bad": "unknown token", "revoked": "revoked token"}
            expected_reason, expected_role = reason[caller], None
        else:
            assert response.status_code == 403, where
            expected_reason, expected_role = "role", caller
        if not page:
            assert response.headers["content-type"].startswith("application/json"), where
            assert isinstance(response.json()["detail"], str)
        assert len(refusals) == before + 1, f"{where}: refusal not audited"
        event = refusals[-1]
        assert event.event_code == "110113" and event.outcome == "refused"
        assert event.object_type == "route" and event.object_uid == route.template
        assert event.actor_address == "testclient"
        detail = event.detail
        assert detail["route"] == route.template and detail["method"] == route.method
        assert detail["reason"] == expected_reason, where
        assert detail["role"] == expected_role
        assert detail["token_prefix"] == _prefix(caller, tokens, revoked)
        assert detail["required_roles"] == list(route.allowed)
        actors = {"none": "anonymous", "bad": "anonymous", "revoked": "gone"}
        assert event.actor == actors.get(caller, caller)
        # The token itself is never recorded, whoever presented it.
        for token in (*tokens.values(), revoked):
            assert token not in str(detail)
