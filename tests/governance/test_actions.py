"""Radiologists' actions on SQLite and PostgreSQL: acknowledge, override, final read, viewing;
each audited, and the worklist ordered by the priority a person set over the model's flag."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from governance import actions
from governance.db import Store
from governance.errors import NotFound
from governance.models import AuditEvent, Study, utcnow
from governance.worklist import study_detail, worklist, worklist_entry
from tests.web.conftest import Scenario, populate


@pytest.fixture
def scenario(store: Store, tmp_path: Path) -> Scenario:
    return populate(store, tmp_path / "models", tmp_path / "spool")


def _events(store: Store, uid: str) -> list[AuditEvent]:
    with store.read() as session:
        events = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.object_uid == uid).order_by(AuditEvent.id)
            )
        )
        session.expunge_all()
        return events


def _order(store: Store) -> list[str]:
    with store.read() as session:
        return [row["study_instance_uid"] for row in worklist(session)]


def test_acknowledge_once_and_audited(store: Store, scenario: Scenario) -> None:
    uid = scenario.uids["B"]
    done = store.run(lambda s: actions.acknowledge(s, uid, actor="dr a", actor_address="10.0.0.9"))
    assert done.changed
    again = store.run(lambda s: actions.acknowledge(s, uid, actor="dr b"))
    assert not again.changed
    with store.read() as session:
        row = worklist_entry(session, uid)
    assert row["acknowledged_by"] == "dr a" and row["acknowledged_at"] is not None
    events = [e for e in _events(store, uid) if e.action == "study_acknowledged"]
    assert len(events) == 1
    assert (events[0].actor, events[0].actor_address) == ("dr a", "10.0.0.9")
    assert events[0].detail == {"model_flagged": True, "priority": "priority"}


def test_override_up_and_down_reorders_the_worklist(store: Store, scenario: Scenario) -> None:
    uids = scenario.uids
    assert _order(store) == scenario.order  # B, A flagged; then C, D, E oldest first
    # Upwards: C (score 0.20, not flagged) becomes priority; it goes after B and A by score.
    store.run(
        lambda s: actions.override(
            s, uids["C"], priority="priority", reason="clinical concern", actor="dr a"
        )
    )
    assert _order(store) == [uids[x] for x in "BACDE"]
    # E (no frontal, no score) becomes priority too: after the scored priority studies.
    store.run(
        lambda s: actions.override(
            s, uids["E"], priority="priority", reason="lateral shows effusion", actor="dr a"
        )
    )
    assert _order(store) == [uids[x] for x in "BACED"]
    # Downwards: B (flagged 0.95) becomes routine; it goes among the routine ones by age.
    store.run(
        lambda s: actions.override(
            s, uids["B"], priority="routine", reason="known chronic change", actor="dr b"
        )
    )
    assert _order(store) == [uids[x] for x in "ACEDB"]
    with store.read() as session:
        b = worklist_entry(session, uids["B"])
        detail = study_detail(session, uids["B"])
    assert (b["flagged"], b["model_flagged"], b["priority"]) == (True, True, "routine")
    assert b["priority_override"] == "routine" and b["overridden_by"] == "dr b"
    assert b["override_reason"] == "known chronic change"
    assert detail["priority"] == "routine" and detail["overridden_by"] == "dr b"
    event = [e for e in _events(store, uids["B"]) if e.action == "study_overridden"][-1]
    assert event.detail["from"] == "priority" and event.detail["to"] == "routine"
    assert event.detail["reason"] == "known chronic change"
    assert event.detail["model_flagged"] is True and event.actor == "dr b"


def test_clearing_an_override_hands_the_priority_back_to_the_model(
    store: Store, scenario: Scenario
) -> None:
    uid = scenario.uids["A"]
    store.run(lambda s: actions.override(s, uid, priority="routine", reason="r1", actor="x"))
    store.run(lambda s: actions.clear_override(s, uid, reason="new prior arrived", actor="y"))
    with store.read() as session:
        row = worklist_entry(session, uid)
    assert row["priority_override"] is None and row["priority"] == "priority"
    assert row["overridden_by"] == "y"
    event = [e for e in _events(store, uid) if e.action == "study_overridden"][-1]
    assert event.detail["cleared"] is True
    assert (event.detail["from"], event.detail["to"]) == ("routine", "priority")
    assert event.detail["previous"] == {"priority_override": "routine", "overridden_by": "x"}
    with pytest.raises(ValueError, match="no override to clear"):
        store.run(lambda s: actions.clear_override(s, uid, reason="again", actor="y"))


@pytest.mark.parametrize(
    ("priority", "reason", "match"),
    [("urgent", "r", "priority must be"), ("routine", "  ", "reason must not be empty"),
     ("routine", "x" * 1001, "at most 1000")],
)  # fmt: skip
def test_an_override_needs_a_known_priority_and_a_reason(
    store: Store, scenario: Scenario, priority: str, reason: str, match: str
) -> None:
    uid = scenario.uids["A"]
    with pytest.raises(ValueError, match=match):
        store.run(lambda s: actions.override(s, uid, priority=priority, reason=reason, actor="x"))
    assert not [e for e in _events(store, uid) if e.action == "study_overridden"]


def test_the_final_read_and_its_correction_are_kept(store: Store, scenario: Scenario) -> None:
    uid = scenario.uids["C"]
    store.run(lambda s: actions.record_final_read(s, uid, pneumonia=False, actor="dr a"))
    store.run(lambda s: actions.record_final_read(s, uid, pneumonia=True, actor="dr b"))
    with store.read() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        assert (study.final_read, study.final_read_by) == (True, "dr b")
    reads = [e for e in _events(store, uid) if e.action == "final_read_recorded"]
    assert [(e.actor, e.detail["pneumonia"], e.detail["previous"]) for e in reads] == [
        ("dr a", False, None),
        ("dr b", True, False),
    ]
    assert reads[0].detail["model_version"] == scenario.model_version
    assert reads[0].detail["probability"] == pytest.approx(0.20)
    with pytest.raises(TypeError, match="pneumonia must be a bool"):
        store.run(lambda s: actions.record_final_read(s, uid, pneumonia=1, actor="x"))  # type: ignore[arg-type]


def test_actions_on_an_unknown_study_are_not_found(store: Store, scenario: Scenario) -> None:
    for act in (
        lambda s: actions.acknowledge(s, "1.2.3", actor="x"),
        lambda s: actions.override(s, "1.2.3", priority="priority", reason="r", actor="x"),
        lambda s: actions.record_final_read(s, "1.2.3", pneumonia=True, actor="x"),
        lambda s: actions.record_study_viewed(s, "1.2.3", actor="x"),
    ):
        with pytest.raises(NotFound):
            store.run(act)


def test_a_viewing_is_audited_once_per_person_in_ten_minutes(
    store: Store, scenario: Scenario
) -> None:
    uid = scenario.uids["A"]
    t0 = utcnow()

    def view(actor: str, at: dt.datetime) -> bool:
        return store.run(lambda s: actions.record_study_viewed(s, uid, actor=actor, now=at))

    assert view("dr a", t0) is True
    assert view("dr a", t0 + dt.timedelta(minutes=5)) is False
    assert view("dr b", t0 + dt.timedelta(minutes=5)) is True
    assert view("dr a", t0 + dt.timedelta(minutes=11)) is True
    viewed = [e for e in _events(store, uid) if e.action == "study_viewed"]
    assert [(e.actor, e.event_code) for e in viewed] == [
        ("dr a", "110103"), ("dr b", "110103"), ("dr a", "110103"),
    ]  # fmt: skip
