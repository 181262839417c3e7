"""The monitoring tick that ``cxr-triage beat`` sends: drift once per period, recalibration jobs.

Idempotent per window: the drift run of a period has the key ``beat:<version>:<period>``, unique
in the store, so a second beat (or a redelivered tick) in the same period adds nothing.
No torch here: the tick runs in any worker.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from sqlalchemy import select

from cxr_triage.settings import Settings, get_settings
from governance.db import Store
from governance.models import RecalibrationJob, RecalibrationState, utcnow
from governance.monitoring.drift import DriftConfig
from governance.monitoring.runs import WindowSettings, run_drift
from governance.recalibration import run_job, start_if_due
from governance.registry import active_model

logger = logging.getLogger(__name__)

MONITORING_TICK = "monitoring_tick"


def tick(store: Store, settings: Settings) -> dict[str, Any]:
    """One scheduler tick: the period's drift run and any due recalibration job."""
    now = utcnow()
    with store.read() as session:
        model = active_model(session)
        version = model.version if model else None
    if version is None:
        return {"drift": None, "jobs": []}
    period = int(now.timestamp() // settings.drift_interval_s)
    run = run_drift(
        store,
        model_version=version,
        trigger="beat",
        window_key=f"beat:{version}:{period}",
        now=now,
        window=WindowSettings(
            days=settings.drift_window_days,
            studies=settings.drift_window_studies,
            baseline_studies=settings.drift_baseline_studies,
        ),
        config=DriftConfig(alpha=settings.drift_alpha, min_studies=settings.drift_min_studies),
    )

    def due(session):  # type: ignore[no-untyped-def]
        current = active_model(session)
        if current is not None:
            start_if_due(session, current, every=settings.recalibration_labels)
        return list(
            session.scalars(
                select(RecalibrationJob.id).where(
                    RecalibrationJob.state.in_(
                        (RecalibrationState.QUEUED, RecalibrationState.WAITING)
                    )
                )
            )
        )

    jobs = [
        run_job(store, job_id, min_labels=settings.recalibration_labels).state
        for job_id in store.run(due)
    ]
    return {"drift": None if run is None else run.status, "jobs": jobs}


@shared_task(name=MONITORING_TICK, acks_late=True, ignore_result=True)
def monitoring_tick() -> dict[str, Any]:
    settings = get_settings()
    store = Store.from_url(settings.database_url)
    try:
        return tick(store, settings)
    finally:
        store.dispose()
