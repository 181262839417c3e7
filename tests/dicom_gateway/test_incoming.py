"""The files pynetdicom receives data sets into."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from pynetdicom import dimse_messages

from dicom_gateway import incoming as incoming_module
from dicom_gateway.incoming import (
    SYNC_BYTES,
    WRITEBACK_BYTES,
    IncomingFile,
    install,
    settle,
    take_failure,
)

CHUNK = 131_072  # one PDU's worth, as pynetdicom writes and flushes it


def test_incoming_file_keeps_every_byte_written(tmp_path: Path) -> None:
    chunks = [os.urandom(131_072) for _ in range(3 * WRITEBACK_BYTES // 131_072 + 1)]
    with IncomingFile(tmp_path) as incoming:
        for chunk in chunks:
            incoming.write(chunk)
            incoming.file.flush()

    path = Path(incoming.name)
    assert path.parent == tmp_path and path.suffix == ".dcm"
    assert path.read_bytes() == b"".join(chunks)


def test_install_makes_pynetdicom_receive_into_the_folder_and_restores(tmp_path: Path) -> None:
    original = dimse_messages.NamedTemporaryFile
    restore = install(tmp_path)
    try:
        received = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
        received.write(b"DICM")
        received.close()
        assert Path(received.name).parent == tmp_path
        # Any other use keeps the standard behaviour.
        other = dimse_messages.NamedTemporaryFile(mode="w+b", dir=tmp_path)
        assert not isinstance(other, IncomingFile)
        other.close()
    finally:
        restore()
    assert dimse_messages.NamedTemporaryFile is original


def _syncs_noted(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[int]:
    """Note (or fail) each background fdatasync; the real one still runs where none fails."""
    noted: list[int] = []
    real = incoming_module._fdatasync

    def fdatasync(fd: int) -> None:
        noted.append(os.fstat(fd).st_size)
        if fail:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(incoming_module, "_fdatasync", fdatasync)
    return noted


def test_the_file_is_synced_in_the_background_while_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    noted = _syncs_noted(monkeypatch)
    chunks = [os.urandom(CHUNK) for _ in range(3 * SYNC_BYTES // CHUNK)]
    with IncomingFile(tmp_path) as incoming:
        for number, chunk in enumerate(chunks, 1):
            incoming.write(chunk)
            incoming.file.flush()
            if number * CHUNK == SYNC_BYTES:
                # The first 2 MB asked for a sync; wait for the pool to start it (a loaded
                # machine may take a while) before the rest arrives.
                deadline = time.monotonic() + 30
                while not noted and time.monotonic() < deadline:
                    time.sleep(0.01)

    settle(incoming.name)
    # An fdatasync ran before the last byte arrived: the flush overlapped the transfer.
    assert noted and min(noted) < len(chunks) * CHUNK
    assert Path(incoming.name).read_bytes() == b"".join(chunks)
    settle(incoming.name)  # taken once; a second call has nothing to wait for


def test_a_failed_background_sync_fails_the_file_while_data_still_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _syncs_noted(monkeypatch, fail=True)
    with IncomingFile(tmp_path) as incoming:
        for _ in range(4 * SYNC_BYTES // CHUNK):
            incoming.write(os.urandom(CHUNK))
            incoming.file.flush()

    # Nothing half-durable stays in the spool, and the handler answers 0xA700.
    assert take_failure(incoming.name)
    assert not Path(incoming.name).exists()
    assert incoming.name not in incoming_module._syncs  # reported once, through the mark


def test_a_background_sync_that_fails_after_the_last_byte_fails_settle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _syncs_noted(monkeypatch, fail=True)
    with IncomingFile(tmp_path) as incoming:
        incoming.write(os.urandom(SYNC_BYTES))
        incoming.file.flush()  # the one background fdatasync of this file starts here

    with pytest.raises(OSError, match="Input/output error"):
        settle(incoming.name)
