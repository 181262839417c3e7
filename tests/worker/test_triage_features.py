"""Monitoring features are written with the triage, in its transaction (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from governance.db import Store
from governance.models import ImageFeature, ImageInference, ModelVersion
from tests.worker.test_triage import add_image, cache  # noqa: F401 (fixture)
from worker.inference import ModelCache
from worker.triage import triage_study


def test_features_of_scored_and_skipped_images_are_recorded_once(
    store: Store,
    tmp_path: Path,
    activate: Callable[..., ModelVersion],
    cache: ModelCache,  # noqa: F811
) -> None:
    study_uid = generate_uid()
    add_image(store, tmp_path, study_uid, view="PA", seed=1)
    add_image(store, tmp_path, study_uid, view="LL", seed=3)
    activate(tau=0.5)
    triage_study(store, cache, study_uid)
    triage_study(store, cache, study_uid)  # a redelivery adds nothing
    with store.read() as session:
        rows = session.scalars(select(ImageFeature).order_by(ImageFeature.id)).all()
        assert len(rows) == 2 == len(session.scalars(select(ImageInference)).all())
        scored = next(r for r in rows if r.view_position == "PA")
        skipped = next(r for r in rows if r.view_position == "LL")
        assert scored.probability is not None and scored.img_mean is not None
        assert 0.0 < scored.img_mean < 1.0 and scored.img_std is not None and scored.img_std > 0
        assert scored.img_frac_zero is not None and 0.0 <= scored.img_frac_zero <= 1.0
        assert scored.photometric and scored.bits_stored and scored.calling_ae == "TESTSCU"
        assert scored.modality == "CR" and scored.body_part == "CHEST"
        assert skipped.probability is None and skipped.img_mean is None  # lateral: not scored
