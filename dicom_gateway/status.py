"""DIMSE status values the gateway answers with (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

SUCCESS = 0x0000

#: Refused, out of resources: the spool or the store cannot take the instance right now.
#: Transient; the peer may send it again later.
OUT_OF_RESOURCES = 0xA700

#: Error, data set does not match SOP class: the data set's SOP Class/Instance UID differs from
#: the request's, or an attribute the gateway needs (a valid Study Instance UID, Pixel Data) is
#: missing. Permanent: sending the same object again will fail again.
DATASET_MISMATCH = 0xA900

#: Refused, SOP Class not supported: the request names a SOP class the gateway does not store
#: (whatever presentation context it came on).
SOP_CLASS_NOT_SUPPORTED = 0x0122

#: Error, cannot understand: the data set cannot be parsed, or its Pixel Data is truncated.
CANNOT_UNDERSTAND = 0xC000

#: Processing failure: an unexpected fault in the gateway itself (a bug); logged with a traceback.
PROCESSING_FAILURE = 0x0110


def describe(status: int) -> str:
    """A short name for a status value, for log lines."""
    names = {
        SUCCESS: "Success",
        OUT_OF_RESOURCES: "Out of Resources",
        DATASET_MISMATCH: "Data Set does not match SOP Class",
        CANNOT_UNDERSTAND: "Cannot understand",
        SOP_CLASS_NOT_SUPPORTED: "SOP Class not supported",
        PROCESSING_FAILURE: "Processing failure",
    }
    return f"0x{status:04X} ({names.get(status, 'unknown')})"
