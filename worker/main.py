"""``cxr-triage worker``: a real Celery worker, one process per GPU, a few studies at once."""

from __future__ import annotations

import argparse
import logging
import socket

from cxr_triage.settings import get_settings
from governance.audit.export import configure_export
from governance.db import Store
from worker.celery_app import make_celery

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage worker",
        description="Run a triage worker: consumes triage_study tasks from CXR_BROKER_URL "
        "(default: the embedded filesystem broker), scores frontal chest radiographs with the "
        "active model version and writes results to CXR_DATABASE_URL. Run one per GPU.",
    )
    parser.add_argument("--name", default=None, help="worker node name (default: cxr-<pid>@<host>)")
    parser.add_argument("--loglevel", default="INFO", help="Celery log level (default: INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = get_settings()
    Store.open(settings).dispose()  # refuse a store this code cannot use
    configure_export(settings.syslog_url, audit_source_id=settings.ae_title)
    app = make_celery(settings)
    import os

    name = args.name or f"cxr-{os.getpid()}@{socket.gethostname()}"
    logger.info(
        "worker %s: queue %s, store %s, broker %s",
        name,
        settings.queue,
        _safe_url(settings.database_url),
        "embedded filesystem" if settings.embedded_broker else _safe_url(settings.broker_url),
    )
    from worker.lanes import backlog_queue

    queues = [settings.queue, backlog_queue(settings.queue)]
    app.worker_main(
        [
            "worker",
            # Task threads share one model and batcher (worker.tasks); one prefetch each.
            "--pool=threads",
            f"--concurrency={settings.worker_studies}",
            f"--queues={','.join(queues)}",
            f"--hostname={name}",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
            "--prefetch-multiplier=1",
        ]
    )
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a broker URL SQLAlchemy cannot parse: hide everything after the scheme
        return url.split("://", 1)[0] + "://..."
