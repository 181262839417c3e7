"""A study's status follows from its instances and inferences (SQLite and PostgreSQL, a real
TorchScript model): re-triage with nothing new restores it, a failure whose cause is gone is
triaged by the reconciler, and a triage starts the reconciler's count again."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from governance.db import Store
from governance.errors import ModelIntegrityError
from governance.models import ModelVersion, Study, StudyStatus, TriageEvent, utcnow
from governance.policies import set_policy
from governance.reconciler import Kind, reconcile
from governance.registry import activate_model, register_model
from governance.studies import studies_awaiting_queue
from governance.triage_results import mark_queued
from tests.worker.conftest import INPUT_SIZE
from tests.worker.test_triage import add_image, receive
from worker.inference import ModelCache
from worker.triage import triage_study


@pytest.fixture
def cache() -> ModelCache:
    return ModelCache(device="cpu", precision="fp32")


def status_of(store: Store, uid: str) -> tuple[str, str | None, int]:
    with store.read() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None
        return study.status, study.status_detail, study.reconcile_attempts


def events(store: Store) -> int:
    with store.read() as session:
        return int(session.scalar(select(func.count()).select_from(TriageEvent)) or 0)


@pytest.mark.parametrize(("view", "final"), [("PA", "triaged"), ("LL", "no_frontal")])
def test_a_resent_study_with_nothing_new_gets_its_status_back(
    store: Store,
    tmp_path: Path,
    activate: Callable[..., ModelVersion],
    cache: ModelCache,
    view: str,
    final: str,
) -> None:
    uid = generate_uid()
    sop = add_image(store, tmp_path, uid, view=view, seed=1)
    activate(tau=0.5)
    assert triage_study(store, cache, uid).status == final
    assert events(store) == 1

    # The PACS pushes the study again: the same instance, queued again.
    receive(store, tmp_path / uid / f"{sop}.dcm", uid, sop, view, "CHEST")
    store.run(lambda s: mark_queued(s, [uid]))
    assert status_of(store, uid)[0] == StudyStatus.QUEUED
    outcome = triage_study(store, cache, uid)

    assert outcome.status == final and outcome.newly_scored == 0
    status, detail, _ = status_of(store, uid)
    assert status == final and (detail is None) == (final == "triaged")
    assert events(store) == 1  # nothing new: no second "study triaged"
    # ... and the sweep and the reconciler leave the up-to-date study alone.
    later = utcnow() + dt.timedelta(days=1)
    with store.read() as session:
        assert uid not in studies_awaiting_queue(session, later)
    requeued = store.run(
        lambda s: reconcile(s, grace=dt.timedelta(seconds=1), max_attempts=3, now=later)
    ).requeue
    assert requeued == {}


def test_a_failure_whose_cause_is_gone_is_triaged_by_the_reconciler(
    store: Store, tmp_path: Path, model_file: Path, cache: ModelCache
) -> None:
    copy = tmp_path / "models" / "model.pt"
    copy.parent.mkdir()
    shutil.copyfile(model_file, copy)

    def work(session):  # type: ignore[no-untyped-def]
        model = register_model(session, version="v1", path=copy, input_size=INPUT_SIZE)
        set_policy(
            session, model, operating_point="balanced", tau=0.5, rationale="t", approved_by="t"
        )
        activate_model(session, "v1")

    store.run(work)
    uid = generate_uid()
    add_image(store, tmp_path, uid, seed=2)
    store.run(lambda s: mark_queued(s, [uid], at=utcnow() - dt.timedelta(hours=1)))
    moved = copy.with_suffix(".away")
    copy.rename(moved)  # the model file is missing
    with pytest.raises(ModelIntegrityError):
        triage_study(store, cache, uid)
    from worker.tasks import _mark_failed

    _mark_failed(store, uid, "the active model's file is missing")
    assert status_of(store, uid)[0] == StudyStatus.FAILED

    moved.rename(copy)  # the cause is gone
    found = store.run(lambda s: reconcile(s, grace=dt.timedelta(minutes=1), max_attempts=3))
    assert found.requeue == {uid: Kind.FAILED}
    assert status_of(store, uid)[2] == 1
    store.run(lambda s: mark_queued(s, [uid]))
    assert triage_study(store, cache, uid).status == StudyStatus.TRIAGED
    assert status_of(store, uid) == (StudyStatus.TRIAGED, None, 0)
