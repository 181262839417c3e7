"""The audit chain's key and anchors: what makes a rewritten trail detectable.

Each new audit row's hash is an HMAC-SHA256 with the site's audit key (``CXR_AUDIT_KEY``, else
``CXR_DATA_DIR/audit.key`` made once, like the pseudonym key). The database never holds the
key, so whoever rewrites the table (an owner, a superuser, a restored dump) cannot re-hash the
chain so that it verifies. Rows written before the key existed keep their plain SHA-256 and
still verify; an unkeyed row after a keyed one is reported.

Anchors: every process appends the chain's head (``TIME ID HASH``) to an append-only file
outside the store (``CXR_AUDIT_ANCHOR_FILE``) at most every ``CXR_AUDIT_ANCHOR_INTERVAL_S``
seconds after a write that audits, and when it stops; the syslog export carries each event's
hash too. ``cxr-triage audit verify --anchors`` checks that the trail still holds every
anchored row with its hash: deleting the newest rows or rewriting the trail is found even by
someone who has the key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from pathlib import Path

from cxr_triage.settings import Settings
from governance.errors import ConfigError
from governance.pseudonyms import MIN_KEY_BYTES, _read_or_create

logger = logging.getLogger(__name__)

KEY_FILE = "audit.key"
MAX_ANCHOR_LINE = 200


def load_audit_key(settings: Settings, *, create: bool = True) -> bytes | None:
    """The audit key: CXR_AUDIT_KEY, else the data folder's key file (made once if ``create``).

    Returns None only when ``create`` is false and there is no key.

    Raises
    ------
    ConfigError
        The configured key is shorter than 16 bytes, or the key file cannot be read or made.
    """
    if settings.audit_key is not None:
        key = settings.audit_key.get_secret_value().encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"CXR_AUDIT_KEY must be at least {MIN_KEY_BYTES} characters")
        return key
    path = settings.data_dir / KEY_FILE
    if not create and not path.is_file():
        return None
    try:
        # Quietly: every embedded store makes one on its first command (compose requires
        # CXR_AUDIT_KEY); a command's one-line error must stay one line.
        return _read_or_create(path, "audit key", logging.DEBUG)
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the audit key {path}: {exc.strerror}; set CXR_AUDIT_KEY"
        ) from None


class AnchorFile:
    """Appends the audit chain's head to a file outside the store, at most every ``interval_s``.

    Thread-safe; one per process (owned by its :class:`~governance.db.Store`). Lines are
    appended with O_APPEND in one write each, so processes sharing the file do not interleave.
    """

    def __init__(self, path: Path, interval_s: float = 60.0) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.path = Path(path)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: tuple[int, str] | None = None
        self._written_id = 0
        self._last_write: float | None = None

    def note(self, event_id: int, row_hash: str) -> None:
        """A committed head; written now if the interval has passed, else kept for later."""
        with self._lock:
            if self._pending is None or event_id > self._pending[0]:
                self._pending = (event_id, row_hash)
            last = self._last_write
            if last is None or time.monotonic() - last >= self.interval_s:
                self._write()

    def flush(self) -> None:
        """Write the newest head not yet written (when the process stops)."""
        with self._lock:
            self._write()

    def _write(self) -> None:
        pending = self._pending
        if pending is None or pending[0] <= self._written_id:
            return
        event_id, row_hash = pending
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{when} {event_id} {row_hash}\n".encode("ascii")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:  # the audited action has committed; anchoring is best effort
            logger.error("cannot append the audit anchor to %s: %s", self.path, exc.strerror)
            return
        self._written_id, self._last_write = event_id, time.monotonic()


def read_anchors(path: Path, *, limit: int = 1_000_000) -> list[tuple[int, str]]:
    """The anchors of an anchor file, ``(event id, hash)``, in file order.

    Raises
    ------
    ConfigError
        The file cannot be read, or a line is not ``TIME ID HASH``.
    """
    anchors: list[tuple[int, str]] = []
    try:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if number > limit:
                    raise ConfigError(f"{path} has more than {limit} anchors")
                line = raw[:MAX_ANCHOR_LINE].decode("ascii", errors="replace").split()
                if not line:
                    continue
                if (
                    len(line) != 3
                    or not line[1].isdigit()
                    or len(line[2]) != 64
                    or any(c not in "0123456789abcdef" for c in line[2])
                ):
                    raise ConfigError(f"{path}:{number} is not an anchor (TIME ID HASH)")
                anchors.append((int(line[1]), line[2]))
    except OSError as exc:
        raise ConfigError(f"cannot read the anchor file {path}: {exc.strerror}") from None
    return anchors
