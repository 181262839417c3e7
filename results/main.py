"""``cxr-triage results-worker``: exports and notifications on their own queue.

A Celery worker (threads: deliveries wait on the network, not the CPU) on
``CXR_RESULTS_QUEUE``, plus a sweep thread that every ``CXR_RESULT_SWEEP_S`` seconds attempts
the deliveries due for a retry and plans the triage events whose message was lost. At start-up
each DICOM destination is C-ECHOed; one that does not answer gets one clear line (its exports
wait and retry; the worker starts anyway).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading

from cxr_triage.settings import get_settings
from dicom_gateway.scu import echo
from results.delivery import ResultsContext, sweep
from worker.celery_app import make_celery

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage results-worker",
        description="Run the results worker: builds the TID 1500 SR (and the heatmap where a "
        "destination asks for it) of each triaged study and sends it to the DICOM destinations "
        "of CXR_RESULTS_CONFIG, and sends flag notifications (webhook, HL7 over MLLP); retries "
        "transient failures with backoff and parks the rest as failed (`cxr-triage export list`).",
    )
    parser.add_argument("--name", default=None, help="worker node name")
    parser.add_argument("--loglevel", default="INFO", help="Celery log level (default: INFO)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="deliveries attempted at once (default: 4)"
    )
    return parser


def check_destinations(ctx: ResultsContext) -> list[str]:
    """C-ECHO each DICOM destination; the names of those that did not answer (one line each)."""
    silent = []
    for destination in ctx.config.dicom:
        calling = destination.calling_ae or ctx.settings.ae_title
        try:
            ok = echo(
                destination.host,
                destination.port,
                destination.ae_title,
                calling_ae=calling,
                timeout=min(5.0, ctx.settings.result_timeout_s),
            )
        except (OSError, RuntimeError, ValueError):
            ok = False
        if ok:
            logger.info(
                "destination %s (%s@%s:%d) answers C-ECHO",
                destination.name, destination.ae_title, destination.host, destination.port,
            )  # fmt: skip
        else:
            silent.append(destination.name)
            logger.error(
                "destination %s (%s@%s:%d) does not answer C-ECHO; its exports will retry",
                destination.name, destination.ae_title, destination.host, destination.port,
            )  # fmt: skip
    return silent


def start_sweeper(ctx: ResultsContext, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            try:
                sweep(ctx)
            except Exception:
                logger.exception("results sweep failed; next one in %.0f s", interval)
            stop.wait(interval)

    interval = ctx.settings.result_sweep_s
    thread = threading.Thread(target=loop, name="cxr-results-sweep", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = get_settings()
    from results import tasks

    ctx = tasks.build_context(settings)
    ctx.store.check_schema()
    if ctx.config.empty:
        logger.warning("CXR_RESULTS_CONFIG names no destination: nothing will be sent")
    check_destinations(ctx)
    wanting = [d.name for d in ctx.config.dicom if "heatmap" in d.send]
    if wanting and not settings.heatmaps:
        logger.error(
            "destinations %s ask for the heatmap but CXR_HEATMAPS is off: the workers compute "
            "none, so those exports will fail after their attempts",
            ", ".join(wanting),
        )
    tasks._context.set(ctx)
    app = make_celery(settings)
    app.conf.imports = ("results.tasks",)
    name = args.name or f"cxr-results-{os.getpid()}@{socket.gethostname()}"
    stop = threading.Event()
    start_sweeper(ctx, stop)
    logger.info("results worker %s: queue %s", name, settings.results_queue)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={max(1, args.concurrency)}",
                f"--queues={settings.results_queue}",
                f"--hostname={name}",
                f"--loglevel={args.loglevel}",
                "--without-gossip",
                "--without-mingle",
                "--prefetch-multiplier=1",
            ]
        )
    finally:
        stop.set()
    return 0
