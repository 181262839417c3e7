"""Group commit: the rows of received instances recorded in shared transactions.

A C-STORE is answered Success only once its file is durable in the spool and its row has
committed in the store (DESIGN.md). One transaction per instance costs a WAL fsync (SQLite,
synchronous=FULL) or a WAL flush on the server (PostgreSQL) and a fsync of the study folder for
every instance. With several associations receiving at once, the :class:`Committer` thread takes
the rows of all the instances waiting for their Success, fsyncs the study folders their files
were renamed into (once per folder per batch), then records them in one transaction; each
C-STORE handler waits for the commit of its batch. Nothing waits on a timer: the committer takes
what is queued the moment it is free, so a lone association's instance goes at once in a batch of
one, and under load the batch grows with the time the previous commit took.

Each instance is recorded in a savepoint of its own: one that the store refuses (a SOP Instance
UID of another study, a value it rejects) is rolled back and told so, and the others commit. A
fault of the transaction itself (the store down, the disk full) fails the whole batch: no
instance of it is told Success; each handler removes its file and answers 0xA700.

The order that makes a Success safe holds for every instance of a batch: its file was fsynced
and renamed by its handler, the folder fsync follows the rename, and the commit follows the
folder fsync.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from dicom_gateway.spool import Spool
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


@dataclass(slots=True)
class _Pending:
    item: ReceivedInstance
    done: threading.Event = field(default_factory=threading.Event)
    replaced: str | None = None
    error: BaseException | None = None


class Committer:
    """The gateway's committer thread: folder fsyncs and store rows of received instances.

    Parameters
    ----------
    store
        The store the rows go to.
    spool
        The spool whose study folders are fsynced before each commit.
    max_batch
        The most instances recorded in one transaction.

    Instances handed to :meth:`record` before :meth:`start` wait for it (and share a batch).
    """

    def __init__(self, store: Store, spool: Spool, *, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.store = store
        self.spool = spool
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Transactions committed (or failed) and the instances they carried, for the logs
        #: and the benchmarks: the mean batch is ``instances / batches``.
        self.batches = 0
        self.instances = 0
        self.largest_batch = 0

    def start(self) -> None:
        """Start the committer thread."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the committer is already running")
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="cxr-committer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Record what is queued, then stop; later :meth:`record` calls raise StoreUnavailable."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._closed = True
            self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            logger.error("the committer did not finish within %.0f s", timeout)
        elif self.batches:
            logger.info(
                "committer: %d instances in %d transactions (largest %d)",
                self.instances,
                self.batches,
                self.largest_batch,
            )

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
            self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.replaced

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending is None:
                    stopping = True
                    break
                batch.append(pending)
            self._commit(batch)

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
        except Exception as exc:  # a bug must fail this batch, not stop the committer
            logger.exception("recording a batch of %d instances failed unexpectedly", len(batch))
            failure = StoreRejected(f"recording failed unexpectedly ({type(exc).__name__})")
            for pending in batch:
                pending.error = failure
        finally:
            for pending in batch:
                pending.done.set()


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
