"""Studies and instances as the gateway receives them, and their queueing state."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from governance.models import Instance, Study, StudyStatus, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """What the gateway knows of one stored instance: header attributes, no patient identifiers."""

    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    calling_ae: str
    peer_address: str | None = None
    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    manufacturer: str | None = None
    patient_sex: str | None = None
    patient_age_years: int | None = None
    patient_pseudonym: str | None = None
    received_at: dt.datetime | None = None


# The columns of an Instance row that come from a ReceivedInstance as they are.
_HEADER_COLUMNS = (
    "sop_class_uid",
    "series_instance_uid",
    "transfer_syntax_uid",
    "path",
    "size_bytes",
    "modality",
    "view_position",
    "body_part",
    "manufacturer",
    "calling_ae",
    "peer_address",
)


def record_instance(session: Session, item: ReceivedInstance) -> tuple[Instance, str | None]:
    """Record a received instance and its study; a resent SOP Instance replaces the older copy.

    Returns the instance row and the path of the file it replaced (for the caller to remove
    once the transaction has committed), or None.
    """
    now = item.received_at or utcnow()
    study = session.scalar(select(Study).where(Study.study_instance_uid == item.study_instance_uid))
    if study is None:
        study = Study(
            study_instance_uid=item.study_instance_uid,
            status=StudyStatus.RECEIVED,
            first_received_at=now,
            last_received_at=now,
            patient_sex=item.patient_sex,
            patient_age_years=item.patient_age_years,
            patient_pseudonym=item.patient_pseudonym,
        )
        session.add(study)
        session.flush()
    else:
        study.last_received_at = now
        if study.patient_sex is None:
            study.patient_sex = item.patient_sex
        if study.patient_age_years is None:
            study.patient_age_years = item.patient_age_years
        if study.patient_pseudonym is None:
            study.patient_pseudonym = item.patient_pseudonym
    instance = session.scalar(
        select(Instance).where(Instance.sop_instance_uid == item.sop_instance_uid)
    )
    replaced: str | None = None
    if instance is None:
        instance = Instance(sop_instance_uid=item.sop_instance_uid, study_id=study.id)
        session.add(instance)
    else:
        if instance.path != item.path:
            replaced = instance.path
        instance.study_id = study.id
    for column in _HEADER_COLUMNS:
        setattr(instance, column, getattr(item, column))
    instance.received_at = now
    instance.pruned_at = None  # a resent instance brings its file back
    session.flush()
    return instance, replaced


def studies_awaiting_queue(
    session: Session, older_than: dt.datetime, *, stale_before: dt.datetime | None = None
) -> list[str]:
    """Studies to hand to the broker (again).

    - those with an instance newer than their last queueing, last received before
      ``older_than``: received while the broker was down, or before a crash;
    - with ``stale_before``, those queued before it and still waiting or being triaged: their
      message may have died with a worker (the embedded filesystem broker cannot redeliver an
      unacknowledged message); and those that found no active model then, so that they are
      triaged once one is activated. Triage is idempotent, so queueing one twice costs little.
    """
    conditions = [
        and_(
            or_(Study.queued_at.is_(None), Study.queued_at < Study.last_received_at),
            Study.last_received_at <= older_than,
        )
    ]
    if stale_before is not None:
        conditions.append(
            and_(
                Study.status.in_([StudyStatus.QUEUED, StudyStatus.TRIAGING, StudyStatus.NO_MODEL]),
                Study.queued_at < stale_before,
            )
        )
    return list(session.scalars(select(Study.study_instance_uid).where(or_(*conditions))))
