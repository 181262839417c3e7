"""Study assembly: decide when a study is complete, audit its receipt, and queue it.

A study is ready when the association that carried it is released, or, for an association
that stays open or was aborted, once none of its instances arrived for ``stable_age_s``. The
C-STORE handlers only note arrivals here; one background thread writes the audit events,
sends the Celery messages (a Celery producer is not meant to be shared between threads) and
marks the studies queued in the store. When the broker is down the studies are kept and sent
again with backoff; the store also remembers them (``queued_at`` older than the last instance),
so a study received before a crash is queued by the sweep at the next start.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery

from governance import audit
from governance.audit import Action
from governance.checks import positive
from governance.db import Store
from governance.errors import StoreRejected, StoreUnavailable
from governance.models import AuditEvent, utcnow
from governance.reconciler import reconcile
from governance.studies import studies_awaiting_queue
from governance.text import clip
from governance.triage_results import mark_queued
from worker.celery_app import queue_study

logger = logging.getLogger(__name__)

MAX_KEPT_AUDITS = 10_000
BROKER_BACKOFF_S = (0.5, 30.0)


@dataclass(slots=True)
class Arrivals:
    """Instances of one study that arrived on one association since it was last flushed."""

    study_uid: str
    calling_ae: str
    peer_address: str | None
    count: int
    last_at: float  # time.monotonic()
    ended: str = "open"  # "released" or "aborted" once the association ended


class StudyAssembly:
    """Tracks arrivals per association and study and queues studies from one thread.

    Parameters
    ----------
    store
        The store (audit events, ``mark_queued``, ``studies_awaiting_queue``).
    celery_app
        The producer app from :func:`worker.celery_app.make_celery`.
    stable_age_s
        Seconds without a new instance after which a study on an open or aborted association
        is queued.
    sweep_interval_s
        How often the store is asked for studies that were never queued (the first time at
        start).
    requeue_after_s
        The reconciler's grace: a study queued (or received) longer ago than this and still
        not triaged by the active model is queued again, with backoff.
    max_attempts
        Automatic requeues of a study before the reconciler parks it as failed.
    send
        ``send(app, study_uid)``; :func:`worker.celery_app.queue_study` unless a caller needs
        another way to queue.
    """

    def __init__(
        self,
        store: Store,
        celery_app: Celery,
        *,
        stable_age_s: float,
        sweep_interval_s: float,
        requeue_after_s: float,
        max_attempts: int,
        send: Callable[[Celery, str], None] = queue_study,
    ) -> None:
        self.store = store
        self.celery_app = celery_app
        self.stable_age_s = positive("stable_age_s", stable_age_s)
        self.sweep_interval_s = positive("sweep_interval_s", sweep_interval_s)
        self.requeue_after_s = requeue_after_s
        self.max_attempts = max_attempts
        self._send_fn = send
        self._tick_s = min(stable_age_s / 4, 0.5)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Guarded by _lock: touched by the association threads.
        self._arrivals: dict[tuple[Any, str], Arrivals] = {}
        # Owned by the queueing thread.
        self._audits: list[Arrivals] = []
        self._to_send: dict[str, None] = {}  # ordered set
        self._to_mark: list[str] = []
        self._broker_down_since: float | None = None
        self._broker_retry_at = 0.0
        self._broker_backoff = BROKER_BACKOFF_S[0]
        self._next_sweep = 0.0
        self.queued_total = 0

    # -- called from association threads -----------------------------------------------------

    def instance_stored(
        self, association: Any, study_uid: str, calling_ae: str, peer_address: str | None
    ) -> None:
        """Note that an instance of ``study_uid`` was stored (durable and committed)."""
        now = time.monotonic()
        with self._lock:
            key = (association, study_uid)
            arrivals = self._arrivals.get(key)
            if arrivals is None:
                self._arrivals[key] = Arrivals(study_uid, calling_ae, peer_address, 1, now)
            else:
                arrivals.count += 1
                arrivals.last_at = now

    def association_ended(self, association: Any, *, released: bool) -> None:
        """A released association's studies are ready now; an aborted one's after the age."""
        with self._lock:
            for (assoc, _), arrivals in self._arrivals.items():
                if assoc is association:
                    arrivals.ended = "released" if released else "aborted"
        if released:
            self._wake.set()

    # -- the queueing thread -----------------------------------------------------------------

    def start(self) -> None:
        """Start the queueing thread (it sweeps the store for unqueued studies first)."""
        if self._thread is not None:
            raise RuntimeError("the study assembly thread is already running")
        # Before the server listens, so no association is open: everything unqueued is due.
        self._sweep_store(cutoff=utcnow())
        self._next_sweep = time.monotonic() + self.sweep_interval_s
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="cxr-study-queue", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Queue what is pending (one attempt each), then stop the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the study queueing thread did not stop within %.0f s", timeout)
        self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._tick_s)
            self._wake.clear()
            try:
                self.step()
            except Exception:  # the thread must outlive any one fault; it is logged
                logger.exception("study queueing step failed; trying again")
                time.sleep(self._tick_s)
        try:
            self.step(final=True)
        except Exception:
            logger.exception("final study queueing step failed")
        if self._to_send:
            logger.warning(
                "stopping with %d studies not queued; the next start queues them",
                len(self._to_send),
            )

    def step(self, *, final: bool = False) -> None:
        """One round: flush ready arrivals, sweep the store, audit, send, mark queued."""
        now = time.monotonic()
        for arrivals in self._take_ready(now, everything=final):
            self._audits.append(arrivals)
            self._to_send[arrivals.study_uid] = None
        if now >= self._next_sweep and not final:
            # Only what has been quiet for the stable age, so an open association's study
            # is not cut short.
            self._sweep_store(cutoff=utcnow() - dt.timedelta(seconds=self.stable_age_s))
            self._next_sweep = now + self.sweep_interval_s
        self._write_audits()
        if self._to_send and (final or now >= self._broker_retry_at):
            self._send()
        self._mark_queued()

    def _take_ready(self, now: float, *, everything: bool) -> list[Arrivals]:
        with self._lock:
            ready = [
                key
                for key, arrivals in self._arrivals.items()
                if everything
                or arrivals.ended == "released"
                or now - arrivals.last_at >= self.stable_age_s
            ]
            return [self._arrivals.pop(key) for key in ready]

    def _sweep_store(self, cutoff: dt.datetime) -> None:
        """Queue what the store knows and no message covers: studies never queued (broker
        down, a crash), and what the reconciler finds (lost messages, dead workers, failures
        whose cause may be gone)."""
        grace = dt.timedelta(seconds=self.requeue_after_s)
        try:
            with self.store.read() as session:
                found = studies_awaiting_queue(session, cutoff)
            reconciled = self.store.run(
                lambda session: reconcile(session, grace=grace, max_attempts=self.max_attempts)
            )
        except (StoreUnavailable, StoreRejected) as exc:
            logger.warning("cannot look for unqueued studies: %s", exc)
            return
        with self._lock:
            busy = {study for (_, study) in self._arrivals}
        new = [uid for uid in found if uid not in self._to_send and uid not in busy]
        if new:
            logger.info("found %d studies never queued", len(new))
        again = [uid for uid in reconciled.requeue if uid not in self._to_send and uid not in busy]
        for uid in new + again:
            self._to_send[uid] = None

    def _write_audits(self) -> None:
        if not self._audits:
            return
        batch = list(self._audits)

        def write(session: Any) -> None:
            for item in batch:
                audit.record(
                    session,
                    "study",
                    item.study_uid,
                    actor=clip(item.calling_ae, AuditEvent.actor) or "(none)",
                    actor_address=clip(item.peer_address, AuditEvent.actor_address),
                    action=Action.INSTANCES_RECEIVED,
                    detail={
                        "calling_ae": item.calling_ae,
                        "peer_address": item.peer_address,
                        "instances": item.count,
                        "association": item.ended,
                    },
                )

        try:
            self.store.run(write)
        except StoreRejected as exc:
            # Permanent: writing the same events again would fail again.
            logger.error("dropping %d received-study audit events: %s", len(batch), exc)
            del self._audits[: len(batch)]
            return
        except StoreUnavailable as exc:
            logger.warning("audit of %d received studies postponed: %s", len(batch), exc)
            if len(self._audits) > MAX_KEPT_AUDITS:
                dropped = len(self._audits) - MAX_KEPT_AUDITS
                logger.error("dropping %d audit events: the store is down too long", dropped)
                del self._audits[:dropped]
            return
        del self._audits[: len(batch)]

    def _send(self) -> None:
        sent: list[str] = []
        for study_uid in list(self._to_send):
            try:
                self._send_fn(self.celery_app, study_uid)
            except Exception as exc:  # kombu raises OperationalError and its own socket errors
                self._broker_failed(exc)
                break
            del self._to_send[study_uid]
            sent.append(study_uid)
            logger.info("queued study %s", study_uid)
        if sent:
            self.queued_total += len(sent)
            self._to_mark.extend(sent)
            if self._broker_down_since is not None:
                logger.info(
                    "broker reachable again after %.0f s",
                    time.monotonic() - self._broker_down_since,
                )
                self._broker_down_since = None
                self._broker_backoff = BROKER_BACKOFF_S[0]

    def _broker_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._broker_down_since is None:
            self._broker_down_since = now
            logger.warning(
                "broker unreachable (%s: %s); studies are kept (%d now) and sent again with "
                "backoff",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                len(self._to_send),
            )
        else:
            self._broker_backoff = min(self._broker_backoff * 2, BROKER_BACKOFF_S[1])
        self._broker_retry_at = now + self._broker_backoff

    def _mark_queued(self) -> None:
        if not self._to_mark:
            return
        batch = list(self._to_mark)
        # Taken after sending, so the mark is not older than any instance recorded before the
        # message went out (the sweep would queue such a study again).
        at = utcnow()
        try:
            self.store.run(lambda session: mark_queued(session, batch, at))
        except (StoreUnavailable, StoreRejected) as exc:
            logger.warning("cannot mark %d studies queued yet: %s", len(batch), exc)
            return
        del self._to_mark[: len(batch)]

    @property
    def broker_available(self) -> bool:
        """False from a failed send until the next one succeeds."""
        return self._broker_down_since is None

    @property
    def pending(self) -> int:
        """Studies noted or kept but not yet handed to the broker."""
        with self._lock:
            return len(self._arrivals) + len(self._to_send)
