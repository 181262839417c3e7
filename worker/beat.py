"""``cxr-triage beat``: the Celery beat that sends the monitoring tick on a schedule.

Safe to run twice: the jobs are idempotent per window (see :mod:`worker.monitoring_tasks`).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

from cxr_triage.settings import Settings, get_settings
from governance.db import Store
from worker.celery_app import make_celery
from worker.monitoring_tasks import MONITORING_TICK

logger = logging.getLogger(__name__)

#: The tick is at most this far apart, so a period's run is never more than this late.
MAX_TICK_S = 300.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage beat",
        description="Run the scheduler (Celery beat): sends the monitoring tick (drift once "
        "per CXR_DRIFT_INTERVAL_S, recalibration jobs when labels accumulate) to the workers "
        "over CXR_BROKER_URL. A second beat does not double the jobs.",
    )
    parser.add_argument("--loglevel", default="INFO", help="Celery log level (default: INFO)")
    return parser


def schedule(settings: Settings) -> dict[str, dict[str, object]]:
    return {
        "monitoring": {
            "task": MONITORING_TICK,
            "schedule": min(settings.drift_interval_s, MAX_TICK_S),
            "options": {"queue": settings.queue},
        }
    }


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = get_settings()
    store = Store.from_url(settings.database_url)
    store.check_schema()
    store.dispose()
    app = make_celery(settings)
    app.conf.beat_schedule = schedule(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logger.info("beat: monitoring tick every %.0f s", min(settings.drift_interval_s, MAX_TICK_S))
    # A schedule file of this process's own: two beats sharing one (a second one started by
    # mistake) crash each other in Python's dbm. The jobs themselves are idempotent per period
    # in the store, so nothing is lost by not sharing the last-run times.
    name = f"beat-schedule-{socket.gethostname()}-{os.getpid()}"
    try:
        app.Beat(schedule=str(settings.data_dir / name), loglevel=args.loglevel, quiet=True).run()
    finally:
        for leftover in settings.data_dir.glob(f"{name}*"):
            leftover.unlink(missing_ok=True)
    return 0
