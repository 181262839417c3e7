"""The files pynetdicom receives data sets into."""

from __future__ import annotations

import os
from pathlib import Path

from pynetdicom import dimse_messages

from dicom_gateway.incoming import WRITEBACK_BYTES, IncomingFile, install


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
