"""Durable placement of received files in the spool: ``<spool>/<study_uid>/<sop_uid>.dcm``.

pynetdicom streams each C-STORE data set into a temporary file (chunked receive). The temporary
folder is ``<spool>/.incoming`` on the same filesystem, so placing a file is a rename, not a
copy: fsync the file, ``os.replace`` it into the study folder, fsync the folder. A file is
durable when :meth:`Spool.place` returns; the caller then records it in the store.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
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
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.incoming = self.root / INCOMING

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

    def path_for(self, study_uid: str, sop_instance_uid: str) -> Path:
        """The spool path of an instance; both UIDs must be valid (they become path parts)."""
        if not is_valid_uid(study_uid):
            raise ValueError(f"study_uid is not a valid UID: {study_uid!r}")
        if not is_valid_uid(sop_instance_uid):
            raise ValueError(f"sop_instance_uid is not a valid UID: {sop_instance_uid!r}")
        return self.root / study_uid / f"{sop_instance_uid}.dcm"

    def place(self, source: Path, study_uid: str, sop_instance_uid: str) -> tuple[Path, bool]:
        """Make ``source`` durable at its spool path.

        Returns the path and whether a file was already there (a resent instance, which the
        new file replaced atomically).

        Raises
        ------
        OSError
            The spool could not take the file (disk full, permissions); ``source`` is left
            where it was and nothing is left at the target path.
        """
        target = self.path_for(study_uid, sop_instance_uid)
        folder = target.parent
        _fsync_file(source)
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        existed = target.exists()
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The temporary folder is on another filesystem (a tempdir set elsewhere): copy
            # into the spool first so that the final step is still an atomic rename.
            staging = self.incoming / f"{sop_instance_uid}.{os.getpid()}.copy"
            try:
                shutil.copyfile(source, staging)
                _fsync_file(staging)
                os.replace(staging, target)
            finally:
                staging.unlink(missing_ok=True)
        _fsync_dir(folder)
        return target, existed

    def discard(self, path: Path) -> None:
        """Remove a placed file whose store row was not written (best effort, logged)."""
        try:
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except OSError as exc:
            logger.error("could not remove %s: %s", path, exc.strerror or exc)

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


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
