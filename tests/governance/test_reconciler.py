"""The reconciler against a real store (SQLite and PostgreSQL): what it queues again, when, how
often, and what it never touches."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select, update

from dicom_gateway.spool import Spool
from governance.audit import Action
from governance.db import Store
from governance.models import AuditEvent, Instance, Study, StudyStatus, utcnow
from governance.reconcile import prepare_retry
from governance.reconciler import Kind, reconcile
from governance.triage_results import mark_queued
from tests.governance.builders import DAY_AGO, model, receive, triage

HOUR = dt.timedelta(hours=1)


def set_study(store: Store, uid: str, *, status: str, queued_at: dt.datetime | None = None) -> None:
    def work(session):  # type: ignore[no-untyped-def]
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        study.status = status
        study.queued_at = queued_at

    store.run(work)


def run(store: Store, now: dt.datetime, max_attempts: int = 3) -> dict[str, str]:
    result = store.run(lambda s: reconcile(s, grace=HOUR, max_attempts=max_attempts, now=now))
    return result.requeue


def study(store: Store, uid: str) -> tuple[str, str | None, int]:
    with store.read() as session:
        row = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert row is not None, uid
        return row.status, row.status_detail, row.reconcile_attempts


def test_a_lost_message_is_queued_again_with_backoff_then_parked_as_failed(
    store: Store, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    model(store, tmp_path, "v1")
    receive(store, spool, "1.3.1", "1.3.1.1")
    store.run(lambda s: mark_queued(s, ["1.3.1"], at=DAY_AGO))  # its message was lost
    now = utcnow()

    assert run(store, now) == {"1.3.1": Kind.NOT_TRIAGED}
    assert study(store, "1.3.1")[2] == 1
    with store.read() as session:
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.action == Action.STUDIES_REQUEUED)
        )
        assert event.detail["requeued"] == {Kind.NOT_TRIAGED: 1} and event.detail["gave_up"] == 0
    store.run(lambda s: mark_queued(s, ["1.3.1"], at=now))  # the gateway sent it
    # The next try waits twice the grace: a long queue is not a lost message.
    assert run(store, now + 1.5 * HOUR) == {}
    assert run(store, now + 2.5 * HOUR) == {"1.3.1": Kind.NOT_TRIAGED}
    store.run(lambda s: mark_queued(s, ["1.3.1"], at=now + 2.5 * HOUR))
    assert run(store, now + 7 * HOUR) == {"1.3.1": Kind.NOT_TRIAGED}
    store.run(lambda s: mark_queued(s, ["1.3.1"], at=now + 7 * HOUR))
    # Three attempts and still not triaged: parked for a person, with the reason.
    assert run(store, now + 16 * HOUR) == {}
    status, detail, attempts = study(store, "1.3.1")
    assert status == StudyStatus.FAILED and attempts == 3
    assert detail is not None and "not triaged after 3 automatic requeues" in detail
    assert run(store, now + 100 * HOUR) == {}  # and left alone from then on


def test_the_reconciler_never_picks_an_up_to_date_recent_or_pruned_study(
    store: Store, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    active = model(store, tmp_path, "v1")
    # Triaged with nothing new, but its status says queued (a duplicate message went out).
    receive(store, spool, "1.3.2", "1.3.2.1")
    triage(store, "1.3.2", active)
    set_study(store, "1.3.2", status=StudyStatus.QUEUED, queued_at=DAY_AGO)
    # Received a moment ago: within the grace.
    receive(store, spool, "1.3.3", "1.3.3.1", at=utcnow())
    # Failed, but spool retention removed its only file: nothing to triage it with.
    receive(store, spool, "1.3.4", "1.3.4.1")
    set_study(store, "1.3.4", status=StudyStatus.FAILED, queued_at=DAY_AGO)
    store.run(
        lambda s: s.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == "1.3.4.1")
            .values(pruned_at=utcnow())
        )
    )
    # Triaged only by a version no longer active: history is not re-triaged.
    old = model(store, tmp_path, "v0", active=False)
    receive(store, spool, "1.3.5", "1.3.5.1")
    triage(store, "1.3.5", old)

    assert run(store, utcnow()) == {}
    assert study(store, "1.3.2")[2] == 0


def test_dead_workers_failures_and_new_instances_are_queued_again(
    store: Store, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    active = model(store, tmp_path, "v1")
    receive(store, spool, "1.3.6", "1.3.6.1")
    set_study(store, "1.3.6", status=StudyStatus.TRIAGING, queued_at=DAY_AGO)
    receive(store, spool, "1.3.7", "1.3.7.1")
    set_study(store, "1.3.7", status=StudyStatus.FAILED, queued_at=DAY_AGO)
    # Triaged, then another instance arrived whose message was lost.
    receive(store, spool, "1.3.8", "1.3.8.1")
    triage(store, "1.3.8", active)
    receive(store, spool, "1.3.8", "1.3.8.2")
    set_study(store, "1.3.8", status=StudyStatus.TRIAGED, queued_at=DAY_AGO)
    # Failed and already retried as often as allowed: a person's turn.
    receive(store, spool, "1.3.9", "1.3.9.1")
    set_study(store, "1.3.9", status=StudyStatus.FAILED, queued_at=DAY_AGO)
    store.run(
        lambda s: s.execute(
            update(Study).where(Study.study_instance_uid == "1.3.9").values(reconcile_attempts=3)
        )
    )

    assert run(store, utcnow()) == {
        "1.3.6": Kind.WORKER_GONE,
        "1.3.7": Kind.FAILED,
        "1.3.8": Kind.NOT_TRIAGED,
    }
    assert study(store, "1.3.9") == (StudyStatus.FAILED, None, 3)


def test_nothing_is_queued_without_an_active_model(store: Store, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    model(store, tmp_path, "v1", active=False)
    receive(store, spool, "1.3.10", "1.3.10.1")
    set_study(store, "1.3.10", status=StudyStatus.NO_MODEL, queued_at=DAY_AGO)
    assert run(store, utcnow()) == {}


def test_a_long_queue_is_not_a_lost_message(store: Store, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    active = model(store, tmp_path, "v1")
    now = utcnow()
    # The workers are busy: a study queued two hours ago finished a minute ago.
    receive(store, spool, "1.3.11", "1.3.11.1", at=now - 3 * HOUR)
    triage(store, "1.3.11", active, at=now - dt.timedelta(minutes=1), queued_at=now - 2 * HOUR)
    # Queued after it, still waiting in line: not lost, whatever the grace says.
    receive(store, spool, "1.3.12", "1.3.12.1", at=now - 3 * HOUR)
    store.run(lambda s: mark_queued(s, ["1.3.12"], at=now - 1.5 * HOUR))
    assert run(store, now) == {}
    # Once a study queued after it has been started, the line has passed it: lost.
    receive(store, spool, "1.3.13", "1.3.13.1", at=now - 3 * HOUR)
    triage(store, "1.3.13", active, at=now - dt.timedelta(seconds=30), queued_at=now - HOUR)
    assert run(store, now) == {"1.3.12": Kind.NOT_TRIAGED}


def test_the_poison_guard_and_the_reconciler_count_apart_and_a_person_resets_both(
    store: Store, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    model(store, tmp_path, "v1")

    def counters(uid: str, **values: object) -> tuple[str, int, int]:
        def work(session):  # type: ignore[no-untyped-def]
            row = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            for name, value in values.items():
                setattr(row, name, value)
            return row.status, row.deliveries, row.reconcile_attempts

        return store.run(work)

    # Parked by the worker's guard: six runs started, none finished (each killed its worker).
    receive(store, spool, "1.3.20", "1.3.20.1")
    set_study(store, "1.3.20", status=StudyStatus.FAILED, queued_at=DAY_AGO)
    counters("1.3.20", deliveries=6)
    # Failed by an error the task caught (its run finished): its cause may be gone.
    receive(store, spool, "1.3.21", "1.3.21.1")
    set_study(store, "1.3.21", status=StudyStatus.FAILED, queued_at=DAY_AGO)
    # Its worker died in the middle, twice so far: a requeue keeps the guard's count.
    receive(store, spool, "1.3.22", "1.3.22.1")
    set_study(store, "1.3.22", status=StudyStatus.TRIAGING, queued_at=DAY_AGO)
    counters("1.3.22", deliveries=2)

    assert run(store, utcnow()) == {"1.3.21": Kind.FAILED, "1.3.22": Kind.WORKER_GONE}
    assert counters("1.3.20") == (StudyStatus.FAILED, 6, 0)  # left for a person
    assert counters("1.3.21") == (StudyStatus.FAILED, 0, 1)
    assert counters("1.3.22") == (StudyStatus.TRIAGING, 2, 1)  # both counts, each its own
    assert run(store, utcnow() + 100 * HOUR) == {
        "1.3.21": Kind.FAILED,
        "1.3.22": Kind.WORKER_GONE,
    }

    # A person's retry starts both counts again; then the reconciler may requeue it too.
    uids = store.run(lambda s: prepare_retry(s, actor="dr-a", study_uids=["1.3.20"]))
    assert uids == ["1.3.20"]
    assert counters("1.3.20") == (StudyStatus.QUEUED, 0, 0)
    set_study(store, "1.3.20", status=StudyStatus.FAILED, queued_at=DAY_AGO)
    assert run(store, utcnow())["1.3.20"] == Kind.FAILED
