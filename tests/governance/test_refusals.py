"""Refusals counted per peer and audited at most once per window, with a count."""

from __future__ import annotations

from governance.audit import Action
from governance.db import Store
from governance.refusals import RefusalCounter, record_refusals
from tests.inspect_store import audit_events


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_quiet_peer_is_reported_at_once_then_once_per_window() -> None:
    clock = Clock()
    counter = RefusalCounter(60, clock=clock)

    first = counter.note("10.0.0.9", actor="EVIL", reason="calling AE title not recognised")
    assert first is not None and first.count == 1
    for _ in range(299):
        assert counter.note("10.0.0.9", actor="EVIL", reason="limit") is None
    assert counter.note("10.0.0.7", actor=None, reason="limit") is not None
    assert counter.due() == []

    clock.now += 60
    [report] = counter.due()
    assert (report.peer_address, report.count, report.reasons) == ("10.0.0.9", 299, {"limit": 299})
    # Still refused in the next window: counted, reported at its end, not at once.
    assert counter.note("10.0.0.9", actor="EVIL", reason="limit") is None
    clock.now += 60
    assert [r.count for r in counter.due()] == [1]
    # A window with no refusal ends the peer's series: the next one is reported at once.
    clock.now += 60
    assert counter.due() == []
    assert counter.note("10.0.0.9", actor="EVIL", reason="limit") is not None
    assert counter.drain() == []


def test_peer_text_is_cut_and_reports_are_audited_one_row_each(store: Store) -> None:
    counter = RefusalCounter(60)
    long_peer = "p" * 500
    first = counter.note(long_peer, actor="A" * 300 + "\n", reason="r" * 400)
    assert first is not None  # a quiet peer's first refusal is reported at once
    for _ in range(5):
        counter.note(long_peer, actor="A", reason="limit")
    reports = [first, *counter.drain()]

    store.run(lambda s: record_refusals(s, reports, action=Action.ASSOCIATION_REFUSED))

    events = audit_events(store, Action.ASSOCIATION_REFUSED)
    assert [e.detail["count"] for e in events] == [1, 5]
    assert all(e.actor_address == "p" * 64 and e.outcome == "refused" for e in events)
    assert len(events[0].actor) <= 128 and "\n" not in events[0].actor
    assert events[0].detail["reason"] == "r" * 128
