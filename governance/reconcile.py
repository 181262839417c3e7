"""Studies that need another try: listing them for people, and queueing them again.

A person retries a study with ``cxr-triage study retry``: :func:`prepare_retry` marks the
studies queued (their reconciler attempts and unfinished task runs count from zero again) and
writes one audit event, and the caller sends the Celery messages once that has committed. The
automatic reconciler lives in :mod:`governance.reconciler`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import audit, triage_results
from governance.errors import NotFound
from governance.models import Study, StudyStatus, utcnow
from governance.rows import from_attributes

#: The most studies one retry or listing handles (a person runs it again for more).
MAX_STUDIES = 1000

ALL_STATUSES = tuple(StudyStatus)


@dataclass(frozen=True, slots=True)
class StudySummary:
    """One study as ``cxr-triage study list`` shows it (UIDs and times, no patient data).

    Each field is named as the Study attribute it comes from.
    """

    study_instance_uid: str
    status: str
    status_detail: str | None
    instances: int
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    queued_at: dt.datetime | None
    triaged_at: dt.datetime | None
    reconcile_attempts: int

    def as_json(self) -> dict[str, Any]:
        values = asdict(self)
        for key, value in values.items():
            if isinstance(value, dt.datetime):
                values[key] = value.isoformat()
        return values


def list_studies(
    session: Session, *, status: str | None = None, limit: int = 100
) -> list[StudySummary]:
    """Studies, the most recently received first; only ``status`` ones if given."""
    if not 1 <= limit <= MAX_STUDIES:
        raise ValueError(f"limit must be between 1 and {MAX_STUDIES}, got {limit}")
    if status is not None and status not in ALL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(ALL_STATUSES)}, got {status!r}")
    query = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Study.status == status)
    return [
        from_attributes(
            StudySummary,
            study,
            instances=len(study.instances),
            reconcile_attempts=study.reconcile_attempts or 0,
        )
        for study in session.scalars(query)
    ]


def prepare_retry(
    session: Session,
    *,
    actor: str,
    study_uids: list[str] | None = None,
    failed: bool = False,
    limit: int = 100,
    actor_address: str | None = None,
) -> list[str]:
    """Mark studies queued again for a person's retry and audit it (one event); their UIDs.

    Either ``study_uids`` (each must exist; a study being triaged keeps that status until its
    worker records it) or ``failed=True`` (the FAILED studies, oldest first, at most ``limit``). The
    caller sends one message per returned UID after the transaction commits.

    Raises
    ------
    NotFound
        A given Study Instance UID is not in the store.
    ValueError
        Neither or both of ``study_uids`` and ``failed``, or a bad ``limit``.
    """
    if bool(study_uids) == failed:
        raise ValueError("give either study_uids or failed=True")
    if not 1 <= limit <= MAX_STUDIES:
        raise ValueError(f"limit must be between 1 and {MAX_STUDIES}, got {limit}")
    if study_uids:
        if len(study_uids) > limit:
            raise ValueError(f"at most {limit} studies at once, got {len(study_uids)}")
        wanted = list(dict.fromkeys(study_uids))
        found = {
            s.study_instance_uid: s
            for s in session.scalars(select(Study).where(Study.study_instance_uid.in_(wanted)))
        }
        missing = [uid for uid in wanted if uid not in found]
        if missing:
            raise NotFound(f"no study {missing[0]} in the store ({len(missing)} unknown)")
        studies = [found[uid] for uid in wanted]
    else:
        studies = list(
            session.scalars(
                select(Study)
                .where(Study.status == StudyStatus.FAILED)
                .order_by(Study.last_received_at, Study.id)
                .limit(limit)
            )
        )
    if not studies:
        return []
    previous: dict[str, int] = {}
    for study in studies:
        previous[study.status] = previous.get(study.status, 0) + 1
        # A person's retry starts both counts again (governance.reconciler says why two).
        study.reconcile_attempts = 0
        study.deliveries = 0
    uids = [study.study_instance_uid for study in studies]
    triage_results.mark_queued(session, uids, utcnow())
    audit.record(
        session,
        "study",
        uids[0] if len(uids) == 1 else None,
        actor=actor,
        actor_address=actor_address,
        action=audit.Action.STUDIES_REQUEUED,
        detail={
            "by": "person",
            "count": len(uids),
            "previous_status": previous,
            "study_instance_uids": uids,
        },
    )
    return uids
