"""Labels: imported from a file or taken from the final reads radiologists record; concordance.

An import is all or nothing: every bad row is reported by its line and nothing is written unless
every row is good. A study's label is the imported one where there is one, else its final read.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from governance import audit
from governance.models import ImageFeature, Study, StudyInference, StudyLabel, utcnow

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_ROWS = 500_000
MAX_SUBGROUP_COLUMNS = 8
MAX_VALUE = 64
TRUE = {"1", "true", "yes", "positive", "pneumonia"}
FALSE = {"0", "false", "no", "negative", "normal"}
UID_COLUMNS = ("study_instance_uid", "study_uid")


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    errors: list[str] = field(default_factory=list)


def parse_labels(data: bytes) -> tuple[list[tuple[str, bool, dict[str, str]]], list[str]]:
    """Rows (study UID, label, subgroups) of a CSV file, and the bad rows by line number."""
    if len(data) > MAX_FILE_BYTES:
        return [], [f"file is over {MAX_FILE_BYTES // (1024 * 1024)} MiB"]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], ["file is not UTF-8 text"]
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    uid_column = next((c for c in UID_COLUMNS if c in header), None)
    if uid_column is None or "label" not in header:
        return [], ["line 1: header needs study_instance_uid (or study_uid) and label columns"]
    extra = [h for h in header if h not in {uid_column, "label"}]
    if len(extra) > MAX_SUBGROUP_COLUMNS:
        return [], [f"line 1: at most {MAX_SUBGROUP_COLUMNS} subgroup columns, got {len(extra)}"]
    reader.fieldnames = header
    rows: list[tuple[str, bool, dict[str, str]]] = []
    errors: list[str] = []
    for record in reader:
        line = reader.line_num
        if len(rows) + len(errors) >= MAX_ROWS:
            errors.append(f"line {line}: more than {MAX_ROWS} rows")
            break
        uid = (record.get(uid_column) or "").strip()
        raw = (record.get("label") or "").strip().lower()
        if not uid or len(uid) > 64 or not all(part.isdigit() for part in uid.split(".")):
            errors.append(f"line {line}: not a Study Instance UID")
            continue
        if raw not in TRUE | FALSE:
            errors.append(f"line {line}: label must be 1/0, true/false or positive/negative")
            continue
        groups = {k: (record.get(k) or "").strip() for k in extra}
        if any(len(v) > MAX_VALUE for v in groups.values()):
            errors.append(f"line {line}: a subgroup value is over {MAX_VALUE} characters")
            continue
        rows.append((uid, raw in TRUE, {k: v for k, v in groups.items() if v}))
    return rows, errors


def import_labels(session: Session, data: bytes, *, actor: str) -> ImportReport:
    """Import a labels CSV in the session's transaction; nothing is written if a row is bad."""
    rows, errors = parse_labels(data)
    report = ImportReport(rows=len(rows) + len(errors), errors=errors)
    uids = [uid for uid, _, _ in rows]
    known: dict[str, int] = {}
    for start in range(0, len(uids), 1000):
        chunk = uids[start : start + 1000]
        found = session.execute(
            select(Study.study_instance_uid, Study.id).where(Study.study_instance_uid.in_(chunk))
        )
        known.update((uid, study_id) for uid, study_id in found)
    seen: set[str] = set()
    for number, (uid, _, _) in enumerate(rows, start=2):
        if uid not in known:
            report.errors.append(f"row {number - 1}: no study {uid} in the store")
        elif uid in seen:
            report.errors.append(f"row {number - 1}: study {uid} appears twice")
        seen.add(uid)
    if report.errors:
        return report
    existing = {
        label.study_id: label
        for label in session.scalars(
            select(StudyLabel).where(StudyLabel.study_id.in_(list(known.values())))
        )
    }
    digest = hashlib.sha256(data).hexdigest()
    now = utcnow()
    for uid, value, groups in rows:
        study_id = known[uid]
        label = existing.get(study_id)
        if label is None:
            label = StudyLabel(study_id=study_id)
            session.add(label)
        label.label = value
        label.subgroups = groups
        label.source = f"import sha256:{digest[:16]}"
        label.imported_by = actor
        label.imported_at = now
    report.imported = len(rows)
    audit.record(
        session,
        "labels",
        f"sha256:{digest[:16]}",
        actor=actor,
        action=audit.Action.LABELS_IMPORTED,
        detail={"rows": len(rows), "sha256": digest},
    )
    return report


