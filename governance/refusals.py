"""Refusals audited in aggregate: at most one audit event per peer per window, with a count.

A peer that is refused a thousand times a minute (a wrong AE title retried in a loop, a flood
of connections over the limit, failed logins) must not write a thousand undeletable audit rows
under the chain's lock. :class:`RefusalCounter` keeps counts per peer: the first refusal of a
quiet peer is reported at once, the ones that follow within ``window_s`` are folded into one
report when the window ends, and a peer that keeps being refused gets one report per window.
It is pure bookkeeping (no store, no thread); :func:`record_refusals` writes what it reports.
The DICOM gateway uses it for refused associations; the web can use it for refused logins.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from governance import audit
from governance.models import AuditEvent, utcnow
from governance.text import clip, printable

#: The most peers tracked at once; refusals from more fold into one "(many peers)" entry, so
#: a flood from spoofed or rotating addresses costs bounded memory too.
MAX_PEERS = 10_000
_OVERFLOW_PEER = "(many peers)"


@dataclass
class RefusalReport:
    """Refusals of one peer to audit as one event."""

    peer_address: str
    actor: str
    count: int
    reasons: dict[str, int]
    first_at: dt.datetime
    last_at: dt.datetime
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Window:
    opened: float
    actor: str
    reasons: Counter[str] = field(default_factory=Counter)
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())


class RefusalCounter:
    """Counts refusals per peer address and says when to audit them (thread-safe).

    Parameters
    ----------
    window_s
        The length of a peer's window: at most one report per peer per window (besides the
        first refusal of a quiet peer, reported at once).
    clock
        Monotonic seconds (tests pass their own).
    """

    def __init__(
        self, window_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def note(
        self,
        peer_address: str | None,
        *,
        actor: str | None,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> RefusalReport | None:
        """Count one refusal; returns a report to audit now (a quiet peer's first), or None."""
        peer = printable(peer_address or "unknown", 64) or "unknown"
        reason = printable(reason, 128)
        name = printable(actor or "(none)", 64) or "(none)"
        now, wall = self._clock(), utcnow()
        with self._lock:
            window = self._windows.get(peer)
            if window is None and len(self._windows) >= MAX_PEERS:
                peer = _OVERFLOW_PEER
                window = self._windows.get(peer)
            if window is None:
                # A quiet peer: report this one now, count what follows in a new window.
                self._windows[peer] = _Window(opened=now, actor=name)
                return RefusalReport(peer, name, 1, {reason: 1}, wall, wall, dict(detail or {}))
            window.reasons[reason] += 1
            window.actor = name
            window.first_at = window.first_at or wall
            window.last_at = wall
            window.detail = dict(detail or {})
            return None

    def due(self) -> list[RefusalReport]:
        """Reports of the windows that have ended; a peer still refused opens the next one."""
        now = self._clock()
        reports = []
        with self._lock:
            for peer, window in list(self._windows.items()):
                if now - window.opened < self.window_s:
                    continue
                if window.count:
                    reports.append(_report(peer, window))
                    self._windows[peer] = _Window(opened=now, actor=window.actor)
                else:
                    del self._windows[peer]
        return reports

    def drain(self) -> list[RefusalReport]:
        """Every count not yet reported (at shutdown); forgets all windows."""
        with self._lock:
            reports = [_report(p, w) for p, w in self._windows.items() if w.count]
            self._windows.clear()
        return reports


def _report(peer: str, window: _Window) -> RefusalReport:
    assert window.first_at is not None and window.last_at is not None
    return RefusalReport(
        peer,
        window.actor,
        window.count,
        dict(window.reasons),
        window.first_at,
        window.last_at,
        dict(window.detail),
    )


def record_refusals(
    session: Session, reports: Iterable[RefusalReport], *, action: str
) -> list[AuditEvent]:
    """One audit event per report: the peer, how many refusals, why, first and last time."""
    events = []
    for report in reports:
        reasons = {printable(k, 128): v for k, v in report.reasons.items()}
        main_reason = max(reasons, key=lambda k: reasons[k]) if reasons else ""
        detail = {
            **report.detail,
            "peer_address": report.peer_address,
            "reason": main_reason,
            "reasons": reasons,
            "count": report.count,
            "first_at": report.first_at.isoformat(),
            "last_at": report.last_at.isoformat(),
        }
        events.append(
            audit.record(
                session,
                actor=clip(report.actor, AuditEvent.actor) or "(none)",
                actor_address=clip(report.peer_address, AuditEvent.actor_address),
                action=action,
                outcome="refused",
                detail=detail,
            )
        )
    return events
