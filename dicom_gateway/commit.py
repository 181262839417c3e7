"""Group commit: the rows of received instances recorded in shared transactions.

A C-STORE is answered Success only once its file is durable in the spool and its row has
committed in the store (DESIGN.md). One transaction per instance costs a WAL fsync (SQLite,
synchronous=FULL) or a WAL flush on the server (PostgreSQL) and a fsync of the study folder for
every instance. The :class:`Committer` shares them: it fsyncs the study folders of all the
instances waiting for their Success at that moment (once per folder) and records their rows in
one transaction; each C-STORE handler waits for the commit of its batch.

The commit is run by one of the waiting handlers' threads, the leader (leader/follower group
commit): a handler that finds no commit in progress commits its own row at once, so a lone
association pays nothing for the batching, not even a switch to another thread. Handlers that
arrive while a commit is in progress queue up; when the commit ends, the leader wakes the first
of them, which commits everything that queued meanwhile (at most ``max_batch``) in the next
transaction. Nothing waits on a timer: under load the batch grows with the time the previous
commit took.

Each instance is recorded in a savepoint of its own: one that the store refuses (a SOP Instance
UID of another study, a value it rejects) is rolled back and told so, and the others commit. A
fault of the transaction itself (the store down, the disk full) fails the whole batch: no
instance of it is told Success; each handler removes its file and answers 0xA700.

The order that makes a Success safe holds for every instance of a batch: its file was
fdatasynced and renamed by its handler, the folder fsync follows the rename, and the commit
follows the folder fsync.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from dicom_gateway.spool import Spool
from governance.checks import at_least
from governance.db import Store, is_transient
from governance.errors import InstanceConflict, StoreRejected, StoreUnavailable
from governance.studies import ReceivedInstance, record_instance

logger = logging.getLogger(__name__)

#: The most instances in one transaction: bounds the transaction's length and the lock it
#: holds on SQLite (other processes' writes wait behind it).
MAX_BATCH = 64
# Two processes that bring the first instances of one study at once can both insert the study
# row on PostgreSQL; the loser sees a unique violation and finds the row on the next try.
_RECORD_ATTEMPTS = 3


@dataclass(slots=True, eq=False)
class _Pending:
    item: ReceivedInstance
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    finished: bool = False
    replaced: str | None = None
    error: BaseException | None = None


class Committer:
    """Group commit of the gateway's received instances: folder fsyncs and store rows.

    Parameters
    ----------
    store
        The store the rows go to.
    spool
        The spool whose study folders are fsynced before each commit.
    max_batch
        The most instances recorded in one transaction.
    """

    def __init__(self, store: Store, spool: Spool, *, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.spool = spool
        self.max_batch = at_least("max_batch", max_batch)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._waiting: deque[_Pending] = deque()
        self._busy = False
        self._closed = True
        #: Transactions run and the instances they carried, for the logs and the benchmarks
        #: (the mean batch is ``instances / batches``).
        self.batches = 0
        self.instances = 0
        self.largest_batch = 0

    def start(self) -> None:
        """Take rows from now on."""
        with self._lock:
            self._closed = False

    def stop(self, timeout: float = 30.0) -> None:
        """Let the commit in progress and those queued end, then refuse new rows.

        Later :meth:`record` calls raise StoreUnavailable.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._idle.wait_for(lambda: not self._busy, timeout):
                logger.error("the committer did not finish within %.0f s", timeout)
        if self.batches:
            logger.info(
                "committer: %d instances in %d transactions (largest %d)",
                self.instances,
                self.batches,
                self.largest_batch,
            )

    @property
    def waiting(self) -> int:
        """Instances queued behind the commit in progress."""
        with self._lock:
            return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a commit is in progress."""
        with self._lock:
            return self._busy

    def record(self, item: ReceivedInstance) -> str | None:
        """Record ``item`` (its file placed at ``item.path``); returns once its batch committed.

        Returns the path of an older copy of the instance that the new row replaced (for the
        caller to remove), or None.

        Raises
        ------
        InstanceConflict
            The SOP Instance UID is stored under another study; nothing was recorded.
        StoreUnavailable
            The store did not take the batch (or the committer is stopped); nothing recorded.
        StoreRejected
            The store refused the row for good (a value it cannot take).
        OSError
            The study folder could not be fsynced; nothing recorded.
        """
        pending = _Pending(item)
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the gateway is stopping")
            self._waiting.append(pending)
            if not self._busy:
                # Nobody commits: this thread does, now. (The queue was empty: it is first.)
                self._busy = True
                pending.lead = True
        while not pending.finished:
            if pending.lead:
                pending.lead = False
                self._lead()
            else:
                pending.wake.wait()
                pending.wake.clear()
        if pending.error is not None:
            raise pending.error
        return pending.replaced

    def _lead(self) -> None:
        """Commit the queued rows (this thread's first), then hand over to the next waiter."""
        with self._lock:
            batch = [
                self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))
            ]
        try:
            self._commit(batch)
        finally:
            with self._lock:
                if self._waiting:
                    successor = self._waiting[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._busy = False
                    self._idle.notify_all()

    def _commit(self, batch: list[_Pending]) -> None:
        """Fsync the batch's folders, record its rows in one transaction, wake its handlers."""
        self.batches += 1
        self.instances += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            self.spool.sync_folders({Path(p.item.path).parent for p in batch})
            items = [pending.item for pending in batch]
            outcomes = self.store.run(lambda session: record_batch(session, items))
            for pending, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    pending.error = outcome
                else:
                    pending.replaced = outcome
        except (OSError, StoreUnavailable, StoreRejected) as exc:
            for pending in batch:
                pending.error = exc
        except Exception as exc:  # a bug must fail this batch, not the gateway
            logger.exception("recording a batch of %d instances failed unexpectedly", len(batch))
            failure = StoreRejected(f"recording failed unexpectedly ({type(exc).__name__})")
            for pending in batch:
                pending.error = failure
        finally:
            for pending in batch:
                pending.finished = True
                pending.wake.set()


def record_batch(
    session: Session, items: list[ReceivedInstance]
) -> list[str | None | BaseException]:
    """Record ``items`` in ``session``'s transaction, each in a savepoint of its own.

    Returns, for each item, the path of the older copy its row replaced (or None), or the
    error that refused that item alone (InstanceConflict, StoreRejected, StoreUnavailable after
    repeated unique violations). A transient fault propagates: the caller's ``Store.run`` tries
    the whole transaction again.
    """
    return [_record_one(session, item) for item in items]


def _record_one(session: Session, item: ReceivedInstance) -> str | None | BaseException:
    for attempt in range(1, _RECORD_ATTEMPTS + 1):
        try:
            with session.begin_nested():
                _, replaced = record_instance(session, item)
            return replaced
        except InstanceConflict as exc:
            return exc
        except IntegrityError:
            if attempt == _RECORD_ATTEMPTS:
                return StoreUnavailable("the store kept refusing a concurrent write")
        except DBAPIError as exc:
            if is_transient(exc):
                raise
            return StoreRejected(f"the store refused the row: {type(exc.orig).__name__}")
    raise AssertionError("unreachable")
