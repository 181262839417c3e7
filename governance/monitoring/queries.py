"""The SQL that feeds drift: windows of studies, category counts and image statistics.

The database does the aggregation (GROUP BY for categories, indexed ranges for windows); Python
receives at most one window's scores and image statistics as arrays, never a scan of the store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Subquery, and_, func, select
from sqlalchemy.orm import Session

from governance.models import DriftBaseline, ImageFeature, ModelVersion, StudyInference
from governance.monitoring.drift import CATEGORICAL_FEATURES, IMAGE_FEATURES
from governance.rows import newest


@dataclass(frozen=True, slots=True)
class Span:
    """A window of one model version's studies: finished_at in [start, end]."""

    model_version_id: int
    start: dt.datetime
    end: dt.datetime
    n: int
    source: str


def _scored(model_version_id: int) -> ColumnElement[bool]:
    return and_(
        StudyInference.model_version_id == model_version_id,
        StudyInference.probability.is_not(None),
    )


def baseline_span(session: Session, model: ModelVersion, *, size: int) -> Span | None:
    """The admin-pinned period, else the first ``size`` scored studies after activation."""
    pinned = newest(session, DriftBaseline, model.id)
    if pinned is not None:
        n = session.scalar(
            select(func.count()).where(
                _scored(model.id),
                StudyInference.finished_at.between(pinned.starts_at, pinned.ends_at),
            )
        )
        return Span(model.id, pinned.starts_at, pinned.ends_at, int(n or 0), "pinned")
    first = (
        select(StudyInference.finished_at)
        .where(_scored(model.id))
        .order_by(StudyInference.finished_at, StudyInference.id)
        .limit(size)
        .subquery()
    )
    return _span(session, model, first, f"first {size} studies")


def window_span(
    session: Session,
    model: ModelVersion,
    *,
    now: dt.datetime,
    days: float,
    size: int,
    after: dt.datetime | None,
) -> Span | None:
    """The last ``size`` scored studies of the last ``days`` days, whichever are fewer,
    after the baseline."""
    since = now - dt.timedelta(days=days)
    if after is not None and after > since:
        since = after
    last = (
        select(StudyInference.finished_at)
        .where(
            _scored(model.id),
            StudyInference.finished_at > since,
            StudyInference.finished_at <= now,
        )
        .order_by(StudyInference.finished_at.desc(), StudyInference.id.desc())
        .limit(size)
        .subquery()
    )
    return _span(session, model, last, f"last {size} studies or {days:g} days")


def _span(session: Session, model: ModelVersion, chosen: Subquery, label: str) -> Span | None:
    """The span of the ``finished_at`` times ``chosen`` selected, or None when it is empty."""
    start, end, n = session.execute(
        select(func.min(chosen.c.finished_at), func.max(chosen.c.finished_at), func.count())
    ).one()
    if not n:
        return None
    return Span(model.id, start, end, int(n), label)


def _in_span(span: Span) -> ColumnElement[bool]:
    return and_(
        _scored(span.model_version_id), StudyInference.finished_at.between(span.start, span.end)
    )


def study_scores(session: Session, span: Span) -> tuple[np.ndarray, np.ndarray]:
    """Study probabilities and flags of a span, in time order."""
    rows = session.execute(
        select(StudyInference.probability, StudyInference.flagged)
        .where(_in_span(span))
        .order_by(StudyInference.finished_at, StudyInference.id)
    ).all()
    if not rows:
        return np.empty(0), np.empty(0, dtype=bool)
    scores, flags = zip(*rows, strict=True)
    return np.asarray(scores, dtype=np.float64), np.asarray(flags, dtype=bool)


def _features_in(span: Span) -> Any:
    return (
        select(ImageFeature)
        .join(
            StudyInference,
            and_(
                StudyInference.study_id == ImageFeature.study_id,
                StudyInference.model_version_id == ImageFeature.model_version_id,
            ),
        )
        .where(ImageFeature.model_version_id == span.model_version_id, _in_span(span))
    )


def category_counts(session: Session, span: Span) -> dict[str, dict[str, int]]:
    """Counts of each header feature's values among the span's images (GROUP BY in SQL)."""
    joined = _features_in(span).subquery()
    out: dict[str, dict[str, int]] = {}
    for name in CATEGORICAL_FEATURES:
        column = joined.c[name]
        rows = session.execute(select(column, func.count()).group_by(column)).all()
        counts = {("(absent)" if value is None else str(value)): int(n) for value, n in rows}
        # A feature nobody sends (all absent) carries no information.
        if counts and set(counts) != {"(absent)"}:
            out[name] = counts
    return out


def image_statistics(session: Session, span: Span) -> dict[str, np.ndarray]:
    """The span's image statistics as arrays (scored images only)."""
    joined = _features_in(span).subquery()
    columns = [joined.c[name] for name in IMAGE_FEATURES]
    rows = session.execute(select(*columns).where(joined.c.img_mean.is_not(None))).all()
    if not rows:
        return {}
    values = np.asarray(rows, dtype=np.float64)
    return {name: values[:, i] for i, name in enumerate(IMAGE_FEATURES)}
