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

SERVICES = ("gateway", "worker", "web")
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
        choices=SERVICES,
        default=list(SERVICES),
        help="run only these services",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if "worker" in args.only:
        # A slim install (no torch) can still run `up --only gateway web`.
        require("worker")
    settings = get_settings()
    prepare_store(settings)
    supervisor = Supervisor(
        services=tuple(args.only), log_level=logging.getLevelName(logging.getLogger().level)
    )
    supervisor.start()
    logger.info(
        "DICOM: %s@%s:%d   worklist: http://%s:%d/ (log in with a token from "
        "`cxr-triage token create --role radiologist --name NAME`)",
        settings.ae_title,
        settings.dicom_host,
        settings.dicom_port,
        settings.web_host,
        settings.web_port,
    )
    return supervisor.run_until_interrupted()
