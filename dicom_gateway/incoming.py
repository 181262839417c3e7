"""The files pynetdicom streams received data sets into, in the spool's incoming folder.

With chunked receive, pynetdicom writes each C-STORE data set to ``NamedTemporaryFile(delete=
False, mode="wb", suffix=".dcm")`` as its PDUs arrive and flushes after each one; the handler
then fsyncs and renames it. :class:`IncomingFile` gives pynetdicom the same file in the spool's
incoming folder and, every :data:`WRITEBACK_BYTES`, asks the kernel to start writing what has
arrived (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, as PostgreSQL's ``*_flush_after`` settings
do), and every :data:`SYNC_BYTES` it runs ``fdatasync`` in a background thread. On a disk whose
cache flush costs in proportion to what it flushes (measured here: an 8 MB file's fdatasync
took 13-15 ms even with its pages already written back, a 4 KB file's 0.3 ms), the flush then
overlaps the network transfer and the fdatasync before Success finds only the tail left to do.
Durability still comes from that last fdatasync; this only moves the work earlier. A failed
background fdatasync fails the instance (:func:`settle`): its error is not lost to the last
one, which opens the file anew.

It also bounds what one data set may take: once more than ``max_bytes`` have arrived, the file
is emptied, the rest of the transfer is counted but not written, and the file is marked
oversize; the C-STORE handler then refuses it (:func:`take_oversize`). The disk never holds
more than ``max_bytes`` of one instance, however long the peer keeps sending.

:func:`install` replaces the ``NamedTemporaryFile`` name that ``pynetdicom.dimse_messages``
imported. Should a pynetdicom release stop using that name, nothing breaks: received files
still go to ``tempfile.tempdir``, which the gateway also points at the incoming folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WRITEBACK_BYTES = 1 << 20
#: Bytes received between two background fdatasyncs of an incoming file.
SYNC_BYTES = 2 << 20
_SYNC_FILE_RANGE_WRITE = 2

_OVERSIZE = "oversize"
_FAILED = "failed"

# Incoming files the C-STORE handler must refuse, by path: over the size limit (its file is
# kept, emptied, until the handler asks) or failed to write (disk full; its file is gone).
# Each mark is taken once; bounded: the oldest mark goes first.
_marks: dict[str, str] = {}
_marks_lock = threading.Lock()
_MAX_MARKS = 1024


def _mark(path: str, mark: str) -> None:
    with _marks_lock:
        while len(_marks) >= _MAX_MARKS:
            del _marks[next(iter(_marks))]
        _marks[path] = mark


def _take(path: str | os.PathLike[str], mark: str) -> bool:
    name = os.fspath(path)
    with _marks_lock:
        if _marks.get(name) != mark:
            return False
        del _marks[name]
        return True


# The latest background fdatasync of each incoming file, by path, until :func:`settle` takes it
# (a successful one removes itself; a failed one waits for settle, bounded like the marks).
_syncs: dict[str, Future[None]] = {}
_syncs_lock = threading.Lock()
_sync_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cxr-incoming-sync")
_fdatasync = getattr(os, "fdatasync", os.fsync)


def _sync_and_close(fd: int) -> None:
    try:
        _fdatasync(fd)
    finally:
        os.close(fd)


def _background_sync(name: str, fd: int) -> Future[None]:
    """fdatasync ``fd`` (a duplicate of it: the caller may close its own) in the pool."""
    future = _sync_pool.submit(_sync_and_close, os.dup(fd))
    with _syncs_lock:
        while len(_syncs) >= _MAX_MARKS:
            del _syncs[next(iter(_syncs))]
        _syncs[name] = future

    def forget(done: Future[None]) -> None:
        if done.exception() is None:
            with _syncs_lock:
                if _syncs.get(name) is done:
                    del _syncs[name]

    future.add_done_callback(forget)
    return future


def settle(path: str | os.PathLike[str]) -> None:
    """Wait for the background fdatasync of the file received into ``path``, if one runs.

    Raises
    ------
    OSError
        That fdatasync failed (e.g. the disk is full or failing): the file is not durable,
        and the fdatasync before Success might not see the error again.
    """
    with _syncs_lock:
        future = _syncs.pop(os.fspath(path), None)
    if future is not None:
        future.result()


def take_oversize(path: str | os.PathLike[str]) -> bool:
    """Whether the data set received into ``path`` went over its size limit (forgets it)."""
    return _take(path, _OVERSIZE)


def take_failure(path: str | os.PathLike[str]) -> bool:
    """Whether writing the incoming file at ``path`` failed (asked once per file)."""
    return _take(path, _FAILED)


def forget_missing_oversize() -> None:
    """Drop the oversize marks of files that no longer exist (transfers that were aborted)."""
    with _marks_lock:
        for name, mark in list(_marks.items()):
            if mark == _OVERSIZE and not os.path.exists(name):
                del _marks[name]


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """libc's sync_file_range (Linux), or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> None:
        # A failure here costs only the head start: the fsync before Success still runs.
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return start_writeback


