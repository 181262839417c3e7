"""Which spooled files may go: spool retention's queries (the gateway removes the files).

A file may be removed only once its study is triaged by the active model version with nothing
left to score: the study's status is ``triaged`` or ``no_frontal``, it has a study inference by
the active version that finished before the retention cutoff, and every one of its instances
has an image inference by that version. The instance row stays (header columns, size,
inferences: what monitoring and the audit need); ``pruned_at`` says its file is gone. With no
active model version nothing is pruned.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session, aliased

from governance.models import ImageInference, Instance, Study, StudyInference, StudyStatus
from governance.registry import active_model

#: Study statuses whose files may be pruned (anything else still needs them).
PRUNABLE_STATUSES = (StudyStatus.TRIAGED, StudyStatus.NO_FRONTAL)


@dataclass(frozen=True, slots=True)
class SpooledFile:
    """An instance whose file retention may remove."""

    instance_id: int
    study_id: int
    path: str
    size_bytes: int
    received_at: dt.datetime


def prunable_files(session: Session, cutoff: dt.datetime, *, limit: int = 500) -> list[SpooledFile]:
    """Instances not yet pruned whose study was triaged by the active version before ``cutoff``.

    Parameters
    ----------
    cutoff
        A study's triage by the active version must have finished at or before this moment,
        and the instance must have been received before it.
    limit
        At most this many rows (the caller loops).
    """
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    model = active_model(session)
    if model is None:
        return []
    other = aliased(Instance)
    scored_other = aliased(ImageInference)
    unscored_sibling = exists().where(
        other.study_id == Study.id,
        ~exists().where(
            scored_other.instance_id == other.id, scored_other.model_version_id == model.id
        ),
    )
    triaged = exists().where(
        StudyInference.study_id == Study.id,
        StudyInference.model_version_id == model.id,
        StudyInference.finished_at <= cutoff,
    )
    rows = session.execute(
        select(
            Instance.id, Instance.study_id, Instance.path, Instance.size_bytes, Instance.received_at
        )
        .join(Study, Study.id == Instance.study_id)
        .where(
            Instance.pruned_at.is_(None),
            Instance.received_at <= cutoff,
            Study.status.in_(PRUNABLE_STATUSES),
            triaged,
            ~unscored_sibling,
        )
        .order_by(Instance.id)
        .limit(limit)
    ).all()
    return [SpooledFile(*row) for row in rows]


def mark_pruned(session: Session, files: list[SpooledFile], at: dt.datetime) -> int:
    """Note that these files are gone; a row whose instance was received again meanwhile (its
    ``received_at`` changed: a new file is in place) is left alone. Returns the rows marked."""
    marked = 0
    for item in files:
        result = session.execute(
            update(Instance)
            .where(
                and_(
                    Instance.id == item.instance_id,
                    Instance.received_at == item.received_at,
                    Instance.pruned_at.is_(None),
                )
            )
            .values(pruned_at=at)
            .execution_options(synchronize_session=False)
        )
        marked += int(getattr(result, "rowcount", 0) or 0)
    return marked


def spooled_bytes(session: Session) -> int:
    """Bytes the store believes are in the spool (instances not pruned)."""
    from sqlalchemy import func

    total = session.scalar(
        select(func.coalesce(func.sum(Instance.size_bytes), 0)).where(Instance.pruned_at.is_(None))
    )
    return int(total or 0)
