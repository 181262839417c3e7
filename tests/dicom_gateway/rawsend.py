"""Send data sets byte for byte, as a hostile or broken peer would, with a real pynetdicom SCU.

``pynetdicom_store`` (tests/peers.py) sends the bytes of a Part-10 file after its File Meta
group, which pydicom finds by reading every group 0002 element: a data set that starts with
group 0002 elements of its own would lose them. :func:`send_raw` sends exactly the bytes it is
given as the data set, on a presentation context of the caller's choice (so a CT object can go
on a CR context), and returns the statuses.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian


@dataclass(frozen=True)
class RawInstance:
    """One C-STORE: the request's UIDs, the context it goes on, and the data set's bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    data: bytes
    transfer_syntax: str = ExplicitVRLittleEndian
    context_sop_class_uid: str | None = None  # default: the request's SOP class


def dataset_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The data set (without File Meta) encoded in an uncompressed ``transfer_syntax``."""
    from pynetdicom.dsutils import encode

    syntax = UID(transfer_syntax)
    data = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian)
    assert data is not None, "pydicom could not encode the data set"
    return data


def raw_instance(ds: Dataset, **kwargs: Any) -> RawInstance:
    """A RawInstance of a Dataset with its own SOP Class/Instance UIDs in the request."""
    syntax = kwargs.pop("transfer_syntax", ExplicitVRLittleEndian)
    return RawInstance(
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        dataset_bytes(ds, syntax),
        transfer_syntax=syntax,
        **kwargs,
    )


def _write(folder: Path, index: int, item: RawInstance) -> tuple[Path, int, Dataset]:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(item.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(item.sop_instance_uid)
    meta.TransferSyntaxUID = UID(item.transfer_syntax)
    path = folder / f"raw{index:05d}.dcm"
    with open(path, "wb") as fp:
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta)  # type: ignore[arg-type]
        offset = fp.tell()
        fp.write(item.data)
    return path, offset, meta


@contextmanager
def _patched(files: dict[str, tuple[Dataset, int]]) -> Iterator[None]:
    from pynetdicom import _config, association

    original_split = association.split_dataset
    previous = _config.STORE_SEND_CHUNKED_DATASET

    def split(path: Any) -> tuple[Dataset, int]:
        return files[str(path)]

    association.split_dataset = split  # type: ignore[assignment]
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        association.split_dataset = original_split
        _config.STORE_SEND_CHUNKED_DATASET = previous


def send_raw(
    host: str,
    port: int,
    items: Sequence[RawInstance],
    *,
    called_ae: str = "CXRTRIAGE",
    calling_ae: str = "RAWSCU",
    bind_address: tuple[str, int] | None = None,
    tls: Any = None,
    timeout: float = 30.0,
) -> list[int | None]:
    """Send ``items`` on one association; the statuses (None where no answer came).

    Raises AssertionError when the association is not accepted. ``tls`` is pynetdicom's
    ``(ssl_context, server_hostname)``.
    """
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    pairs = {(i.context_sop_class_uid or i.sop_class_uid, i.transfer_syntax) for i in items}
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, [syntax])
    kwargs: dict[str, Any] = {"ae_title": called_ae}
    if bind_address is not None:
        kwargs["bind_address"] = bind_address
    if tls is not None:
        kwargs["tls_args"] = tls
    assoc = ae.associate(host, port, **kwargs)
    if not assoc.is_established:
        raise AssertionError(f"association with {called_ae}@{host}:{port} was not accepted")
    statuses: list[int | None] = []
    with tempfile.TemporaryDirectory() as folder:
        files: dict[str, tuple[Dataset, int]] = {}
        try:
            for index, item in enumerate(items):
                path, offset, meta = _write(Path(folder), index, item)
                files[str(path)] = (meta, offset)
                if not assoc.is_established:
                    break
                with _patched(files):
                    try:
                        answer = _send(assoc, path, item)
                    except RuntimeError:  # the association ended just before this request
                        break
                statuses.append(int(answer.Status) if "Status" in answer else None)
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
    return statuses


def _send(assoc: Any, path: Path, item: RawInstance) -> Dataset:
    """send_c_store, on the context of ``item.context_sop_class_uid`` when one is given."""
    if item.context_sop_class_uid is None:
        return assoc.send_c_store(path)  # type: ignore[no-any-return]
    original = assoc._get_valid_context

    def context(_sop_class: Any, syntax: Any, role: Any, **kwargs: Any) -> Any:
        return original(item.context_sop_class_uid, syntax, role, **kwargs)

    assoc._get_valid_context = context
    try:
        return assoc.send_c_store(path)  # type: ignore[no-any-return]
    finally:
        assoc._get_valid_context = original
