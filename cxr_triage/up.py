"""``cxr-triage up``: gateway + worker + web on one machine, stopped together on Ctrl-C.

Each service runs as its own process (``cxr-triage gateway|worker|web``) with the same
settings; they share the store (SQLite in WAL mode by default) and the broker (kombu's
filesystem transport by default). If one of them dies, the others are stopped too, so a
half-running stack never looks healthy.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from cxr_triage.extras import require
from cxr_triage.settings import Settings, get_settings

logger = logging.getLogger(__name__)

SERVICES = ("gateway", "worker", "web", "beat")
#: Started too when CXR_RESULTS_CONFIG names result destinations.
RESULTS_SERVICE = "results-worker"
STOP_GRACE_S = 20.0


@dataclass
class Supervisor:
    """Starts ``cxr-triage SERVICE`` children and stops them all together."""

    services: tuple[str, ...] = SERVICES
    env: dict[str, str] | None = None
    log_level: str = "INFO"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        for name in self.services:
            cmd = [sys.executable, "-m", "cxr_triage.cli", "--log-level", self.log_level, name]
            # Own session: the supervisor, not the terminal's Ctrl-C, decides the stop order.
            self.procs[name] = subprocess.Popen(cmd, env=self.env, start_new_session=True)
            logger.info("started %s (pid %d)", name, self.procs[name].pid)

    def poll(self) -> str | None:
        """The name of a service that has exited, or None while all run."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                logger.info("stopping %s", name)
                _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0f s; killing it", name, grace)
                _signal(proc, signal.SIGKILL)
                proc.wait()

    def run_until_interrupted(self) -> int:
        """Wait for Ctrl-C or SIGTERM (exit 0) or a service dying (exit 1); stop everything."""
        stop_requested = False

        def request_stop(signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop_requested:
                dead = self.poll()
                if dead is not None:
                    code = self.procs[dead].returncode
                    logger.error("%s exited with status %s; stopping the others", dead, code)
                    self.stop()
                    return 1
                time.sleep(0.2)
            self.stop()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def prepare_store(settings: Settings) -> None:
    """Create the data folders and bring the store's schema up to date."""
    from migrations import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.spool_path.mkdir(parents=True, exist_ok=True)
    settings.model_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage up",
        description="Run the whole service on this machine: the DICOM gateway, one triage worker "
        "and the web server, with the settings from CXR_* variables (by default a SQLite store "
        "and a filesystem broker under CXR_DATA_DIR, nothing to install). Migrates the store "
        "first. Ctrl-C stops everything.",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=(*SERVICES, RESULTS_SERVICE),
        default=None,
        help="run only these services (default: gateway, worker, web, and results-worker "
        "when CXR_RESULTS_CONFIG is set)",
    )
    return parser


def dicom_reach(host: str, allowed_calling_aes: list[str]) -> str:
    """A note on who can reach the DICOM port: this machine only, or the network."""
    if host.startswith("127.") or host in {"localhost", "::1"}:
        return (
            " (this machine only; set CXR_DICOM_HOST=0.0.0.0 and CXR_ALLOWED_CALLING_AES "
            "to accept a PACS on the network)"
        )
    if not allowed_calling_aes:
        return " (open to the network and to any calling AE title: set CXR_ALLOWED_CALLING_AES)"
    return f" (open to the network for {', '.join(allowed_calling_aes)})"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.only is None or "worker" in args.only:
        # A slim install (no torch) can still run `up --only gateway web`.
        require("worker")
    settings = get_settings()
    prepare_store(settings)
    services = args.only or [*SERVICES, *([RESULTS_SERVICE] if settings.results_config else [])]
    supervisor = Supervisor(
        services=tuple(services), log_level=logging.getLevelName(logging.getLogger().level)
    )
    supervisor.start()
    logger.info(
        "DICOM: %s@%s:%d%s   worklist: http://%s:%d/ (log in with a token from "
        "`cxr-triage token create --role radiologist --name NAME`)",
        settings.ae_title,
        settings.dicom_host,
        settings.dicom_port,
        dicom_reach(settings.dicom_host, settings.allowed_calling_aes),
        settings.web_host,
        settings.web_port,
    )
    return supervisor.run_until_interrupted()
