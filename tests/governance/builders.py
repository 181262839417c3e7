"""Studies, instances and triages written straight into a store (no model run), for the
store tests of retention and the reconciler."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from sqlalchemy import select

from dicom_gateway.spool import Spool
from governance.db import Store
from governance.models import ImageInference, Study, StudyInference, StudyStatus, utcnow
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from governance.studies import ReceivedInstance, record_instance

DAY_AGO = utcnow() - dt.timedelta(days=1)


def model(store: Store, tmp_path: Path, version: str, *, active: bool = True) -> int:
    path = tmp_path / f"{version}.pt"
    path.write_bytes(version.encode())

    def work(session):  # type: ignore[no-untyped-def]
        row = register_model(session, version=version, path=path, input_size=32)
        set_policy(
            session, row, operating_point="balanced", tau=0.5, rationale="t", approved_by="pytest"
        )
        if active:
            activate_model(session, version)
        return row.id

    return store.run(work)


def receive(store: Store, spool: Spool, study: str, sop: str, *, at: dt.datetime = DAY_AGO) -> Path:
    path = spool.path_for(study, sop)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 1000)
    stamp = at.timestamp()
    os.utime(path, (stamp, stamp))
    item = ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=None,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=str(path),
        size_bytes=1000,
        calling_ae="PACS",
        view_position="PA",
        body_part="CHEST",
        received_at=at,
    )
    store.run(lambda s: record_instance(s, item))
    return path


def triage(
    store: Store,
    study_uid: str,
    model_id: int,
    *,
    at: dt.datetime = DAY_AGO,
    status: str = StudyStatus.TRIAGED,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
    queued_at: dt.datetime | None = None,
) -> None:
    """Record a triage by ``model_id`` as the worker would (no model run needed here)."""

    def work(session):  # type: ignore[no-untyped-def]
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        for instance in study.instances:
            if instance.sop_instance_uid in skip:
                continue
            session.add(
                ImageInference(
                    instance_id=instance.id,
                    model_version_id=model_id,
                    model_sha256="0" * 64,
                    probability=0.2,
                    started_at=at,
                )
            )
        session.add(
            StudyInference(
                study_id=study.id,
                model_version_id=model_id,
                model_sha256="0" * 64,
                probability=0.2,
                started_at=at,
                finished_at=at,
                queued_at=queued_at,
            )
        )
        study.status = status
        study.triaged_at = at

    store.run(work)
