"""Durable placement of received files in the spool: ``<spool>/<study_uid>/<sop_uid>.dcm``.

pynetdicom streams each C-STORE data set into a temporary file (chunked receive). The temporary
folder is ``<spool>/.incoming`` on the same filesystem, so placing a file is a rename, not a
copy: fdatasync the file, ``os.replace`` it into the study folder, fsync the folder. A file is
durable when :meth:`Spool.place` returns; the caller then records it in the store. The gateway
places with ``sync_folder=False`` and leaves the folder fsync to its committer
(:mod:`dicom_gateway.commit`), which fsyncs each study folder once for all the renames of a
batch, before the batch's rows commit.

fdatasync, not fsync: it writes the data and the metadata needed to read it back (the size and
the blocks), and skips the timestamps, which nothing relies on after a crash. The rename is
made durable by the folder's fsync.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from dicom_gateway.header import is_valid_uid
from governance.errors import ConfigError

logger = logging.getLogger(__name__)

INCOMING = ".incoming"


class Spool:
    """The spool folder: where instances are kept until the worker and the PACS are done.

    Parameters
    ----------
    root
        The spool folder (``CXR_SPOOL_DIR``); created if missing.
    min_free_bytes
        The high-water mark as a free-space floor (``CXR_SPOOL_MIN_FREE_GB``): below it the
        gateway refuses instances (0xA700) before the filesystem is actually full. 0: no floor.
    max_bytes
        The high-water mark as a size cap on the spool's files (``CXR_SPOOL_MAX_GB``). 0: none.
    """

    def __init__(self, root: Path, *, min_free_bytes: int = 0, max_bytes: int = 0) -> None:
        if min_free_bytes < 0 or max_bytes < 0:
            raise ValueError("min_free_bytes and max_bytes must not be negative")
        self.root = Path(root).absolute()
        self.incoming = self.root / INCOMING
        self.min_free_bytes = min_free_bytes
        self.max_bytes = max_bytes
        self._used_lock = threading.Lock()
        self._used_bytes = 0
        # Serialises a placement's rename with retention's check-and-remove of the same path,
        # so retention never removes a file that a resent instance just put in place.
        self._rename_lock = threading.Lock()

    def prepare(self) -> None:
        """Create the folders, check they are writable, and remove stale incoming files.

        Raises
        ------
        ConfigError
            The spool folder cannot be created or written.
        """
        try:
            self.incoming.mkdir(parents=True, exist_ok=True)
            probe = self.incoming / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"CXR_SPOOL_DIR {self.root} cannot be used: {exc.strerror or exc}; "
                "point it at a writable folder"
            ) from None
        removed = self.sweep_incoming(older_than_s=0.0)
        if removed:
            logger.info("removed %d incomplete received files from %s", removed, self.incoming)
        if self.max_bytes:
            self.measure()

    # -- the high-water mark -----------------------------------------------------------------

    def measure(self) -> int:
        """Walk the study folders and take their files' total size as the spool's usage."""
        total = 0
        try:
            studies = [e for e in os.scandir(self.root) if e.is_dir() and e.name != INCOMING]
        except OSError as exc:
            logger.warning("cannot list %s: %s", self.root, exc.strerror or exc)
            return self.used_bytes
        for folder in studies:
            try:
                total += sum(f.stat().st_size for f in os.scandir(folder.path) if f.is_file())
            except OSError:
                continue  # removed meanwhile
        with self._used_lock:
            self._used_bytes = total
        return total

    @property
    def used_bytes(self) -> int:
        """The spool's files, bytes: measured at start and by each retention run, kept up to
        date by placements and removals in between (only tracked with a ``max_bytes`` cap)."""
        with self._used_lock:
            return self._used_bytes

    def _account(self, delta: int) -> None:
        with self._used_lock:
            self._used_bytes = max(0, self._used_bytes + delta)

    def refusal(self, size_bytes: int) -> str | None:
        """Why an instance of ``size_bytes`` must be refused now (high-water mark), or None.

        The received file already sits in the incoming folder on the same filesystem, so
        placing it costs no space; the floor keeps room for what is still arriving and for the
        store, logs and the temporary files of other associations.
        """
        if self.min_free_bytes:
            try:
                free = shutil.disk_usage(self.root).free
            except OSError as exc:
                return f"cannot read the spool's free space: {exc.strerror or exc}"
            if free < self.min_free_bytes:
                return f"spool free space {free >> 20} MiB under the floor"
        if self.max_bytes and self.used_bytes + size_bytes > self.max_bytes:
            return f"spool holds {self.used_bytes >> 20} MiB, at its cap"
        return None

    def path_for(self, study_uid: str, sop_instance_uid: str) -> Path:
        """The spool path of an instance; both UIDs must be valid (they become path parts)."""
        if not is_valid_uid(study_uid):
            raise ValueError(f"study_uid is not a valid UID: {study_uid!r}")
        if not is_valid_uid(sop_instance_uid):
            raise ValueError(f"sop_instance_uid is not a valid UID: {sop_instance_uid!r}")
        return self.root / study_uid / f"{sop_instance_uid}.dcm"

    def place(
        self, source: Path, study_uid: str, sop_instance_uid: str, *, sync_folder: bool = True
    ) -> tuple[Path, bool]:
        """Make ``source`` durable at its spool path.

        Returns the path and whether a file was already there (a resent instance, which the
        new file replaced atomically).

        With ``sync_folder=False`` the rename is not yet durable when this returns: the caller
        must pass the path's folder to :meth:`sync_folders` before it relies on the file.

        Raises
        ------
        OSError
            The spool could not take the file (disk full, permissions); ``source`` is left
            where it was and nothing is left at the target path.
        """
        target = self.path_for(study_uid, sop_instance_uid)
        folder = target.parent
        _fdatasync_file(source)
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        existed = target.exists()
        old_size = target.stat().st_size if existed and self.max_bytes else 0
        try:
            with self._rename_lock:
                try:
                    os.replace(source, target)
                except FileNotFoundError:
                    if not source.exists():
                        raise
                    # Retention removed the empty study folder between our check and here.
                    folder.mkdir(exist_ok=True)
                    _fsync_dir(self.root)
                    os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The temporary folder is on another filesystem (a tempdir set elsewhere): copy
            # into the spool first so that the final step is still an atomic rename.
            staging = self.incoming / f"{sop_instance_uid}.{os.getpid()}.copy"
            try:
                shutil.copyfile(source, staging)
                _fdatasync_file(staging)
                os.replace(staging, target)
            finally:
                staging.unlink(missing_ok=True)
        if sync_folder:
            _fsync_dir(folder)
        if self.max_bytes:
            self._account(target.stat().st_size - old_size)
        return target, existed

    def sync_folders(self, folders: set[Path]) -> None:
        """Fsync study folders: the renames :meth:`place` made into them become durable.

        Raises
        ------
        OSError
            A folder could not be fsynced (its renames may not survive a crash).
        """
        for folder in folders:
            _fsync_dir(folder)

    def discard(self, path: Path) -> None:
        """Remove a placed file whose store row was not written (best effort, logged)."""
        try:
            size = path.stat().st_size if self.max_bytes and path.exists() else 0
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
            self._account(-size)
        except OSError as exc:
            logger.error("could not remove %s: %s", path, exc.strerror or exc)

    def remove_for_retention(self, path: str, *, unchanged_since: float) -> int | None:
        """Remove a triaged instance's file; its size, 0 if it was already gone, None if kept.

        A file modified after ``unchanged_since`` (``time.time()``) is kept: the instance was
        received again while retention ran, and the new file is not yet triaged. A path outside
        the spool is never touched. The study folder is removed once empty.
        """
        target = Path(path)
        try:
            target.relative_to(self.root)
        except ValueError:
            logger.warning(
                "retention: not removing %s, it is outside the spool %s", target, self.root
            )
            return None
        with self._rename_lock:
            try:
                info = target.stat()
            except FileNotFoundError:
                return 0
            if info.st_mtime > unchanged_since:
                return None
            try:
                target.unlink()
            except FileNotFoundError:
                return 0
        self._account(-info.st_size)
        return info.st_size

    def study_files(self) -> list[Path]:
        """Every placed instance file (``<study>/<sop>.dcm``), for the start-up orphan check."""
        files: list[Path] = []
        try:
            folders = [e for e in os.scandir(self.root) if e.is_dir() and e.name != INCOMING]
        except OSError as exc:
            logger.warning("cannot list %s: %s", self.root, exc.strerror or exc)
            return files
        for folder in folders:
            try:
                files += [Path(f.path) for f in os.scandir(folder.path) if f.name.endswith(".dcm")]
            except OSError:
                continue
        return files

    def remove_empty_folders(self, folders: set[Path]) -> None:
        """Remove study folders left empty by retention (a later instance recreates one)."""
        for folder in folders:
            try:
                folder.rmdir()
            except OSError:
                continue  # not empty (a new instance arrived) or gone
        if folders:
            try:
                _fsync_dir(self.root)
            except OSError as exc:
                logger.warning("cannot fsync %s: %s", self.root, exc.strerror or exc)

    def remove_replaced(self, path: str) -> None:
        """Remove the older copy of a resent instance, once the new row has committed."""
        target = Path(path)
        try:
            target.relative_to(self.root)
        except ValueError:
            logger.warning("not removing %s: it is outside the spool %s", target, self.root)
            return
        self.discard(target)

    def sweep_incoming(self, older_than_s: float) -> int:
        """Remove received files nobody writes any more: transfers cut off by an abort or crash.

        pynetdicom deletes a temporary file after the C-STORE handler returns, but not the one
        of a transfer that never completed. A transfer in progress writes its file at every
        PDU, so a file untouched for ``older_than_s`` seconds is abandoned. Only pynetdicom's
        ``*.dcm`` files and our ``*.copy`` staging files are touched: the folder is also the
        process's temporary folder.
        """
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.incoming))
        except OSError as exc:
            logger.warning("cannot list %s: %s", self.incoming, exc.strerror or exc)
            return 0
        for entry in entries:
            try:
                if (
                    entry.name.endswith((".dcm", ".copy"))
                    and entry.is_file()
                    and now - entry.stat().st_mtime >= older_than_s
                ):
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue  # gone already, or still being handled
        return removed


def _fdatasync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
