"""The auditor's API on a real store: the trail newest first, filters, chain verification, and
each use of the trail audited in turn."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import text

from cxr_triage.settings import Settings
from governance.audit_key import AnchorFile
from governance.db import Store, create_store_engine
from tests.governance import tampering
from tests.web.conftest import Scenario, bearer
from web.app import create_app

CONFIGURATION = {"model_registered", "policy_set", "model_activated"}


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_audit_trail_is_listed_newest_first_and_filtered(
    auditor: TestClient, scenario: Scenario
) -> None:
    events = auditor.get("/api/audit").json()
    actions = [event["action"] for event in events if event["action"] in CONFIGURATION]
    # demo-0 registered, its policy set, activated; then demo-1 with two policies, activated.
    assert actions == [
        "model_activated", "policy_set", "policy_set", "model_registered",
        "model_activated", "policy_set", "model_registered",
    ]  # fmt: skip
    times = [_time(event["occurred_at"]) for event in events]
    assert times == sorted(times, reverse=True)
    # Each event names the hash of the one before it: the chain an auditor can verify.
    for newer, older in zip(events, events[1:], strict=False):
        assert newer["prev_hash"] == older["row_hash"] and len(newer["row_hash"]) == 64
    activated = auditor.get("/api/audit", params={"action": "model_activated", "limit": 1}).json()
    assert len(activated) == 1
    assert activated[0]["object_uid"] == scenario.model_version
    assert activated[0]["event_code"] == "110100"
    assert activated[0]["detail"]["previous"] == scenario.retired_version
    about = auditor.get("/api/audit", params={"object_uid": scenario.retired_version}).json()
    assert {event["action"] for event in about} == {"model_registered", "model_activated"}
    by_pytest = auditor.get("/api/audit", params={"actor": "pytest"}).json()
    assert {event["action"] for event in by_pytest} == {"token_created"}
    # The queries above were themselves audited (110101 Audit Log Used), with their filters.
    uses = auditor.get("/api/audit", params={"action": "audit_log_used"}).json()
    assert len(uses) == 4
    assert {event["event_code"] for event in uses} == {"110101"}
    assert uses[0]["actor"] == "auditor"
    assert uses[0]["detail"]["filters"] == {"limit": 100, "actor": "pytest", "newest_first": True}
    assert uses[0]["detail"]["returned"] == 3


def test_verify_says_intact_then_names_the_edited_event(
    auditor: TestClient, store: Store, scenario: Scenario
) -> None:
    report = auditor.get("/api/audit/verify").json()
    assert report["intact"] is True and report["problem_count"] == 0
    assert report["events"] == report["head_id"] and report["events"] >= 7
    anchor = report["anchor"]
    again = auditor.get("/api/audit/verify", params={"expect_head": anchor}).json()
    assert again["intact"] is True and again["anchor_checked"] is True

    # Someone with database access edits an event behind the application's back.
    with store.engine.begin() as conn:
        if store.is_sqlite:
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
        else:
            conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change"))
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE id = 2"))
    broken = auditor.get("/api/audit/verify").json()
    assert broken["intact"] is False
    assert broken["first_bad_id"] == 2 and broken["first_problem"] == "edited"
    alerts = auditor.get("/api/audit", params={"action": "audit_tamper_detected"}).json()
    assert len(alerts) == 1 and alerts[0]["event_code"] == "110113"
    assert alerts[0]["outcome"] == "failure" and alerts[0]["detail"]["first_bad_id"] == 2


def test_a_malformed_anchor_is_a_422(auditor: TestClient) -> None:
    response = auditor.get("/api/audit/verify", params={"expect_head": "not-a-hash"})
    assert response.status_code == 422
    assert "expect_head" in response.json()["detail"]


def test_query_by_time_code_and_outcome(auditor: TestClient, client: TestClient) -> None:
    client.get("/api/worklist")  # a refusal: a security alert
    alerts = auditor.get(
        "/api/audit", params={"event_code": "110113", "outcome": "refused", "since": "1h"}
    ).json()
    assert [event["action"] for event in alerts] == ["token_refused"]
    assert alerts[0]["detail"]["route"] == "/api/worklist"
    future = auditor.get("/api/audit", params={"since": "2999-01-01T00:00Z"}).json()
    assert future == []
    bad = auditor.get("/api/audit", params={"since": "yesterday-ish"})
    assert bad.status_code == 422 and "yesterday-ish" in bad.json()["detail"]


def test_verify_with_the_servers_anchor_file(
    store: Store, web_settings: Settings, database_url: str, tokens: dict[str, str]
) -> None:
    keyed = Store(
        create_store_engine(database_url),
        audit_key=b"site-key-" * 4,
        anchors=AnchorFile(web_settings.anchor_path, 0),
    )
    with TestClient(create_app(web_settings, keyed)) as auditor:
        auditor.headers.update(bearer(tokens["auditor"]))
        auditor.get("/api/audit")  # audited: a keyed, anchored event
        report = auditor.get("/api/audit/verify", params={"anchors": "true"}).json()
        assert report["intact"] is True, report["problems"]
        assert report["anchors_checked"] >= 1 and report["keyed_events"] >= 1
        tampering.rewrite_from(database_url, 1, unkeyed=True, actor="mallory")
        broken = auditor.get("/api/audit/verify", params={"anchors": "true"}).json()
        assert broken["intact"] is False and broken["first_problem"] == "anchor"
    keyed.dispose()
