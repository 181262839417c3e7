"""The admin's API on a real store: activation needs a policy, rollback, policies, tokens."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from governance.db import Store
from governance.models import ModelVersion
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from tests.inspect_store import audit_events as _events
from tests.web.conftest import Scenario, bearer


def _register(store: Store, tmp_path: Path, version: str, details: dict | None = None) -> None:
    path = tmp_path / f"{version}.pt"
    path.write_bytes(f"weights of {version}".encode())
    store.run(
        lambda s: register_model(s, version=version, path=path, input_size=224, details=details)
    )


def test_activation_without_a_policy_is_refused(
    admin: TestClient, store: Store, scenario: Scenario, tmp_path: Path
) -> None:
    _register(store, tmp_path, "no-policy")
    response = admin.post("/api/models/no-policy/activate")
    assert response.status_code == 409
    assert "no threshold policy" in response.json()["detail"]
    assert admin.get("/api/models").json()["active_version"] == scenario.model_version
    assert admin.post("/api/models/never-registered/activate").status_code == 404


def test_activate_and_roll_back_are_audited_with_the_admin(
    admin: TestClient, store: Store, scenario: Scenario
) -> None:
    body = admin.post(f"/api/models/{scenario.retired_version}/activate").json()
    assert body["active_version"] == scenario.retired_version
    statuses = {m["version"]: m["status"] for m in body["models"]}
    assert statuses == {scenario.retired_version: "active", scenario.model_version: "retired"}
    activated = _events(store, "model_activated")[-1]
    assert (activated.actor, activated.actor_address) == ("admin", "testclient")
    assert activated.detail["previous"] == scenario.model_version

    back = admin.post("/api/models/rollback").json()
    assert back["active_version"] == scenario.model_version
    rolled = _events(store, "model_rolled_back")
    assert [(e.object_uid, e.actor, e.event_code) for e in rolled] == [
        (scenario.model_version, "admin", "110100")
    ]
    assert rolled[0].detail["previous"] == scenario.retired_version


def test_rollback_with_nothing_before_is_a_409(
    admin: TestClient, store: Store, tmp_path: Path
) -> None:
    assert admin.post("/api/models/rollback").status_code == 409
    _register(store, tmp_path, "only")

    def work(session):  # type: ignore[no-untyped-def]
        model = session.scalar(select(ModelVersion).where(ModelVersion.version == "only"))
        set_policy(
            session, model, operating_point="triage", tau=0.2, rationale="r", approved_by="q"
        )
        activate_model(session, "only")

    store.run(work)
    response = admin.post("/api/models/rollback")
    assert response.status_code == 409
    assert "no previously active version" in response.json()["detail"]


def test_a_policy_takes_tau_from_the_models_recorded_operating_point(
    admin: TestClient, store: Store, tmp_path: Path
) -> None:
    # As training records them: under the criterion's name (balanced takes Youden's J).
    recorded = {
        "operating_points": {
            "youden": {
                "name": "youden",
                "tau": 0.4321,
                "criterion": "maximise sensitivity + specificity - 1",
                "validation": {"sensitivity": 0.88, "specificity": 0.81, "n": 400},
            }
        }
    }
    _register(store, tmp_path, "site-3", details=recorded)
    response = admin.post(
        "/api/policies",
        json={
            "model_version": "site-3",
            "operating_point": "balanced",
            "rationale": "SOP 7: balanced reading for outpatients",
            "approved_by": "Dr. Q, clinical lead",
        },
    )
    assert response.status_code == 201, response.text
    policy = response.json()
    assert policy["tau"] == pytest.approx(0.4321)
    assert policy["target_metric"] == "maximise sensitivity + specificity - 1"
    assert policy["validation"]["sensitivity"] == pytest.approx(0.88)
    assert policy["approved_by"] == "Dr. Q, clinical lead"
    assert policy["version"] == 1 and policy["in_force"] is True
    event = _events(store, "policy_set")[-1]
    assert event.actor == "admin" and event.object_uid == "site-3/v1"
    assert event.detail["approved_by"] == "Dr. Q, clinical lead"
    # Now it may be activated.
    assert admin.post("/api/models/site-3/activate").status_code == 200

    missing = admin.post(
        "/api/policies",
        json={"model_version": "site-3", "operating_point": "precision", "rationale": "r",
              "approved_by": "q"},
    )  # fmt: skip
    assert missing.status_code == 422 and "give tau" in missing.json()["detail"]
    bad = admin.post(
        "/api/policies",
        json={"model_version": "site-3", "operating_point": "sensitive", "tau": 0.3,
              "rationale": "r", "approved_by": "q"},
    )  # fmt: skip
    assert bad.status_code == 422
    assert admin.post(
        "/api/policies",
        json={"model_version": "nope", "operating_point": "triage", "tau": 0.3,
              "rationale": "r", "approved_by": "q"},
    ).status_code == 404  # fmt: skip


def test_tokens_are_created_listed_and_revoked_by_an_admin(
    admin: TestClient, client: TestClient, store: Store
) -> None:
    created = admin.post("/api/tokens", json={"name": "night reader", "role": "radiologist"})
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    token = created.json()["token"]
    assert token.startswith("cxr_") and len(token) >= 40
    assert created.json()["token_prefix"] == token[:12]
    me = client.get("/api/me", headers=bearer(token)).json()
    assert me == {"name": "night reader", "role": "radiologist", "token_prefix": token[:12]}

    listed = admin.get("/api/tokens").json()
    names = [t["name"] for t in listed]
    assert names == ["radiologist", "admin", "auditor", "night reader"]
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert token not in admin.get("/api/tokens").text

    again = admin.post("/api/tokens", json={"name": "night reader", "role": "radiologist"})
    assert again.status_code == 409
    assert admin.post("/api/tokens", json={"name": "x", "role": "superuser"}).status_code == 422

    revoked = admin.post("/api/tokens/night reader/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/api/me", headers=bearer(token)).status_code == 401
    assert admin.post("/api/tokens/night reader/revoke").status_code == 409
    assert admin.post("/api/tokens/nobody/revoke").status_code == 404
    created_events = [e for e in _events(store, "token_created") if e.actor == "admin"]
    assert [(e.object_uid, e.detail["role"]) for e in created_events] == [
        ("night reader", "radiologist")
    ]
    assert [e.actor for e in _events(store, "token_revoked")] == ["admin"]
    for event in created_events:
        assert token not in str(event.detail)


def test_status_shows_recent_changes_for_the_banner(
    auditor: TestClient, store: Store, scenario: Scenario
) -> None:
    status = auditor.get("/api/status").json()
    assert status["active_model"]["version"] == scenario.model_version
    assert status["active_model"]["clinical"] is False
    assert status["policy_in_force"]["version"] == scenario.policy_version
    assert status["policy_in_force"]["approved_by"] == "radiology lead"
    kinds = [change["kind"] for change in status["recent_changes"]]
    assert sorted(kinds) == ["model", "policy"]

    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)

    def age(session):  # type: ignore[no-untyped-def]
        from governance.models import ThresholdPolicy

        session.execute(update(ModelVersion).values(activated_at=two_days_ago))
        session.execute(update(ThresholdPolicy).values(effective_from=two_days_ago))

    store.run(age)
    assert auditor.get("/api/status").json()["recent_changes"] == []
    week = auditor.get("/api/status", params={"recent_hours": 72}).json()
    assert len(week["recent_changes"]) == 2