_start_writeback = _load_sync_file_range()


class IncomingFile:
    """A temporary file for one received data set, written back to disk as it grows.

    It offers what pynetdicom uses of a ``NamedTemporaryFile``: ``name``, ``write``,
    ``file.flush()`` and ``close()``; it is not deleted on close (pynetdicom unlinks it).

    When the disk is full a write fails: the file is removed at once (nothing half-written
    stays in the spool), the rest of the transfer is read and dropped, and the handler answers
    0xA700 (:func:`take_failure`) instead of the association dying with an exception.
    """

    def __init__(self, folder: Path, max_bytes: int | None = None) -> None:
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=folder)
        self.name = name
        self._stream = os.fdopen(fd, "wb")
        self._fd = fd
        self._written_back = 0
        self._synced = 0
        self._sync: Future[None] | None = None
        self._max_bytes = max_bytes
        self._received = 0
        self.oversize = False
        self._failed = False

    @property
    def file(self) -> IncomingFile:
        return self

    def write(self, data: bytes) -> int:
        self._received += len(data)
        if self.oversize or self._failed:
            return len(data)
        if self._max_bytes is not None and self._received > self._max_bytes:
            self._drop()
            return len(data)
        try:
            return self._stream.write(data)
        except OSError as exc:
            self._fail(exc)
            return len(data)

    def _fail(self, exc: OSError) -> None:
        self._failed = True
        logger.error("cannot write a received data set to %s: %s", self.name, exc.strerror or exc)
        # The buffered bytes that did not fit are dropped with the file.
        with contextlib.suppress(OSError):
            self._stream.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)
        _mark(self.name, _FAILED)

    def _drop(self) -> None:
        """Empty the file and write nothing more: the data set is over its limit."""
        self.oversize = True
        _mark(self.name, _OVERSIZE)
        self._stream.flush()
        self._stream.seek(0)
        self._stream.truncate(0)
        logger.warning(
            "received data set over %d bytes: not kept, will be refused", self._max_bytes
        )

    def flush(self) -> None:
        if self.oversize or self._failed:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            self._fail(exc)
            return
        end = self._stream.tell()
        if _start_writeback is not None and end - self._written_back >= WRITEBACK_BYTES:
            _start_writeback(self._fd, self._written_back, end - self._written_back)
            self._written_back = end
        if end - self._synced >= SYNC_BYTES and (self._sync is None or self._sync.done()):
            error = self._sync.exception() if self._sync is not None else None
            if isinstance(error, OSError):
                with _syncs_lock:
                    _syncs.pop(self.name, None)  # reported through the mark instead
                self._fail(error)  # the handler answers 0xA700 (take_failure)
                return
            try:
                self._sync = _background_sync(self.name, self._fd)
            except (OSError, RuntimeError):  # no fd left, or the pool is shut down
                return  # only the head start is lost: the fdatasync before Success still runs
            self._synced = end

    def close(self) -> None:
        if self._failed:
            return
        try:
            self._stream.close()
        except OSError as exc:  # the last buffered bytes did not fit
            self._fail(exc)

    def __enter__(self) -> IncomingFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def install(folder: Path, max_bytes: int | None = None) -> Callable[[], None]:
    """Make pynetdicom receive data sets into :class:`IncomingFile` objects in ``folder``.

    ``max_bytes`` bounds one received file (preamble and File Meta included).

    Returns a function that restores pynetdicom's own ``NamedTemporaryFile``.
    """
    from pynetdicom import dimse_messages

    original = getattr(dimse_messages, "NamedTemporaryFile", None)
    if original is None:
        logger.debug("pynetdicom no longer names NamedTemporaryFile; plain temporary files")
        return lambda: None

    def make(*args: Any, **kwargs: Any) -> Any:
        if args or kwargs.get("delete", True) or kwargs.get("mode") != "wb":
            return original(*args, **kwargs)  # not the call this replacement was made for
        return IncomingFile(folder, max_bytes)

    dimse_messages.NamedTemporaryFile = make

    def restore() -> None:
        dimse_messages.NamedTemporaryFile = original

    return restore
