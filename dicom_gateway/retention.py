"""Spool retention: remove received files once their study is triaged, keep the rows.

Run by the gateway's janitor thread every ``CXR_SPOOL_PRUNE_INTERVAL_S`` (there is no beat
service yet). A file goes when its study has been triaged by the active model version, with
nothing left to score, at least ``CXR_SPOOL_RETENTION_H`` hours ago (0: at the next run); see
:mod:`governance.retention` for the rule. Each run that removes anything writes ONE audit event
with its counts, never one per file. The instance row keeps its header columns, size and
inferences and gets ``pruned_at``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from dicom_gateway.spool import Spool
from governance import audit
from governance.audit import Action
from governance.db import Store
from governance.models import utcnow
from governance.retention import SpooledFile, mark_pruned, prunable_files

logger = logging.getLogger(__name__)

ACTOR = "cxr-triage-gateway"
BATCH = 500
MAX_BATCHES = 200  # a run removes at most 100,000 files; the next run goes on


@dataclass
class PruneReport:
    """What one retention run did."""

    files: int = 0
    bytes: int = 0
    already_gone: int = 0
    kept_resent: int = 0
    studies: set[int] = field(default_factory=set)


def prune_spool(
    store: Store, spool: Spool, retention_h: float, *, now: dt.datetime | None = None
) -> PruneReport:
    """Remove the files retention allows and mark their rows; one audit event if any went.

    Raises
    ------
    StoreUnavailable
        The store could not be reached (nothing was removed unless the store said so).
    """
    if retention_h < 0:
        raise ValueError(f"retention_h must not be negative, got {retention_h}")
    started = time.time()
    cutoff = (now or utcnow()) - dt.timedelta(hours=retention_h)
    report = PruneReport()
    seen: set[int] = set()
    for _ in range(MAX_BATCHES):
        with store.read() as session:
            batch = [
                f for f in prunable_files(session, cutoff, limit=BATCH) if f.instance_id not in seen
            ]
        if not batch:
            break
        seen.update(f.instance_id for f in batch)
        removed: list[SpooledFile] = []
        folders: set[Path] = set()
        for item in batch:
            size = spool.remove_for_retention(item.path, unchanged_since=started)
            if size is None:
                report.kept_resent += 1
                continue
            removed.append(item)
            folders.add(Path(item.path).parent)
            if size:
                report.files += 1
                report.bytes += size
                report.studies.add(item.study_id)
            else:
                report.already_gone += 1
        if removed:
            _mark(store, removed)
        spool.remove_empty_folders(folders)
    if report.files or report.already_gone:
        _audit(store, report, retention_h)
        logger.info(
            "spool retention: removed %d files (%d MiB) of %d studies; %d already gone",
            report.files,
            report.bytes >> 20,
            len(report.studies),
            report.already_gone,
        )
    return report


def _mark(store: Store, removed: list[SpooledFile]) -> None:
    at = utcnow()
    store.run(lambda session: mark_pruned(session, removed, at))


def _audit(store: Store, report: PruneReport, retention_h: float) -> None:
    detail = {
        "files": report.files,
        "bytes": report.bytes,
        "studies": len(report.studies),
        "already_gone": report.already_gone,
        "kept_resent": report.kept_resent,
        "retention_h": retention_h,
    }
    store.run(
        lambda session: audit.record(
            session,
            "spool",
            actor=ACTOR,
            action=Action.SPOOL_PRUNED,
            detail=detail,
        )
    )
