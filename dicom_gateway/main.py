"""``cxr-triage gateway``: run the DICOM gateway until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from kombu.utils.url import maybe_sanitize_url

from cxr_triage.settings import Settings, get_settings
from dicom_gateway.scp import Gateway
from governance.audit.export import configure_export
from governance.db import Store
from worker.celery_app import make_celery

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage gateway",
        description=(
            "Run the DICOM gateway: a C-ECHO and C-STORE SCP for CR, DX and Secondary Capture "
            "images. Each instance is answered Success once its file is durable in the spool "
            "and recorded in the store; a study is queued for triage when the association "
            "that carried it is released, or when no instance arrived for CXR_STABLE_AGE_S. "
            "Runs until SIGINT or SIGTERM."
        ),
        epilog=(
            "Settings (environment or .env): CXR_AE_TITLE, CXR_DICOM_HOST, CXR_DICOM_PORT, "
            "CXR_ALLOWED_CALLING_AES (comma-separated; empty accepts all), CXR_MAX_PDU, "
            "CXR_STABLE_AGE_S, CXR_NETWORK_TIMEOUT_S, CXR_REQUEUE_AFTER_S, CXR_SWEEP_INTERVAL_S, "
            "CXR_SPOOL_DIR, CXR_SPOOL_RETENTION_H, CXR_SPOOL_PRUNE_INTERVAL_S, "
            "CXR_SPOOL_MIN_FREE_GB, CXR_SPOOL_MAX_GB, CXR_DATABASE_URL, "
            "CXR_BROKER_URL, CXR_QUEUE, CXR_DATA_DIR. The store must be initialised with "
            "`cxr-triage db upgrade`."
        ),
    )
    return parser


def describe(settings: Settings, store: Store, broker_url: str) -> str:
    """One line for the operator: where the gateway listens and what it writes to."""
    store_url = store.engine.url.render_as_string(hide_password=True)
    if settings.embedded_broker:
        broker = f"filesystem ({settings.broker_dir})"
    else:
        broker = str(maybe_sanitize_url(broker_url))
    return (
        f"AE {settings.ae_title} on {settings.dicom_host}:{settings.dicom_port}, "
        f"spool {settings.spool_path}, store {store_url}, broker {broker} "
        f"(queue {settings.queue})"
    )


def main(argv: list[str] | None = None) -> int:
    get_args_parser().parse_args(argv)
    settings = get_settings()
    store = Store.from_settings(settings)
    configure_export(settings.syslog_url, audit_source_id=settings.ae_title)
    celery_app = make_celery(settings)
    gateway = Gateway(settings, store, celery_app, sweep_interval_s=settings.sweep_interval_s)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        gateway.start()
        print(
            f"cxr-triage gateway: {describe(settings, store, celery_app.conf.broker_url)}",
            flush=True,
        )
        while not stopping.wait(1.0):
            pass
    finally:
        gateway.stop()
        store.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
