"""Per-address limits on logins and refusals, and refusals audited in aggregate.

Whoever sends wrong tokens or floods ``/login`` must neither fill the audit trail (whose rows
can never be deleted) nor keep the store busy. :class:`AuthThrottle` counts login attempts and
refused requests per client address in a sliding minute; past ``limit`` the address is answered
429 until its count falls. :class:`RefusalAudit` lets at most one refusal event per address per
minute reach the trail, carrying how many refusals it stands for; what it still holds back
when the web stops is written then (:meth:`RefusalAudit.drain`).

Both keep at most ``max_addresses`` addresses (the least recently seen are forgotten), so a
spray of source addresses cannot grow them without bound. State is per process: with several
web processes each applies its own limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from governance.checks import at_least
from governance.tokens import Refusal

WINDOW_S = 60.0
MAX_ADDRESSES = 10_000


@dataclass(eq=False)
class AuthThrottle:
    """At most ``limit`` login attempts and refusals per address in ``window_s`` seconds."""

    limit: int
    _: KW_ONLY
    window_s: float = WINDOW_S
    max_addresses: int = MAX_ADDRESSES
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _hits: OrderedDict[str, deque[float]] = field(
        default_factory=OrderedDict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        at_least("limit", self.limit)

    def _recent(self, address: str, now: float) -> deque[float]:
        hits = self._hits.get(address)
        if hits is None:
            hits = deque(maxlen=self.limit + 1)
            self._hits[address] = hits
            while len(self._hits) > self.max_addresses:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(address)
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        return hits

    def blocked(self, address: str | None) -> bool:
        """Whether ``address`` has used up its limit for now."""
        with self._lock:
            return len(self._recent(address or "-", self.clock())) >= self.limit

    def hit(self, address: str | None) -> bool:
        """Count one attempt or refusal; whether the address is now past its limit."""
        with self._lock:
            now = self.clock()
            hits = self._recent(address or "-", now)
            blocked = len(hits) >= self.limit
            hits.append(now)
            return blocked

    def retry_after(self, address: str | None) -> int:
        """Seconds until ``address`` may try again (at least 1)."""
        with self._lock:
            now = self.clock()
            hits = self._recent(address or "-", now)
            if len(hits) < self.limit:
                return 1
            return max(1, int(hits[-self.limit] + self.window_s - now) + 1)


@dataclass(eq=False, kw_only=True)
class RefusalAudit:
    """Decides which refusals reach the audit trail: one per address per ``interval_s``."""

    interval_s: float = WINDOW_S
    max_addresses: int = MAX_ADDRESSES
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    # address -> (time of its last audited refusal, refusals since then, the latest of them)
    _seen: OrderedDict[str, tuple[float, int, Refusal | None]] = field(
        default_factory=OrderedDict, init=False, repr=False
    )

    def note(self, address: str | None, refusal: Refusal | None = None) -> int:
        """Count a refusal; the number to audit now (this one and those held back), or 0.

        ``refusal`` is kept while it is held back, for the event :meth:`drain` hands out.
        """
        key = address or "-"
        with self._lock:
            now = self.clock()
            last, held, _ = self._seen.pop(key, (float("-inf"), 0, None))
            if now - last >= self.interval_s:
                self._seen[key] = (now, 0, None)
                count = held + 1
            else:
                self._seen[key] = (last, held + 1, refusal)
                count = 0
            while len(self._seen) > self.max_addresses:
                self._seen.popitem(last=False)
            return count

    def restore(self, address: str | None, count: int, refusal: Refusal | None = None) -> None:
        """The event for ``count`` refusals was not written (store down): audit them next time."""
        key = address or "-"
        with self._lock:
            _last, held, latest = self._seen.pop(key, (float("-inf"), 0, None))
            self._seen[key] = (float("-inf"), held + count, latest or refusal)

    def drain(self) -> list[tuple[str | None, Refusal, int]]:
        """The refusals held back and not audited yet (at shutdown), forgotten here: per address,
        the latest refusal and how many it stands for."""
        with self._lock:
            held = [
                (None if key == "-" else key, latest, count)
                for key, (_last, count, latest) in self._seen.items()
                if count and latest is not None
            ]
            self._seen.clear()
        return held
