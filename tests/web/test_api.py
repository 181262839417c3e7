"""The JSON API on a real store (SQLite and PostgreSQL): worklist, studies, models, policies."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from fastapi.testclient import TestClient

from tests.web.conftest import SKIP_LATERAL, Scenario

WORKLIST_FIELDS = {
    "study_instance_uid", "flagged", "score", "tau", "model_version", "policy_version",
    "operating_point", "status", "received_at", "last_received_at", "queued_at", "triaged_at",
    "model_flagged", "priority", "priority_override", "override_reason", "overridden_by",
    "overridden_at", "acknowledged_by", "acknowledged_at", "final_read", "final_read_by",
    "final_read_at", "shadow_flagged",
    # worklist fields (null unless CXR_WORKLIST_PHI) and the viewer link
    "accession_number", "study_date", "study_description", "age_band", "sex", "viewer_url",
}  # fmt: skip


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_worklist_puts_flagged_first_by_score_then_oldest(
    radiologist: TestClient, scenario: Scenario
) -> None:
    response = radiologist.get("/api/worklist")
    assert response.status_code == 200
    rows = response.json()
    assert [row["study_instance_uid"] for row in rows] == scenario.order
    assert [row["flagged"] for row in rows] == [True, True, False, False, False]
    assert all(set(row) == WORKLIST_FIELDS for row in rows)
    first = rows[0]
    assert first["score"] == pytest.approx(0.95)
    assert first["tau"] == pytest.approx(scenario.tau)
    assert first["model_version"] == scenario.model_version
    assert first["policy_version"] == scenario.policy_version
    assert first["operating_point"] == "triage"
    assert first["status"] == "triaged"
    received = _time(first["received_at"])
    assert received == scenario.t0 + dt.timedelta(minutes=20)
    assert _time(first["triaged_at"]) - received == dt.timedelta(seconds=45)
    unscored = rows[3]
    assert unscored["study_instance_uid"] == scenario.uids["D"]
    assert unscored["status"] == "queued"
    assert unscored["score"] is None and unscored["model_version"] is None
    assert unscored["triaged_at"] is None
    # Fixed-width UTC, even for whole seconds, so that timestamps compare as text too.
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    for row in rows:
        for name in ("received_at", "last_received_at", "queued_at", "triaged_at"):
            assert row[name] is None or stamp.match(row[name]), (name, row[name])
    assert first["received_at"].endswith(".000000Z")
    # Not flagged: oldest first.
    oldest_first = [_time(row["received_at"]) for row in rows[2:]]
    assert oldest_first == sorted(oldest_first)


def test_worklist_limit_and_status_filters(radiologist: TestClient, scenario: Scenario) -> None:
    rows = radiologist.get("/api/worklist", params={"limit": 2}).json()
    assert [row["study_instance_uid"] for row in rows] == scenario.order[:2]
    queued = radiologist.get("/api/worklist", params={"status": "queued"}).json()
    assert [row["study_instance_uid"] for row in queued] == [scenario.uids["D"]]
    two = radiologist.get("/api/worklist", params=[("status", "queued"), ("status", "no_frontal")])
    assert [row["study_instance_uid"] for row in two.json()] == [
        scenario.uids["D"],
        scenario.uids["E"],
    ]
    assert radiologist.get("/api/worklist", params={"status": "failed"}).json() == []


def test_worklist_of_a_recent_period(radiologist: TestClient, scenario: Scenario) -> None:
    since = (scenario.t0 + dt.timedelta(minutes=15)).isoformat()
    rows = radiologist.get("/api/worklist", params={"received_after": since}).json()
    assert [row["study_instance_uid"] for row in rows] == [scenario.uids["B"], scenario.uids["E"]]
    zulu = (scenario.t0 + dt.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = radiologist.get("/api/worklist", params={"received_after": zulu}).json()
    assert [row["study_instance_uid"] for row in rows] == [scenario.uids["B"], scenario.uids["E"]]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": "many"}, {"status": "done"}, {"received_after": "2026-01-01T00:00"}],
)
def test_worklist_refuses_bad_parameters_in_one_line(
    radiologist: TestClient, scenario: Scenario, params: dict[str, object]
) -> None:
    response = radiologist.get("/api/worklist", params=params)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert any(word in detail for word in ("limit", "done", "received_after"))


def test_worklist_of_an_empty_store_is_an_empty_list(radiologist: TestClient) -> None:
    response = radiologist.get("/api/worklist")
    assert response.status_code == 200
    assert response.json() == []


def test_study_detail_has_images_skip_reasons_and_stage_timestamps(
    radiologist: TestClient, scenario: Scenario
) -> None:
    uid = scenario.uids["A"]
    response = radiologist.get(f"/api/studies/{uid}")
    assert response.status_code == 200
    study = response.json()
    assert study["study_instance_uid"] == uid
    assert study["status"] == "triaged"
    assert study["flagged"] is True
    assert study["score"] == pytest.approx(0.80)
    assert study["tau"] == pytest.approx(scenario.tau)
    assert study["model_version"] == scenario.model_version
    assert study["model_sha256"] == scenario.sha256
    assert study["policy_version"] == scenario.policy_version
    assert study["operating_point"] == "triage"
    assert (study["images_scored"], study["images_skipped"]) == (1, 1)

    stages = {name: _time(value) for name, value in study["timestamps"].items()}
    received = scenario.t0 + dt.timedelta(minutes=10)
    assert stages["first_received_at"] == received
    assert stages["last_received_at"] == received + dt.timedelta(seconds=2)
    assert stages["queued_at"] == received + dt.timedelta(seconds=5)
    assert stages["started_at"] == received + dt.timedelta(seconds=6)
    assert stages["finished_at"] == received + dt.timedelta(seconds=29)
    assert stages["triaged_at"] == received + dt.timedelta(seconds=30)

    images = {image["sop_instance_uid"]: image for image in study["images"]}
    assert set(images) == {f"{uid}.1", f"{uid}.2"}
    frontal, lateral = images[f"{uid}.1"], images[f"{uid}.2"]
    assert frontal["scored"] is True and frontal["skipped_reason"] is None
    assert frontal["probability"] == pytest.approx(0.80)
    assert frontal["view_position"] == "PA"
    assert _time(frontal["timestamps"]["inferred_at"]) - _time(
        frontal["timestamps"]["started_at"]
    ) == dt.timedelta(seconds=3)
    assert lateral["scored"] is False and lateral["probability"] is None
    assert lateral["skipped_reason"] == SKIP_LATERAL
    assert lateral["view_position"] == "LL"
    assert lateral["timestamps"]["inferred_at"] is None


def test_study_without_a_result_has_its_images_unscored(
    radiologist: TestClient, scenario: Scenario
) -> None:
    study = radiologist.get(f"/api/studies/{scenario.uids['D']}").json()
    assert study["status"] == "queued"
    assert study["score"] is None and study["model_version"] is None
    assert study["timestamps"]["queued_at"] is not None
    assert study["timestamps"]["triaged_at"] is None
    assert [image["scored"] for image in study["images"]] == [False]
    assert study["images"][0]["skipped_reason"] is None


def test_unknown_study_is_a_json_404(radiologist: TestClient, scenario: Scenario) -> None:
    response = radiologist.get("/api/studies/1.2.3.4.5.6")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": "no study 1.2.3.4.5.6"}


def test_models_lists_versions_checksums_and_the_active_one(
    admin: TestClient, scenario: Scenario
) -> None:
    body = admin.get("/api/models").json()
    assert body["active_version"] == scenario.model_version
    models = {model["version"]: model for model in body["models"]}
    assert set(models) == {scenario.model_version, scenario.retired_version}
    active = models[scenario.model_version]
    assert active["status"] == "active"
    assert active["sha256"] == scenario.sha256 and len(active["sha256"]) == 64
    assert active["clinical"] is False
    assert active["policy_in_force"]["version"] == scenario.policy_version
    assert active["policy_in_force"]["tau"] == pytest.approx(scenario.tau)
    assert models[scenario.retired_version]["status"] == "retired"


def test_policies_say_which_one_is_in_force(admin: TestClient, scenario: Scenario) -> None:
    policies = admin.get("/api/policies").json()
    assert [(p["model_version"], p["version"]) for p in policies] == [
        ("demo-0", 1),
        ("demo-1", 1),
        ("demo-1", 2),
    ]
    in_force = [(p["model_version"], p["version"]) for p in policies if p["in_force"]]
    assert in_force == [("demo-0", 1), ("demo-1", 2)]
    current = policies[-1]
    assert current["operating_point"] == "triage"
    assert current["tau"] == pytest.approx(0.35)
    assert current["approved_by"] == "radiology lead"
    only = admin.get("/api/policies", params={"model_version": "demo-1"}).json()
    assert [p["version"] for p in only] == [1, 2]
    assert admin.get("/api/policies", params={"model_version": "nope"}).json() == []


def test_openapi_documents_the_routes_with_their_schemas(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/api/worklist", "/api/studies/{study_instance_uid}", "/api/models",
                 "/api/policies", "/api/audit", "/healthz", "/metrics"):  # fmt: skip
        assert "get" in paths[path], path
    assert "/" not in paths  # pages are not part of the API
    schemas = document["components"]["schemas"]
    assert {"WorklistEntry", "StudyDetail", "ImageResult", "ModelsOut", "HealthOut"} <= set(schemas)
    entry = schemas["WorklistEntry"]["properties"]
    assert "flagged" in entry
    assert entry["received_at"]["format"] == "date-time"
    study_get = paths["/api/studies/{study_instance_uid}"]["get"]
    assert "404" in study_get["responses"]
    # The API says it needs a bearer token, and that it answers 401/403 without the right one.
    assert document["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert study_get["security"] == [{"token": []}]
    assert {"401", "403"} <= set(study_get["responses"])
    assert "security" not in paths["/healthz"]["get"]
    for path in ("/api/studies/{study_instance_uid}/override", "/api/models/{version}/activate",
                 "/api/policies", "/api/tokens", "/api/audit/verify"):  # fmt: skip
        assert path in paths, path
