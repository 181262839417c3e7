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
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from dicom_gateway import status
from governance.audit import pseudonym
from governance.studies import ReceivedInstance

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
)
HEADER_TAGS = [Tag(keyword) for keyword in HEADER_KEYWORDS]

# Digits and dots, no empty component, at most 64 characters (PS3.5 9.1). Components with a
# leading zero are not valid DICOM but some modalities write them; they are harmless in a path,
# so they are accepted rather than refusing a patient's study.
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_AGE_PATTERN = re.compile(r"(\d{1,3})\s*([DWMY]?)")
_DAYS_PER_UNIT = {"D": 1, "W": 7, "M": 30.4375, "Y": 365.25}

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_ITEM_TAG = 0xFFFEE000
_SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_MAX_FRAGMENTS = 1_000_000


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
) -> ReceivedInstance:
    """Read and check the header of a received Part-10 file, without its pixel data.

    Returns the instance as the store records it, at ``path``; the caller sets the spool path
    and the calling peer (``dataclasses.replace``) once it has placed the file.

    Parameters
    ----------
    path
        The file pynetdicom wrote: a preamble, the File Meta Information built from the
        request, then the data set exactly as the peer sent it.
    affected_sop_class_uid, affected_sop_instance_uid
        The UIDs of the C-STORE request; the data set must carry the same ones (PS3.4 B.2.3).
    pseudonym_key
        The site's pseudonym key; with it, a Patient ID becomes a keyed pseudonym.

    Raises
    ------
    InstanceRejected
        With :data:`~dicom_gateway.status.CANNOT_UNDERSTAND` when the file cannot be parsed or
        its Pixel Data is truncated, :data:`~dicom_gateway.status.DATASET_MISMATCH` when the
        UIDs differ from the request's, or the Study Instance UID or Pixel Data is missing.
    """
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        try:
            ds = dcmread(fp, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            transfer_syntax = UID(str(ds.file_meta.TransferSyntaxUID))
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
            f"SOP Class UID {sop_class_uid or 'missing'} differs from the request's "
            f"{affected_sop_class_uid}",
        )
    if sop_instance_uid != affected_sop_instance_uid:
        raise InstanceRejected(
            status.DATASET_MISMATCH,
            f"SOP Instance UID {sop_instance_uid or 'missing'} differs from the request's "
            f"{affected_sop_instance_uid}",
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
    patient_id = str(ds.get("PatientID", "") or "").strip()
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
    )


def _raw_value(ds: Dataset, keyword: str) -> object:
    try:
        value = ds.get(keyword)
    except Exception:  # a value that cannot be converted to its VR counts as absent
        return None
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    return value


def _text(ds: Dataset, keyword: str, max_length: int) -> str | None:
    """A short, clean text value for a store column: first value, no NULs, at most max_length."""
    value = _raw_value(ds, keyword)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = str(value).replace("\x00", "").strip()[:max_length]
    return text or None


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
