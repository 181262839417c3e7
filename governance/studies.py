"""Studies and instances as the gateway receives them, and their queueing state."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from governance.errors import InstanceConflict, NotFound
from governance.models import Instance, Study, StudyStatus, utcnow
from governance.text import clip

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
    # Worklist fields (PHI), present only where the site keeps them (CXR_WORKLIST_PHI).
    accession_number: str | None = field(default=None, repr=False)
    study_date: str | None = field(default=None, repr=False)
    study_description: str | None = field(default=None, repr=False)


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


_NOT_NULL = {"sop_class_uid", "transfer_syntax_uid", "calling_ae"}


def record_instance(session: Session, item: ReceivedInstance) -> tuple[Instance, str | None]:
    """Record a received instance and its study; a resent SOP Instance replaces the older copy.

    Every text from the peer is cut to its column here (:func:`governance.text.clip`).
    Returns the instance row and the path of the file it replaced (for the caller to remove
    once the transaction has committed), or None.

    Raises
    ------
    InstanceConflict
        The SOP Instance UID is already stored under another study: that instance, its row and
        its file stay as they are.
    """
    now = item.received_at or utcnow()
    instance = session.scalar(
        select(Instance).where(Instance.sop_instance_uid == item.sop_instance_uid)
    )
    if instance is not None:
        owner = session.get(Study, instance.study_id)
        if owner is not None and owner.study_instance_uid != item.study_instance_uid:
            raise InstanceConflict(
                f"SOP Instance {item.sop_instance_uid} is already stored in study "
                f"{owner.study_instance_uid}"
            )
    study = find_study(session, item.study_instance_uid)
    if study is None:
        study = Study(
            study_instance_uid=item.study_instance_uid,
            status=StudyStatus.RECEIVED,
            first_received_at=now,
            last_received_at=now,
            patient_sex=clip(item.patient_sex, Study.patient_sex),
            patient_age_years=item.patient_age_years,
            patient_pseudonym=clip(item.patient_pseudonym, Study.patient_pseudonym),
            accession_number=clip(item.accession_number, Study.accession_number),
            study_date=clip(item.study_date, Study.study_date),
            study_description=clip(item.study_description, Study.study_description),
        )
        session.add(study)
        session.flush()
    else:
        study.last_received_at = now
        if study.patient_sex is None:
            study.patient_sex = clip(item.patient_sex, Study.patient_sex)
        if study.patient_age_years is None:
            study.patient_age_years = item.patient_age_years
        if study.patient_pseudonym is None:
            study.patient_pseudonym = clip(item.patient_pseudonym, Study.patient_pseudonym)
        if study.accession_number is None:
            study.accession_number = clip(item.accession_number, Study.accession_number)
        if study.study_date is None:
            study.study_date = clip(item.study_date, Study.study_date)
        if study.study_description is None:
            study.study_description = clip(item.study_description, Study.study_description)
    replaced: str | None = None
    if instance is None:
        instance = Instance(sop_instance_uid=item.sop_instance_uid, study_id=study.id)
        session.add(instance)
    else:
        if instance.path != item.path:
            replaced = instance.path
        instance.study_id = study.id
    for column in _HEADER_COLUMNS:
        value = getattr(item, column)
        if isinstance(value, str) and column != "path":
            # Peer text: printable and cut to the column (NOT NULL columns keep "").
            value = clip(value, getattr(Instance, column)) or ("" if column in _NOT_NULL else None)
        setattr(instance, column, value)
    instance.received_at = now
    instance.pruned_at = None  # a resent instance brings its file back
    session.flush()
    return instance, replaced


def studies_awaiting_queue(session: Session, older_than: dt.datetime) -> list[str]:
    """Studies to hand to the broker: those with an instance newer than their last queueing,
    last received before ``older_than`` (received while the broker was down, or before a
    crash). Messages lost after queueing are the reconciler's (:mod:`governance.reconciler`).
    """
    return list(
        session.scalars(
            select(Study.study_instance_uid).where(
                or_(Study.queued_at.is_(None), Study.queued_at < Study.last_received_at),
                Study.last_received_at <= older_than,
            )
        )
    )


def finish_delivery(session: Session, study_uid: str) -> None:
    """The task finished (whatever its outcome): its deliveries no longer count."""
    study = find_study(session, study_uid)
    if study is not None:
        study.deliveries = 0


def find_study(session: Session, study_uid: str) -> Study | None:
    """The study with this Study Instance UID, or None."""
    return session.scalar(select(Study).where(Study.study_instance_uid == study_uid))


def get_study(session: Session, study_uid: str) -> Study:
    """The study with this Study Instance UID.

    Raises
    ------
    NotFound
        The store has no such study (``no study UID``: the web answers 404 with it).
    """
    study = find_study(session, study_uid)
    if study is None:
        raise NotFound(f"no study {study_uid}")
    return study
