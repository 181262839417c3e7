"""Read what the gateway needs from a received instance's header, and nothing else.

The gateway never decodes pixel data: it reads the header up to (7FE0,0010) Pixel Data with
only the attributes listed in :data:`HEADER_TAGS`, then checks from the element's length that the
Pixel Data is complete in the file. The only patient attributes that leave this module are sex
and age in years, which the store keeps for subgroup monitoring, and a keyed pseudonym of the
Patient ID (the ID itself never leaves :func:`read_header`).
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Collection
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from dicom_gateway import status
from governance.audit import pseudonym
from governance.studies import ReceivedInstance
from governance.text import clip, clip_uid

logger = logging.getLogger(__name__)

HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "Manufacturer",
    "PatientSex",
    "PatientAge",
    "PatientID",  # read only to derive its keyed pseudonym
    # Worklist fields: kept only where the site sets CXR_WORKLIST_PHI.
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
)
HEADER_TAGS: list[BaseTag | int] = [Tag(keyword) for keyword in HEADER_KEYWORDS]

# Digits and dots, no empty component, at most 64 characters (PS3.5 9.1). Components with a
# leading zero are not valid DICOM but some modalities write them; they are harmless in a path,
# so they are accepted rather than refusing a patient's study.
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_DATE_PATTERN = re.compile(r"\d{8}")
_AGE_PATTERN = re.compile(r"(\d{1,3})\s*([DWMY]?)")
_DAYS_PER_UNIT = {"D": 1, "W": 7, "M": 30.4375, "Y": 365.25}

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_ITEM_TAG = 0xFFFEE000
_SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_MAX_FRAGMENTS = 1_000_000
_META_START = 132  # 128-byte preamble and "DICM"
_MAX_META_BYTES = 1 << 16
_MAX_PATIENT_ID = 64

#: The most bytes of a data set read before its Pixel Data: generous for the private groups
#: and icon sequences modalities write, small enough that a hostile header costs little.
MAX_HEADER_BYTES = 8 << 20

#: Transfer syntaxes a data set may be read in: the ones the gateway negotiates. Deflated
#: Explicit VR Little Endian is never among them (inflating is unbounded).
READABLE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    }
)


class InstanceRejected(Exception):
    """A received instance that cannot be stored; carries the DIMSE status to answer with.

    The message names UIDs and the problem only, never a patient attribute.
    """

    def __init__(self, status_value: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status_value
        self.reason = reason


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a UID that is safe to use as a file or folder name.

    Parameters
    ----------
    value
        Anything; only a ``str`` of digits and dots, without empty components, of at most
        64 characters (PS3.5 Section 9.1) is valid.
    """
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_PATTERN.fullmatch(value))


