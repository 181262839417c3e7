"""A triaged study in a store without running a model: the rows the worker would write.

``triaged_study(store, folder, ...)`` copies a synthetic study (one frontal, one lateral image)
into ``folder`` as the spool, records its instances, a registered model version with a policy,
the inferences, and emits the "study triaged" event, as the worker's triage does.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import events
from governance.db import Store
from governance.models import (
    ImageInference,
    Instance,
    ModelVersion,
    Study,
    StudyInference,
    StudyStatus,
    utcnow,
)
from governance.policies import set_policy
from governance.registry import register_model


@dataclass(frozen=True)
class Triaged:
    study_instance_uid: str
    event_id: int
    frontal_uid: str
    files: list[Path]


def _model(session: Session, folder: Path, version: str) -> ModelVersion:
    existing = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if existing is not None:
        return existing
    path = folder / f"{version}.pt"
    if not path.exists():  # a test that needs a real model file puts it there first
        path.write_bytes(b"not a real model: the results tests never load it")
    model = register_model(session, version=version, path=path, input_size=64, actor="pytest")
    set_policy(
        session,
        model,
        operating_point="balanced",
        tau=0.5,
        rationale="test policy",
        approved_by="pytest",
    )
    return model


def triaged_study(
    store: Store,
    study_dir: Path,
    spool: Path,
    *,
    probability: float | None = 0.83,
    previously_flagged: bool = False,
    version: str = "demo-results",
    frontal: bool = True,
) -> Triaged:
    """Record the study of ``study_dir`` (``*.dcm``) as received and triaged; emit the event."""
    spool.mkdir(parents=True, exist_ok=True)
    files = []
    for source in sorted(study_dir.glob("*.dcm")):
        target = spool / f"{study_dir.name}-{source.name}"
        if not target.exists():
            shutil.copyfile(source, target)
        files.append(target)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    study_uid = str(headers[0].StudyInstanceUID)

    def work(session: Session) -> Triaged:
        model = _model(session, spool, version)
        policy = model.policies[-1]
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            study = Study(study_instance_uid=study_uid, status=StudyStatus.TRIAGED)
            session.add(study)
            session.flush()
            for path, ds in zip(files, headers, strict=True):
                session.add(
                    Instance(
                        study_id=study.id,
                        sop_instance_uid=str(ds.SOPInstanceUID),
                        sop_class_uid=str(ds.SOPClassUID),
                        series_instance_uid=str(ds.SeriesInstanceUID),
                        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                        path=str(path),
                        size_bytes=path.stat().st_size,
                        view_position=str(ds.get("ViewPosition", "")) or None,
                        calling_ae="PYTEST",
                    )
                )
            session.flush()
        instances = list(session.scalars(select(Instance).where(Instance.study_id == study.id)))
        front = [i for i in instances if i.view_position in ("PA", "AP")]
        now = utcnow()
        scored = front if (frontal and probability is not None) else []
        for instance in instances:
            exists = session.scalar(
                select(ImageInference).where(
                    ImageInference.instance_id == instance.id,
                    ImageInference.model_version_id == model.id,
                )
            )
            if exists is None:
                session.add(
                    ImageInference(
                        instance_id=instance.id,
                        model_version_id=model.id,
                        model_sha256=model.sha256,
                        probability=probability if instance in scored else None,
                        skipped_reason=None if instance in scored else "not a frontal view",
                        started_at=now,
                    )
                )
        flagged = bool(scored) and probability is not None and probability >= policy.tau
        result = StudyInference(
            study_id=study.id,
            model_version_id=model.id,
            model_sha256=model.sha256,
            policy_id=policy.id,
            policy_version=policy.version,
            tau=policy.tau,
            probability=probability if scored else None,
            flagged=flagged,
            images_scored=len(scored),
            images_skipped=len(instances) - len(scored),
            started_at=now - dt.timedelta(seconds=1),
            finished_at=now,
        )
        existing = session.scalar(
            select(StudyInference).where(
                StudyInference.study_id == study.id, StudyInference.model_version_id == model.id
            )
        )
        if existing is not None:
            existing.probability, existing.flagged = result.probability, flagged
            result = existing
        else:
            session.add(result)
        session.flush()
        study.result_id = result.id
        study.status = StudyStatus.TRIAGED if scored else StudyStatus.NO_FRONTAL
        study.triaged_at = now
        event = events.emit_study_triaged(
            session,
            study_id=study.id,
            study_instance_uid=study_uid,
            status=StudyStatus.TRIAGED if scored else StudyStatus.NO_FRONTAL,
            model_version_id=model.id,
            model_version=model.version,
            study_inference_id=result.id,
            probability=result.probability,
            tau=policy.tau,
            policy_version=policy.version,
            flagged=flagged,
            previously_flagged=previously_flagged,
        )
        frontal_uid = front[0].sop_instance_uid if front else ""
        return Triaged(study_uid, event.event_id, frontal_uid, files)

    return store.run(work)
