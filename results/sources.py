"""What a report is built from: the event and inference rows, and the stored files' headers.

Headers are read from the spool without pixel data. Nothing here leaves the process except
through the report itself (the SR carries the source's patient and study modules, as it must).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.db import get_row
from governance.errors import NotFound
from governance.models import (
    DeliveryKind,
    DeliveryState,
    ImageInference,
    Instance,
    ResultDelivery,
    StudyInference,
    ThresholdPolicy,
    TriageEvent,
)
from results.sr import ReportInput

logger = logging.getLogger(__name__)


def read_header(path: str | Path) -> Dataset | None:
    """The file's header without pixel data, or None when it is gone or unreadable."""
    try:
        return dcmread(path, stop_before_pixels=True)
    except (FileNotFoundError, InvalidDicomError, OSError, ValueError, EOFError) as exc:
        logger.warning("cannot read the header of %s: %s", path, type(exc).__name__)
        return None


def report_input(session: Session, event_id: int, destination: str) -> ReportInput:
    """The report of ``event_id`` for ``destination`` (whose earlier reports it supersedes).

    Raises
    ------
    NotFound
        The event is gone, or none of the study's source files can be read any more.
    """
    event = get_row(session, TriageEvent, event_id, f"no triage event {event_id}")
    operating_point = None
    if event.study_inference_id is not None:
        inference = session.get(StudyInference, event.study_inference_id)
        if inference is not None and inference.policy_id is not None:
            policy = session.get(ThresholdPolicy, inference.policy_id)
            operating_point = policy.operating_point if policy else None
    instances = list(
        session.scalars(
            select(Instance).where(Instance.study_id == event.study_id).order_by(Instance.id)
        )
    )
    scored_ids: set[int] = set()
    if event.model_version_id is not None and event.probability is not None:
        scored_ids = set(
            session.scalars(
                select(ImageInference.instance_id).where(
                    ImageInference.model_version_id == event.model_version_id,
                    ImageInference.probability.is_not(None),
                    ImageInference.instance_id.in_([i.id for i in instances]),
                )
            )
        )
    evidence: list[Dataset] = []
    analysed: list[Dataset] = []
    for instance in instances:
        header = read_header(instance.path)
        if header is None or str(header.get("StudyInstanceUID", "")) != event.study_instance_uid:
            continue
        evidence.append(header)
        if instance.id in scored_ids:
            analysed.append(header)
    if not evidence:
        raise NotFound(
            f"study {event.study_instance_uid}: no source file left in the spool to report on"
        )
    return ReportInput(
        study_instance_uid=event.study_instance_uid,
        model_version=event.model_version or "none",
        probability=event.probability,
        tau=event.tau,
        flagged=bool(event.flagged),
        policy_version=event.policy_version,
        operating_point=operating_point,
        analysed=analysed,
        evidence=evidence,
        predecessors=predecessors(session, event, destination),
    )


def predecessors(session: Session, event: TriageEvent, destination: str) -> list[Dataset]:
    """The header of the newest report sent earlier for the same study to the same destination."""
    rows = session.scalars(
        select(ResultDelivery)
        .where(
            ResultDelivery.study_id == event.study_id,
            ResultDelivery.destination == destination,
            ResultDelivery.kind == DeliveryKind.SR,
            ResultDelivery.state == DeliveryState.SENT,
            ResultDelivery.event_id < event.id,
            ResultDelivery.path.is_not(None),
        )
        .order_by(ResultDelivery.event_id.desc())
    )
    # The newest one only: it names its own predecessor, so the chain stays linear.
    for row in rows:
        header = read_header(row.path) if row.path else None
        if header is not None:
            return [header]
    return []