@dataclass
class Labelled:
    """One model version's labelled studies, in time order."""

    labels: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    flags: np.ndarray
    finished_at: list[dt.datetime]
    attributes: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return int(self.labels.size)


def labelled(
    session: Session,
    model_version_id: int,
    *,
    since: dt.datetime | None = None,
    shadow: bool | None = None,
) -> Labelled:
    """Studies scored by a model version that have a label (imported, else the final read).

    ``shadow`` keeps only the studies decided under a shadow policy (True) or a live one (False).
    """
    first = (
        select(
            ImageFeature.study_id.label("study_id"),
            func.min(ImageFeature.view_position).label("view_position"),
            func.min(ImageFeature.manufacturer).label("manufacturer"),
            func.min(ImageFeature.calling_ae).label("calling_ae"),
            func.min(ImageFeature.age_band).label("age_band"),
        )
        .where(ImageFeature.model_version_id == model_version_id)
        .group_by(ImageFeature.study_id)
        .subquery()
    )
    label = func.coalesce(StudyLabel.label, Study.final_read)
    query = (
        select(
            label,
            StudyInference.probability,
            StudyInference.logit,
            StudyInference.flagged,
            StudyInference.finished_at,
            Study.patient_sex,
            first.c.age_band,
            first.c.view_position,
            first.c.manufacturer,
            first.c.calling_ae,
        )
        .join(Study, Study.id == StudyInference.study_id)
        .outerjoin(StudyLabel, StudyLabel.study_id == Study.id)
        .outerjoin(first, first.c.study_id == Study.id)
        .where(
            StudyInference.model_version_id == model_version_id,
            StudyInference.probability.is_not(None),
            label.is_not(None),
        )
        .order_by(StudyInference.finished_at, StudyInference.id)
    )
    if since is not None:
        query = query.where(StudyInference.finished_at > since)
    if shadow is not None:
        query = query.where(StudyInference.shadow.is_(shadow))
    rows = session.execute(query).all()
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [() for _ in range(10)]
    names = ("sex", "age_band", "view_position", "manufacturer", "site")
    return Labelled(
        labels=np.asarray(columns[0], dtype=bool),
        scores=np.asarray(columns[1], dtype=np.float64),
        logits=np.asarray([np.nan if v is None else v for v in columns[2]], dtype=np.float64),
        flags=np.asarray(columns[3], dtype=bool),
        finished_at=list(columns[4]),
        attributes={name: np.asarray(columns[5 + i], dtype=object) for i, name in enumerate(names)},
    )


def concordance(session: Session, model_version_id: int | None = None) -> list[dict[str, Any]]:
    """Agreement of flag and final read per model version and day (SQL GROUP BY)."""
    dialect = session.get_bind().dialect.name
    day = (
        func.to_char(StudyInference.finished_at, "YYYY-MM-DD")
        if dialect == "postgresql"
        else func.strftime("%Y-%m-%d", StudyInference.finished_at)
    )
    agree = case((StudyInference.flagged == Study.final_read, 1), else_=0)
    query = (
        select(
            StudyInference.model_version_id,
            day.label("day"),
            func.count(),
            func.sum(agree),
            func.sum(case((and_(StudyInference.flagged, Study.final_read.is_(True)), 1), else_=0)),
            func.sum(case((Study.final_read.is_(True), 1), else_=0)),
            func.sum(case((StudyInference.shadow, 1), else_=0)),
        )
        .join(Study, Study.id == StudyInference.study_id)
        .where(Study.final_read.is_not(None), StudyInference.probability.is_not(None))
        .group_by(StudyInference.model_version_id, day)
        .order_by(StudyInference.model_version_id, day)
    )
    if model_version_id is not None:
        query = query.where(StudyInference.model_version_id == model_version_id)
    return [
        {
            "model_version_id": mv,
            "day": d,
            "n": int(n),
            "agree": int(a or 0),
            "concordance": (a or 0) / n,
            "flagged_positive": int(tp or 0),
            "positive": int(pos or 0),
            "shadow": int(sh or 0),
        }
        for mv, d, n, a, tp, pos, sh in session.execute(query).all()
    ]
