"""Audit queries on SQLite and PostgreSQL: each filter against known events, paging, and the
"decided by" answer for triage events (model, checksum, policy, tau, approver)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from governance import audit
from governance.audit import Action
from governance.audit.query import AuditQuery, iter_events, parse_time, query_events
from governance.db import Store
from governance.policies import set_policy
from governance.registry import activate_model, get_model, register_model

T0 = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)
STUDY_A = "1.2.826.0.1.3680043.10.999.65"
STUDY_B = "1.2.826.0.1.3680043.10.999.66"

# (actor, action, object_uid, outcome, hours after T0)
KNOWN = [
    ("MODALITY1", Action.INSTANCES_RECEIVED, STUDY_A, "success", 0),
    ("MODALITY2", Action.INSTANCES_RECEIVED, STUDY_B, "success", 1),
    ("BADAE", Action.ASSOCIATION_REFUSED, None, "refused", 2),
    ("dr.ann", Action.STUDY_VIEWED, STUDY_A, "success", 3),
    ("dr.bob", Action.QUERY, None, "success", 4),
    ("cli:auditor", Action.AUDIT_LOG_USED, None, "success", 5),
    ("dr_x", Action.STUDY_VIEWED, STUDY_B, "failure", 6),
]


@pytest.fixture
def known(store: Store) -> Store:
    def work(session: Any) -> None:
        for actor, action, uid, outcome, hours in KNOWN:
            audit.record(
                session,
                actor=actor,
                action=action,
                object_uid=uid,
                object_type="study" if uid else None,
                outcome=outcome,
                actor_address="10.0.0.9",
                occurred_at=T0 + dt.timedelta(hours=hours),
            )

    store.run(work)
    return store


def ids(store: Store, **filters: Any) -> list[int]:
    with store.read() as session:
        return [r.id for r in query_events(session, AuditQuery(**filters))]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, [1, 2, 3, 4, 5, 6, 7]),
        ({"since": T0 + dt.timedelta(hours=2)}, [3, 4, 5, 6, 7]),
        ({"until": T0 + dt.timedelta(hours=2)}, [1, 2]),
        ({"since": T0 + dt.timedelta(hours=1), "until": T0 + dt.timedelta(hours=4)}, [2, 3, 4]),
        ({"actor": "dr.ann"}, [4]),
        ({"actor": "MODALITY*"}, [1, 2]),
        ({"actor": "dr_*"}, [7]),  # '_' is literal, not a LIKE wildcard
        ({"actor": "dr.*"}, [4, 5]),
        ({"actions": (Action.STUDY_VIEWED,)}, [4, 7]),
        ({"actions": (Action.QUERY, Action.AUDIT_LOG_USED)}, [5, 6]),
        ({"event_codes": ("110104",)}, [1, 2]),
        ({"event_codes": ("110113", "110112")}, [3, 5]),
        ({"object_uid": STUDY_A}, [1, 4]),
        ({"outcome": "refused"}, [3]),
        ({"outcome": "failure"}, [7]),
        ({"object_uid": STUDY_B, "outcome": "success"}, [2]),
        ({"after_id": 5}, [6, 7]),
        ({"before_id": 3}, [1, 2]),
        ({"limit": 3}, [1, 2, 3]),
        ({"limit": 3, "newest_first": True}, [7, 6, 5]),
        ({"actor": "nobody"}, []),
    ],
)
def test_filters(known: Store, filters: dict[str, Any], expected: list[int]) -> None:
    assert ids(known, **filters) == expected


def test_records_carry_the_event_and_are_json_ready(known: Store) -> None:
    with known.read() as session:
        (record,) = query_events(session, AuditQuery(actor="BADAE"))
    out = record.to_dict()
    assert out["event_code"] == "110113" and out["outcome"] == "refused"
    assert out["occurred_at"] == "2026-11-02T10:00:00+00:00"
    assert out["actor_address"] == "10.0.0.9" and len(out["row_hash"]) == 64
    assert out["decided_by"] is None


def test_iter_events_pages_through_everything(known: Store) -> None:
    with known.read() as session:
        ascending = [e.id for e in iter_events(session, AuditQuery(limit=None), chunk_size=2)]
        newest = [
            e.id for e in iter_events(session, AuditQuery(limit=5, newest_first=True), chunk_size=2)
        ]
    assert ascending == [1, 2, 3, 4, 5, 6, 7]
    assert newest == [7, 6, 5, 4, 3]


def test_query_validates_its_filters() -> None:
    with pytest.raises(ValueError, match="since"):
        AuditQuery(since=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="limit"):
        AuditQuery(limit=0)
    with pytest.raises(TypeError, match="actions"):
        AuditQuery(actions="query")  # type: ignore[arg-type]
    detail = AuditQuery(actor="a", since=T0, actions=("query",)).as_detail()
    assert detail == {"actor": "a", "since": T0.isoformat(), "actions": ["query"], "limit": 1000}


def test_parse_time() -> None:
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    assert parse_time("24h", now=now) == now - dt.timedelta(hours=24)
    assert parse_time("7d", now=now) == now - dt.timedelta(days=7)
    assert parse_time("30m", now=now) == now - dt.timedelta(minutes=30)
    assert parse_time("2w", now=now) == now - dt.timedelta(weeks=2)
    assert parse_time("2026-11-25") == dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    assert parse_time("2026-11-25T08:00Z") == dt.datetime(2026, 11, 25, 8, tzinfo=dt.UTC)
    assert parse_time("2026-11-25T09:00+01:00") == dt.datetime(2026, 11, 25, 8, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="yesterday"):
        parse_time("yesterday")


def triage_detail(version: str, sha256: str, policy_version: int, tau: float) -> dict[str, Any]:
    """What the worker writes in study_triaged (worker/triage.py)."""
    return {
        "model_version": version,
        "model_sha256": sha256,
        "policy_version": policy_version,
        "tau": tau,
        "probability": 0.81,
        "flagged": True,
        "images_scored": 2,
        "images_skipped": 0,
    }


def test_decided_by_names_model_policy_and_approvers(store: Store, tmp_path: Path) -> None:
    weights = tmp_path / "m.pt"
    weights.write_bytes(b"weights of version one")
    other = tmp_path / "n.pt"
    other.write_bytes(b"weights of version two")

    def setup(session: Any) -> str:
        one = register_model(session, version="v1", path=weights, input_size=64)
        two = register_model(session, version="v2", path=other, input_size=64)
        set_policy(
            session,
            one,
            operating_point="triage",
            tau=0.3,
            rationale="SOP 12 rev A",
            approved_by="Dr. Chair",
            actor="cli:qa",
        )
        set_policy(
            session,
            two,
            operating_point="triage",
            tau=0.4,
            rationale="v2 SOP",
            approved_by="Dr. Two",
        )
        activate_model(session, "v1", actor="cli:admin1")
        return one.sha256

    sha = store.run(setup)

    def triage(uid: str, policy_version: int, tau: float, sha256: str = sha) -> None:
        def work(session: Any) -> None:
            for action in (Action.STUDY_TRIAGED, Action.STUDY_FLAGGED):
                audit.record(
                    session,
                    actor="worker",
                    action=action,
                    object_type="study",
                    object_uid=uid,
                    detail=triage_detail("v1", sha256, policy_version, tau),
                )

        store.run(work)

    triage(STUDY_A, 1, 0.3)

    def second_policy(session: Any) -> None:
        set_policy(
            session,
            get_model(session, "v1"),
            operating_point="balanced",
            tau=0.45,
            rationale="fewer false alarms, committee 2026-11",
            approved_by="Dr. Board",
        )
        activate_model(session, "v2", actor="cli:admin2")
        activate_model(session, "v1", actor="cli:admin3", action=Action.MODEL_ROLLED_BACK)

    store.run(second_policy)
    triage(STUDY_B, 2, 0.45, sha256="f" * 64)

    with store.read() as session:
        first = query_events(session, AuditQuery(object_uid=STUDY_A))
        second = query_events(session, AuditQuery(object_uid=STUDY_B))
    assert [r.action for r in first] == [Action.STUDY_TRIAGED, Action.STUDY_FLAGGED]
    decided = first[0].decided_by
    assert decided is not None and first[1].decided_by == decided
    assert decided["model_version"] == "v1" and decided["model_sha256"] == sha
    assert decided["model_sha256_matches_registry"] is True
    assert decided["model_activated_by"] == "cli:admin1"
    assert decided["policy_version"] == 1 and decided["tau"] == 0.3
    assert decided["policy"]["approved_by"] == "Dr. Chair"
    assert decided["policy"]["rationale"] == "SOP 12 rev A"
    assert decided["policy"]["set_by"] == "cli:qa"
    assert decided["policy"]["tau"] == 0.3 and decided["policy"]["operating_point"] == "triage"

    later = second[0].decided_by
    assert later is not None
    assert later["policy"]["approved_by"] == "Dr. Board" and later["policy"]["tau"] == 0.45
    assert later["policy"]["set_by"] == "Dr. Board"  # no actor given: the approver set it
    assert later["model_activated_by"] == "cli:admin3"  # the rollback, not the first activation
    assert later["model_sha256_matches_registry"] is False


def test_decided_by_when_the_model_is_unknown(store: Store) -> None:
    store.run(
        lambda s: audit.record(
            s,
            actor="worker",
            action=Action.STUDY_TRIAGED,
            object_uid=STUDY_A,
            detail=triage_detail("gone", "a" * 64, 1, 0.5),
        )
    )
    with store.read() as session:
        (record,) = query_events(session, AuditQuery(object_uid=STUDY_A))
    assert record.decided_by is not None
    assert record.decided_by["model_sha256_matches_registry"] is None
    assert record.decided_by["policy"] is None and record.decided_by["tau"] == 0.5
