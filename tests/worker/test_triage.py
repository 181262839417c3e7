"""Triage of a study against a real store (SQLite and PostgreSQL) with a real TorchScript model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid
from sqlalchemy import func, select

from governance.db import Store
from governance.errors import ModelIntegrityError
from governance.models import (
    AuditEvent,
    ImageInference,
    Instance,
    ModelVersion,
    Study,
    StudyInference,
    TriageEvent,
)
from governance.studies import ReceivedInstance, record_instance
from tests.worker.builders import radiograph, write
from worker.inference import ModelCache
from worker.triage import triage_study


def receive(
    store: Store,
    path: Path,
    ds_uid: str,
    sop_uid: str,
    view: str,
    body: str,
    modality: str = "CR",
    sop_class_uid: str = ComputedRadiographyImageStorage,
    series_uid: str | None = None,
) -> None:
    item = ReceivedInstance(
        study_instance_uid=ds_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=str(path),
        size_bytes=path.stat().st_size,
        calling_ae="TESTSCU",
        modality=modality,
        view_position=view,
        body_part=body,
    )
    store.run(lambda s: record_instance(s, item))


def add_image(
    store: Store,
    tmp_path: Path,
    study_uid: str,
    *,
    view: str = "PA",
    body: str = "CHEST",
    modality: str = "CR",
    seed: int = 0,
) -> str:
    ds = radiograph(study_uid=study_uid, view=view, body_part=body, modality=modality, seed=seed)
    path = write(ds, tmp_path / study_uid / f"{ds.SOPInstanceUID}.dcm")
    receive(store, path, study_uid, ds.SOPInstanceUID, view, body, modality, ds.SOPClassUID)
    return str(ds.SOPInstanceUID)


@pytest.fixture
def cache() -> ModelCache:
    return ModelCache(device="cpu", precision="fp32")


def test_triage_scores_frontals_skips_others_and_flags(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion], cache: ModelCache
) -> None:
    study_uid = generate_uid()
    pa = add_image(store, tmp_path, study_uid, view="PA", seed=1)
    ap = add_image(store, tmp_path, study_uid, view="AP", modality="DX", seed=2)
    lateral = add_image(store, tmp_path, study_uid, view="LL", seed=3)
    knee = add_image(store, tmp_path, study_uid, view="AP", body="KNEE", seed=4)
    broken_uid = generate_uid()
    broken = tmp_path / study_uid / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    receive(store, broken, study_uid, broken_uid, "PA", "CHEST")

    model = activate(tau=0.0)  # every scored study reaches tau 0
    outcome = triage_study(store, cache, study_uid)

    assert outcome.status == "triaged"
    assert outcome.images_scored == 2 and outcome.images_skipped == 3
    assert outcome.flagged is True and outcome.tau == 0.0
    assert outcome.skipped[lateral] == "lateral view (LL)"
    assert outcome.skipped[knee] == "body part KNEE is not chest"
    assert outcome.skipped[broken_uid] == "unreadable DICOM file"
    with store.read() as session:
        rows = {
            uid: p
            for uid, p in session.execute(
                select(Instance.sop_instance_uid, ImageInference.probability).join(
                    ImageInference.instance
                )
            )
        }
        pa_probability, ap_probability = rows[pa], rows[ap]
        assert pa_probability is not None and ap_probability is not None
        assert outcome.probability == max(pa_probability, ap_probability)
        result = session.scalar(select(StudyInference))
        assert result is not None and result.model_sha256 == model.sha256
        assert result.policy_version == 1 and result.flagged
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        assert study is not None and study.result_id == result.id and study.triaged_at
        inference = session.scalar(
            select(ImageInference).where(ImageInference.probability.is_not(None))
        )
        assert inference is not None
        started, decoded = inference.started_at, inference.decoded_at
        preprocessed, inferred = inference.preprocessed_at, inference.inferred_at
        assert started is not None and decoded is not None
        assert preprocessed is not None and inferred is not None
        assert started <= decoded <= preprocessed
        assert preprocessed <= inferred
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.object_uid == study_uid)
        ).all()
        assert "study_triaged" in actions and "study_flagged" in actions


def test_flag_follows_tau(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion], cache: ModelCache
) -> None:
    study_uid = generate_uid()
    add_image(store, tmp_path, study_uid, seed=5)
    activate(tau=1.0)  # a probability below 1 never reaches it
    outcome = triage_study(store, cache, study_uid)
    assert outcome.probability is not None and outcome.probability < 1.0
    assert outcome.flagged is False


def test_triage_is_idempotent_and_picks_up_new_instances(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion], cache: ModelCache
) -> None:
    study_uid = generate_uid()
    add_image(store, tmp_path, study_uid, seed=6)
    activate(tau=0.5)
    first = triage_study(store, cache, study_uid)
    again = triage_study(store, cache, study_uid)
    assert (again.probability, again.images_scored) == (first.probability, first.images_scored)
    assert again.newly_scored == 0
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(ImageInference)) == 1
        assert session.scalar(select(StudyInference.runs)) == 1
        triaged_events = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "study_triaged")
        )
        assert triaged_events == 1
        # One "study triaged" event per recorded triage, none for a run with nothing new.
        assert session.scalar(select(func.count()).select_from(TriageEvent)) == 1

    add_image(store, tmp_path, study_uid, view="AP", seed=7)
    later = triage_study(store, cache, study_uid)
    assert later.newly_scored == 1 and later.images_scored == 2
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(ImageInference)) == 2
        assert session.scalar(select(StudyInference.runs)) == 2
        events = session.scalars(select(TriageEvent).order_by(TriageEvent.id)).all()
        assert [e.probability for e in events] == [first.probability, later.probability]
        assert events[1].study_instance_uid == study_uid and events[1].status == "triaged"
        assert events[1].previously_flagged == (first.flagged)


def test_no_active_model_leaves_study_waiting(
    store: Store, tmp_path: Path, cache: ModelCache
) -> None:
    study_uid = generate_uid()
    add_image(store, tmp_path, study_uid)
    outcome = triage_study(store, cache, study_uid)
    assert outcome.status == "no_model"
    with store.read() as session:
        study = session.scalar(select(Study))
        assert study is not None and study.status == "no_model" and study.result_id is None


def test_tampered_model_file_is_refused(
    store: Store,
    tmp_path: Path,
    activate: Callable[..., ModelVersion],
    cache: ModelCache,
    model_file: Path,
) -> None:
    study_uid = generate_uid()
    add_image(store, tmp_path, study_uid)
    model = activate(tau=0.5)
    copy = tmp_path / "tampered.pt"
    copy.write_bytes(model_file.read_bytes() + b"\0")
    store.run(lambda s: setattr(s.get(ModelVersion, model.id), "path", str(copy)))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        triage_study(store, cache, study_uid)
