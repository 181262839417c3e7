"""Synthetic triaged studies written straight into a store (bulk inserts), for drift tests and
``benchmarks/monitoring.py``: one image per study, features as the worker records them."""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from governance.models import (
    ImageFeature,
    ImageInference,
    Instance,
    ModelVersion,
    Study,
    StudyInference,
)
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from tests.governance.monitoring.synth import TAU, Studies, score_quantiles

_TABLES = (Study, Instance, ImageInference, StudyInference, ImageFeature)


def add_model(
    session: Session,
    model_file: str,
    *,
    version: str = "mon-v1",
    validation: Studies,
    effective_from: dt.datetime | None = None,
) -> ModelVersion:
    """Register and activate a model whose recorded reference is ``validation``'s scores."""
    model = register_model(
        session,
        version=version,
        path=model_file,
        input_size=64,
        details={
            "reference_distribution": {
                "source": "validation",
                "n": int(validation.scores.size),
                "quantiles": score_quantiles(validation.scores),
            }
        },
        actor="pytest",
    )
    set_policy(
        session, model, operating_point="triage", tau=TAU, rationale="test",
        approved_by="pytest", target_metric="sensitivity >= 0.9", effective_from=effective_from,
    )  # fmt: skip
    return activate_model(session, version, actor="pytest")


def insert_studies(
    session: Session,
    model: ModelVersion,
    studies: Studies,
    *,
    start: dt.datetime,
    step: dt.timedelta,
) -> dt.datetime:
    """Insert ``studies`` triaged at ``start``, ``start + step``, ...; return the next time."""
    first = {
        t: int(session.scalar(select(func.coalesce(func.max(t.id), 0))) or 0) + 1 for t in _TABLES
    }
    n = studies.scores.size
    c = studies.columns
    study_rows, instance_rows, image_rows, result_rows, feature_rows = [], [], [], [], []
    for i in range(n):
        when = start + i * step
        sid, iid = first[Study] + i, first[Instance] + i
        uid = f"2.25.{uuid.uuid4().int}"
        p = float(studies.scores[i])
        logit = float(np.log(max(p, 1e-9) / max(1 - p, 1e-9)))
        study_rows.append(
            {"id": sid, "study_instance_uid": uid, "status": "triaged", "first_received_at": when,
             "last_received_at": when, "triaged_at": when, "patient_sex": str(c["sex"][i]),
             "patient_age_years": {"18-39": 30, "40-64": 50, "65+": 70}[str(c["age_band"][i])],
             "final_read": bool(studies.labels[i]), "final_read_at": when}
        )  # fmt: skip
        instance_rows.append(
            {"id": iid, "study_id": sid, "sop_instance_uid": f"{uid}.1", "sop_class_uid": "1.2",
             "transfer_syntax_uid": "1.2.840.10008.1.2.1", "path": "/dev/null", "size_bytes": 0,
             "modality": str(c["modality"][i]), "view_position": str(c["view_position"][i]),
             "body_part": "CHEST", "manufacturer": str(c["manufacturer"][i]),
             "calling_ae": str(c["calling_ae"][i]), "received_at": when}
        )  # fmt: skip
        image_rows.append(
            {"id": first[ImageInference] + i, "instance_id": iid, "model_version_id": model.id,
             "model_sha256": model.sha256, "probability": p, "started_at": when,
             "inferred_at": when}
        )  # fmt: skip
        result_rows.append(
            {"id": first[StudyInference] + i, "study_id": sid, "model_version_id": model.id,
             "model_sha256": model.sha256, "policy_version": 1, "tau": TAU, "probability": p,
             "logit": logit, "flagged": p >= TAU, "images_scored": 1, "images_skipped": 0,
             "started_at": when, "finished_at": when, "runs": 1, "shadow": False}
        )  # fmt: skip
        feature_rows.append(
            {"id": first[ImageFeature] + i, "image_inference_id": first[ImageInference] + i,
             "study_id": sid, "model_version_id": model.id, "probability": p,
             "img_mean": float(c["img_mean"][i]), "img_std": float(c["img_std"][i]),
             "img_frac_zero": float(c["img_frac_zero"][i]),
             "img_frac_one": float(c["img_frac_one"][i]),
             "manufacturer": str(c["manufacturer"][i]), "view_position": str(c["view_position"][i]),
             "modality": str(c["modality"][i]), "body_part": "CHEST", "bits_stored": "12",
             "photometric": "MONOCHROME2", "age_band": str(c["age_band"][i]),
             "sex": str(c["sex"][i]), "calling_ae": str(c["calling_ae"][i]), "recorded_at": when}
        )  # fmt: skip
    for table, rows in zip(
        _TABLES, (study_rows, instance_rows, image_rows, result_rows, feature_rows), strict=True
    ):
        session.execute(insert(table), rows)
    if session.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            name = table.__tablename__
            session.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"(SELECT max(id) FROM {name}))"
                )
            )
    return start + n * step
