"""The "study triaged" event on SQLite and PostgreSQL: kept as an outbox row in the triage's
transaction, handed to in-process subscribers there, with after-commit work run only on commit."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance import events
from governance.db import Store
from governance.models import Study, StudyStatus, TriageEvent


def _study(session: Session, uid: str) -> Study:
    study = Study(study_instance_uid=uid, status=StudyStatus.TRIAGING)
    session.add(study)
    session.flush()
    return study


def _emit(session: Session, study: Study, *, flagged: bool, before: bool) -> events.StudyTriaged:
    return events.emit_study_triaged(
        session,
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        status=StudyStatus.TRIAGED,
        model_version_id=None,
        model_version="demo-1",
        study_inference_id=None,
        probability=0.7,
        tau=0.5,
        policy_version=2,
        flagged=flagged,
        previously_flagged=before,
    )


def test_event_row_subscribers_and_after_commit(store: Store) -> None:
    seen: list[tuple[int, bool]] = []
    committed: list[int] = []

    def subscriber(session: Session, event: events.StudyTriaged) -> None:
        # Inside the transaction: the event's row is already visible to the subscriber.
        assert session.get(TriageEvent, event.event_id) is not None
        seen.append((event.event_id, event.newly_flagged))
        events.after_commit(session, lambda: committed.append(event.event_id))

    events.subscribe(subscriber)
    try:
        event = store.run(lambda s: _emit(s, _study(s, "1.2.3.1"), flagged=True, before=False))
    finally:
        events.unsubscribe(subscriber)
    assert seen == [(event.event_id, True)]
    assert committed == [event.event_id]
    with store.read() as session:
        row = session.get(TriageEvent, event.event_id)
        assert row is not None
        assert events.StudyTriaged.of(row) == event
    assert event.flagged and not event.unflagged


def test_rolled_back_triage_leaves_no_event_and_runs_nothing(store: Store) -> None:
    committed: list[int] = []

    def subscriber(session: Session, event: events.StudyTriaged) -> None:
        events.after_commit(session, lambda: committed.append(event.event_id))

    def work(session: Session) -> None:
        _emit(session, _study(session, "1.2.3.2"), flagged=False, before=True)
        raise RuntimeError("triage failed after the event")

    events.subscribe(subscriber)
    try:
        with pytest.raises(RuntimeError):
            store.run(work)
    finally:
        events.unsubscribe(subscriber)
    assert committed == []
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(TriageEvent)) == 0