def age_in_years(value: object) -> int | None:
    """Convert an Age String (``nnnD``, ``nnnW``, ``nnnM``, ``nnnY``; PS3.5 Table 6.2-1) to years.

    Returns None for an empty or malformed value. A value without a unit is taken as years,
    which is what the modalities that omit it mean.
    """
    if not isinstance(value, str):
        return None
    match = _AGE_PATTERN.fullmatch(value.strip().upper())
    if match is None:
        return None
    number, unit = int(match.group(1)), match.group(2) or "Y"
    years = int(number * _DAYS_PER_UNIT[unit] // 365.25)
    return years if 0 <= years <= 150 else None


def read_header(
    path: Path,
    *,
    affected_sop_class_uid: str,
    affected_sop_instance_uid: str,
    pseudonym_key: bytes | None = None,
    worklist_fields: bool = False,
    transfer_syntax_uid: str | None = None,
    accepted_sop_classes: Collection[str] | None = None,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> ReceivedInstance:
    """Read and check the header of a received Part-10 file, without its pixel data.

    Returns the instance as the store records it, at ``path``; the caller sets the spool path
    and the calling peer (``dataclasses.replace``) once it has placed the file.

    Only what was negotiated steers the parsing: the data set is read in the association's
    transfer syntax, never in one a peer writes into it. pynetdicom writes a preamble and a
    File Meta Information group built from the request; a data set that brings a File Meta
    group of its own (group 0002) is refused, because anything that later opens the file with
    :func:`pydicom.dcmread` would parse it with the peer's Transfer Syntax UID (a Deflated one
    inflates the rest in memory). At most ``max_header_bytes`` of the data set are read before
    the Pixel Data.

    Parameters
    ----------
    path
        The file pynetdicom wrote: a preamble, the File Meta Information built from the
        request, then the data set exactly as the peer sent it.
    affected_sop_class_uid, affected_sop_instance_uid
        The UIDs of the C-STORE request; the data set must carry the same ones (PS3.4 B.2.3).
    pseudonym_key
        The site's pseudonym key; with it, a Patient ID becomes a keyed pseudonym.
    worklist_fields
        Keep the Accession Number, study date and description (PHI; ``CXR_WORKLIST_PHI``).
    transfer_syntax_uid
        The transfer syntax of the presentation context the data set came on; None takes the
        one of the File Meta group pynetdicom wrote (the same value).
    accepted_sop_classes
        SOP classes the gateway stores; another one is refused whatever the context it came on.
    max_header_bytes
        The most bytes of the data set read to find the attributes and the Pixel Data.

    Raises
    ------
    InstanceRejected
        With :data:`~dicom_gateway.status.CANNOT_UNDERSTAND` when the file cannot be parsed,
        its header is too long or its Pixel Data is truncated,
        :data:`~dicom_gateway.status.DATASET_MISMATCH` when the UIDs differ from the
        request's, the SOP class is not accepted, or the Study Instance UID or Pixel Data is
        missing.
    """
    if accepted_sop_classes is not None and affected_sop_class_uid not in accepted_sop_classes:
        raise InstanceRejected(
            status.DATASET_MISMATCH, f"SOP class {clip_uid(affected_sop_class_uid)} not accepted"
        )
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        try:
            meta_end, meta_syntax = _read_own_meta(fp)
            transfer_syntax = UID(transfer_syntax_uid or meta_syntax)
            if transfer_syntax not in READABLE_SYNTAXES:
                raise InstanceRejected(
                    status.CANNOT_UNDERSTAND,
                    f"transfer syntax {clip_uid(str(transfer_syntax))} not accepted",
                )
            fp.seek(meta_end)
            if _starts_with_group_2(fp.read(2), transfer_syntax):
                raise InstanceRejected(
                    status.CANNOT_UNDERSTAND, "data set carries a File Meta group (0002)"
                )
            fp.seek(meta_end)
            budget = _ReadBudget(fp, max_header_bytes)
            ds = read_dataset(
                budget,  # type: ignore[arg-type]
                transfer_syntax.is_implicit_VR,
                transfer_syntax.is_little_endian,
                stop_when=_at_pixel_data,
                specific_tags=HEADER_TAGS,
            )
            end = fp.tell()
            if end + 8 > size:
                raise InstanceRejected(status.DATASET_MISMATCH, "data set has no Pixel Data")
            fp.seek(end)
            _check_pixel_data(fp, transfer_syntax, size)
        except InstanceRejected:
            raise
        except Exception as exc:  # pydicom raises many types on a malformed stream
            raise InstanceRejected(
                status.CANNOT_UNDERSTAND, f"data set cannot be parsed ({type(exc).__name__})"
            ) from None

    sop_class_uid = _uid(ds, "SOPClassUID")
    sop_instance_uid = _uid(ds, "SOPInstanceUID")
    if sop_class_uid != affected_sop_class_uid:
        raise InstanceRejected(
            status.DATASET_MISMATCH,
            f"SOP Class UID {clip_uid(sop_class_uid) or 'missing'} differs from the request's "
            f"{clip_uid(affected_sop_class_uid)}",
        )
    if sop_instance_uid != affected_sop_instance_uid:
        raise InstanceRejected(
            status.DATASET_MISMATCH,
            f"SOP Instance UID {clip_uid(sop_instance_uid) or 'missing'} differs from the "
            f"request's {clip_uid(affected_sop_instance_uid)}",
        )
    if not is_valid_uid(sop_instance_uid):
        raise InstanceRejected(status.DATASET_MISMATCH, "SOP Instance UID is not a valid UID")
    study_uid = _uid(ds, "StudyInstanceUID")
    if not study_uid:
        raise InstanceRejected(status.DATASET_MISMATCH, "Study Instance UID is missing")
    if not is_valid_uid(study_uid):
        raise InstanceRejected(status.DATASET_MISMATCH, "Study Instance UID is not a valid UID")
    series_uid = _uid(ds, "SeriesInstanceUID")
    sex = (_text(ds, "PatientSex", 16) or "").upper()
    patient_id = str(_raw_value(ds, "PatientID") or "").strip()[:_MAX_PATIENT_ID]
    patient_pseudonym = (
        pseudonym(patient_id, pseudonym_key) if pseudonym_key and patient_id else None
    )
    return ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid if is_valid_uid(series_uid) else None,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=str(transfer_syntax),
        path=str(path),
        size_bytes=size,
        calling_ae="",
        modality=_text(ds, "Modality", 16),
        view_position=_text(ds, "ViewPosition", 16),
        body_part=_text(ds, "BodyPartExamined", 64),
        manufacturer=_text(ds, "Manufacturer", 64),
        patient_sex=sex if sex in {"M", "F", "O"} else None,
        patient_age_years=age_in_years(_text(ds, "PatientAge", 16)),
        patient_pseudonym=patient_pseudonym,
        accession_number=_text(ds, "AccessionNumber", 16) if worklist_fields else None,
        study_date=_study_date(ds) if worklist_fields else None,
        study_description=_text(ds, "StudyDescription", 64) if worklist_fields else None,
    )


def _study_date(ds: Dataset) -> str | None:
    value = _text(ds, "StudyDate", 8)
    return value if value and _DATE_PATTERN.fullmatch(value) else None


def _read_own_meta(fp: BinaryIO) -> tuple[int, str]:
    """The end offset and Transfer Syntax UID of the File Meta group pynetdicom wrote.

    Its first element is (0002,0000) File Meta Information Group Length (PS3.10 7.1), which
    bounds the group: whatever follows belongs to the data set the peer sent.
    """
    head = fp.read(_META_START + 12)
    if len(head) < _META_START + 12 or head[128:132] != b"DICM":
        raise InstanceRejected(status.CANNOT_UNDERSTAND, "no File Meta Information")
    tag, vr, value_length, group_length = struct.unpack("<L2sHL", head[_META_START:])
    if tag != 0x00000002 or vr != b"UL" or value_length != 4 or group_length > _MAX_META_BYTES:
        raise InstanceRejected(status.CANNOT_UNDERSTAND, "malformed File Meta Information")
    meta = read_dataset(BytesIO(fp.read(group_length)), False, True)
    return _META_START + 12 + group_length, _uid(meta, "TransferSyntaxUID")


class _ReadBudget:
    """A file that may be read for at most ``budget`` bytes; seeking over values is free.

    pydicom skips the values of attributes it was not asked for with a seek, so a large
    private element costs nothing, while a hostile header (a huge value of an attribute we
    read, undefined lengths to scan) ends in :class:`InstanceRejected` once the budget is spent.
    """

    def __init__(self, fp: BinaryIO, budget: int) -> None:
        self._fp = fp
        self._left = budget
        self.budget = budget
        self.name = getattr(fp, "name", "<received data set>")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._left:
            raise InstanceRejected(
                status.CANNOT_UNDERSTAND,
                f"header longer than {self.budget} bytes before Pixel Data",
            )
        data = self._fp.read(size)
        self._left -= len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


def _starts_with_group_2(prefix: bytes, transfer_syntax: UID) -> bool:
    if len(prefix) < 2:
        return False
    (group,) = struct.unpack("<H" if transfer_syntax.is_little_endian else ">H", prefix[:2])
    return bool(group == 0x0002)


def _at_pixel_data(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _raw_value(ds: Dataset, keyword: str) -> object:
    try:
        value = ds.get(keyword)
    except Exception:  # a value that cannot be converted to its VR counts as absent
        return None
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    return value


def _text(ds: Dataset, keyword: str, max_length: int) -> str | None:
    """A short, printable text value for a store column: first value, at most max_length."""
    value = _raw_value(ds, keyword)
    if value is None:
        return None
    return clip(value, max_length)


def _uid(ds: Dataset, keyword: str) -> str:
    value = _raw_value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 ")


def _check_pixel_data(fp: BinaryIO, transfer_syntax: UID, size: int) -> None:
    """Check that the Pixel Data element at ``fp``'s position is present and complete.

    ``dcmread(..., stop_before_pixels=True)`` leaves a caller's file at the start of the pixel
    element; this reads its header (PS3.5 7.1) and, for encapsulated data (PS3.5 A.4), walks the
    item headers to the Sequence Delimitation Item, so a truncated file is refused here and not
    when the worker decodes it. No pixel value is read.
    """
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        raise InstanceRejected(status.DATASET_MISMATCH, "data set has no Pixel Data")
    little = transfer_syntax.is_little_endian
    implicit = transfer_syntax.is_implicit_VR
    order = "<" if little else ">"
    group, element = struct.unpack(f"{order}HH", head[:4])
    if (group << 16 | element) not in _PIXEL_TAGS:
        raise InstanceRejected(status.CANNOT_UNDERSTAND, "data set ends in an unexpected element")
    if implicit:
        (length,) = struct.unpack(f"{order}L", head[4:8])
        offset = 8
    elif head[4:6] in _LONG_LENGTH_VRS:
        if len(head) < 12:
            raise InstanceRejected(status.CANNOT_UNDERSTAND, "Pixel Data is truncated")
        (length,) = struct.unpack(f"{order}L", head[8:12])
        offset = 12
    else:
        (length,) = struct.unpack(f"{order}H", head[6:8])
        offset = 8
    position = start + offset
    if length != 0xFFFFFFFF:
        if position + length > size:
            raise InstanceRejected(status.CANNOT_UNDERSTAND, "Pixel Data is truncated")
        return
    # Encapsulated: items (Basic Offset Table, then fragments) up to the delimiter; always LE.
    for _ in range(_MAX_FRAGMENTS):
        fp.seek(position)
        item = fp.read(8)
        if len(item) < 8:
            raise InstanceRejected(status.CANNOT_UNDERSTAND, "Pixel Data is truncated")
        group, element, item_length = struct.unpack("<HHL", item)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER_TAG:
            return
        if tag != _ITEM_TAG or item_length == 0xFFFFFFFF:
            raise InstanceRejected(status.CANNOT_UNDERSTAND, "encapsulated Pixel Data is malformed")
        position += 8 + item_length
        if position > size:
            raise InstanceRejected(status.CANNOT_UNDERSTAND, "Pixel Data is truncated")
    raise InstanceRejected(status.CANNOT_UNDERSTAND, "encapsulated Pixel Data has too many items")
