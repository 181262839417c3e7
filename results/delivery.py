"""Deliver a triage event's results: plan its deliveries, attempt one, sweep what is due.

Each delivery row is claimed alone (governance.deliveries.claim), sent outside any
transaction, and its outcome recorded in a short one: a slow or dead destination holds only its
own row. The report a DICOM delivery sends is built once, saved under
``CXR_DATA_DIR/results`` and resent as it is on every retry (same SOP Instance UID).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from cxr_triage.settings import Settings
from governance import deliveries
from governance.db import Store
from governance.errors import NotFound, StoreUnavailable
from governance.models import DeliveryKind, ResultDelivery, StudyStatus, TriageEvent, utcnow
from results.config import DicomDestination, ResultsConfig
from results.errors import DeliveryFailed

logger = logging.getLogger(__name__)

ACTOR = "cxr-triage-results"
SWEEP_WINDOW = dt.timedelta(days=2)


@dataclass
class ResultsContext:
    settings: Settings
    store: Store
    config: ResultsConfig
    #: events up to this id were planned by this process's sweep (a restart plans them again:
    #: planning is idempotent)
    swept_upto: int = 0

    @property
    def results_dir(self) -> Path:
        return self.settings.data_dir / "results"


def notify_wanted(event: TriageEvent) -> bool:
    """Whether a notification follows this event: a new flag, a flag a re-triage removed, or a
    study that could not be triaged."""
    if event.status == StudyStatus.FAILED:
        return True
    return bool(event.flagged) != bool(event.previously_flagged)


def targets(
    config: ResultsConfig, event: TriageEvent, max_attempts: int
) -> list[deliveries.Target]:
    if event.shadow:
        # Decided under a shadow policy (go-live sign-off): kept, audited and compared with
        # final reads, but nothing leaves the system.
        return []
    found = [
        deliveries.Target(d.name, kind, max_attempts)
        for d in config.dicom
        for kind in d.send
        # A failed study has nothing to report in DICOM (it is notified); the heatmap exists
        # only for a study that was scored.
        if event.status != StudyStatus.FAILED
        and (kind == DeliveryKind.SR or event.probability is not None)
    ]
    if notify_wanted(event):
        found += [
            deliveries.Target(w.name, DeliveryKind.WEBHOOK, max_attempts) for w in config.webhooks
        ]
        found += [deliveries.Target(h.name, DeliveryKind.HL7, max_attempts) for h in config.hl7]
    return found


def plan_event(ctx: ResultsContext, event_id: int) -> list[int]:
    """Create the event's delivery rows (idempotent); their ids. [] for an unknown event."""

    def work(session: Session) -> list[int]:
        event = session.get(TriageEvent, event_id)
        if event is None:
            return []
        return deliveries.plan(
            session, event, targets(ctx.config, event, ctx.settings.result_max_attempts)
        )

    return ctx.store.run(work)


def deliver(ctx: ResultsContext, delivery_id: int) -> str | None:
    """Attempt one delivery if it is due; its new state, or None when it was not claimable."""
    row = ctx.store.run(lambda s: _claim(s, delivery_id))
    if row is None:
        return None
    try:
        detail = _send(ctx, row)
    except DeliveryFailed as exc:
        state = _fail(ctx, delivery_id, str(exc), exc.transient)
        log = logger.warning if state == "retrying" else logger.error
        log(
            "delivery %d (%s to %s, study %s): %s; now %s",
            delivery_id, row.kind, row.destination, row.study_instance_uid, exc, state,
        )  # fmt: skip
        return state
    except NotFound as exc:
        logger.error("delivery %d: %s", delivery_id, exc)
        return _fail(ctx, delivery_id, str(exc), False)
    except Exception as exc:  # a bug must park the row, not leave it claimed for the lease
        logger.exception("delivery %d failed unexpectedly", delivery_id)
        return _fail(ctx, delivery_id, f"internal error: {type(exc).__name__}", True)
    ctx.store.run(lambda s: deliveries.record_sent(s, delivery_id, actor=ACTOR, detail=detail))
    logger.info(
        "delivery %d: %s sent to %s (study %s)",
        delivery_id, row.kind, row.destination, row.study_instance_uid,
    )  # fmt: skip
    return "sent"


def _fail(ctx: ResultsContext, delivery_id: int, error: str, transient: bool) -> str:
    base = ctx.settings.result_backoff_s

    def work(session: Session) -> str:
        return deliveries.record_failure(
            session,
            delivery_id,
            error=error,
            transient=transient,
            backoff_base_s=base,
            actor=ACTOR,
        )

    return ctx.store.run(work)


