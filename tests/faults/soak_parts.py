"""The soak's moving parts: the service processes it starts, kills and restarts, and the PACS
that sends (tests/faults/soak.py runs them)."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cxr_triage.settings import Settings
from tests.faults.harness import Ledger, storescu_send
from tests.services import settings_env

# -- service processes ------------------------------------------------------------------------


@dataclass
class Proc:
    """A service process and what its log has said so far (read incrementally)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready_at: float | None = None
    triages: int = 0  # tasks that finished (Celery's "succeeded in")
    _offset: int = 0
    _rest: bytes = b""

    def read_log(self) -> None:
        with open(self.log, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        for line in lines:
            if self.ready_at is None and line.endswith(b" ready."):
                self.ready_at = time.monotonic()
            elif b" succeeded in " in line:
                self.triages += 1

    def alive(self) -> bool:
        return self.proc.poll() is None


class Services:
    """Gateway, workers and web as real processes with one settings object.

    Each worker gets ``worker_threads`` torch threads (``OMP_NUM_THREADS``), as a machine that
    runs several CPU workers should set: more threads than cores between them makes every
    triage many times slower.
    """

    def __init__(self, settings: Settings, logs: Path, *, worker_threads: int = 1) -> None:
        self.settings = settings
        self.logs = logs
        self.worker_threads = worker_threads
        self.started = 0
        self.all: list[Proc] = []

    def start(self, name: str) -> Proc:
        self.started += 1
        log = self.logs / f"{name}-{self.started}.log"
        env = settings_env(self.settings)
        if name == "worker":
            env["OMP_NUM_THREADS"] = str(self.worker_threads)
        with open(log, "wb") as handle:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "cxr_triage.cli", "--log-level", "INFO", name],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        item = Proc(name, proc, log)
        self.all.append(item)
        return item

    def workers(self) -> list[Proc]:
        return [p for p in self.all if p.name == "worker" and p.alive()]

    def stop_all(self, grace_s: float = 5.0) -> None:
        """SIGTERM to all, SIGKILL to what has not stopped ``grace_s`` seconds later (the
        counting is over: a warm shutdown proves nothing more here)."""
        for item in self.all:
            if item.alive():
                item.proc.terminate()
        deadline = time.monotonic() + grace_s
        for item in self.all:
            try:
                item.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                item.proc.kill()
                item.proc.wait(10)


# -- the PACS ---------------------------------------------------------------------------------


class Pacs:
    """``senders`` threads, each one association at a time from a shared queue of batches."""

    def __init__(
        self,
        port: int,
        paths: list[Path],
        uids: dict[Path, tuple[str, str]],
        *,
        senders: int,
        per_association: int,
    ) -> None:
        self.port = port
        self.uids = uids
        self.ledger = Ledger()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.work: queue.Queue[list[Path]] = queue.Queue()
        for start in range(0, len(paths), per_association):
            self.work.put(paths[start : start + per_association])
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.ledger.studies_acknowledged)

    def done(self) -> bool:
        return self.work.unfinished_tasks == 0

    def _send(self) -> None:
        while not self.stop.is_set():
            try:
                batch = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            local = Ledger()
            with contextlib.suppress(subprocess.TimeoutExpired):  # unanswered: sent again
                storescu_send("127.0.0.1", self.port, batch, local, self.uids, timeout=300)
            with self.lock:
                for sop, study in local.sent.items():
                    self.ledger.record(sop, study, 0 if sop in local.acknowledged else 0xA700)
                    if sop in local.acknowledged:
                        self.ledger.sent_at[study] = local.sent_at[study]
            refused = [p for p in batch if self.uids[p][0] not in local.acknowledged]
            if refused and not self.stop.is_set():
                time.sleep(2.0)  # a PACS retries after a while
                self.work.put(refused)
            self.work.task_done()