def _claim(session: Session, delivery_id: int) -> ResultDelivery | None:
    row = deliveries.claim(session, delivery_id)
    if row is not None:
        session.expunge(row)
    return row


def _send(ctx: ResultsContext, row: ResultDelivery) -> dict[str, object]:
    if row.kind in DeliveryKind.DICOM:
        destination = _find(ctx.config.dicom, row.destination)
        return _send_dicom(ctx, row, destination)
    from results import notify

    if row.kind == DeliveryKind.WEBHOOK:
        return notify.send_webhook(ctx, row, _find(ctx.config.webhooks, row.destination))
    if row.kind == DeliveryKind.HL7:
        return notify.send_hl7(ctx, row, _find(ctx.config.hl7, row.destination))
    raise DeliveryFailed(f"unknown delivery kind {row.kind!r}", transient=False)


def _find(items, name):  # type: ignore[no-untyped-def]
    for item in items:
        if item.name == name:
            return item
    raise DeliveryFailed(f"destination {name!r} is no longer configured", transient=False)


def _send_dicom(
    ctx: ResultsContext, row: ResultDelivery, destination: DicomDestination
) -> dict[str, object]:
    from results.dimse import store_file

    path = Path(row.path) if row.path else None
    if path is None or not path.exists():
        path = _build_object(ctx, row, destination)
    outcome = store_file(
        path,
        host=destination.host,
        port=destination.port,
        called_ae=destination.ae_title,
        calling_ae=destination.calling_ae or ctx.settings.ae_title,
        timeout=ctx.settings.result_timeout_s,
    )
    detail: dict[str, object] = {
        "ae_title": destination.ae_title,
        "sop_instance_uid": row.sop_instance_uid,
        "status": f"{outcome.status:#06x}",
    }
    if outcome.warning:
        detail["warning"] = outcome.warning
    return detail


def _build_object(ctx: ResultsContext, row: ResultDelivery, destination: DicomDestination) -> Path:
    """Build the SR (or heatmap) of ``row``, save it, and record its UIDs and path."""
    if row.kind == DeliveryKind.SR:
        from results.sources import report_input
        from results.sr import build_report

        with ctx.store.read() as session:
            source = report_input(session, row.event_id, row.destination)
        ds = build_report(
            source,
            sr_class=destination.sr,
            sop_instance_uid=row.sop_instance_uid,
            series_instance_uid=row.series_instance_uid,
        )
    else:
        from results.heatmap import build_heatmap_for

        ds = build_heatmap_for(ctx, row)
    folder = ctx.results_dir / row.study_instance_uid
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)

    def work(session: Session) -> None:
        stored = session.get(ResultDelivery, row.id)
        if stored is not None:
            stored.path = str(path)
            stored.sop_class_uid = str(ds.SOPClassUID)
            stored.sop_instance_uid = str(ds.SOPInstanceUID)
            stored.series_instance_uid = str(ds.SeriesInstanceUID)

    ctx.store.run(work)
    row.sop_instance_uid = str(ds.SOPInstanceUID)
    return path


def sweep(ctx: ResultsContext, *, workers: int = 4) -> int:
    """Plan events that have no delivery yet and attempt every due delivery; how many tried.

    Deliveries are attempted in parallel threads, so one slow destination does not hold the
    others; the conditional claim keeps a delivery from being sent twice at once.
    """
    try:
        with ctx.store.read() as session:
            orphans = deliveries.events_without_deliveries(
                session, since=utcnow() - SWEEP_WINDOW, after_id=ctx.swept_upto
            )
        for event_id in orphans:
            plan_event(ctx, event_id)
            ctx.swept_upto = max(ctx.swept_upto, event_id)
        with ctx.store.read() as session:
            due = deliveries.due(session)
    except StoreUnavailable as exc:
        logger.warning("results sweep skipped: %s", exc)
        return 0
    if not due:
        return 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-deliver") as pool:
        list(pool.map(_safe(ctx), due))
    return len(due)


def _safe(ctx: ResultsContext) -> Callable[[int], str | None]:
    def run(delivery_id: int) -> str | None:
        try:
            return deliver(ctx, delivery_id)
        except StoreUnavailable as exc:
            logger.warning("delivery %d: store unavailable (%s); next sweep", delivery_id, exc)
            return None

    return run
