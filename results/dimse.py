"""C-STORE of one result object to a DICOM destination, with every outcome classified.

A failure is *transient* (worth a retry with backoff) or *permanent* (parked at once):

- no association (connection refused, timed out, A-ASSOCIATE-RJ, A-ABORT): transient, since a
  PACS that restarts or is being configured refuses for a while; the attempt limit parks it;
- no presentation context accepted for the object's SOP class: permanent;
- DIMSE status 0xA7xx (out of resources) or no answer at all: transient;
- any other failure status (0xA9xx, 0xCxxx, ...): permanent.

Warning statuses (0xB000, 0xB006, 0xB007) are success with a warning, which the caller records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from results.errors import DeliveryFailed

logger = logging.getLogger(__name__)

WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    status: int
    warning: str | None = None


def store_file(
    path: Path,
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float = 30.0,
) -> StoreOutcome:
    """C-STORE the Part-10 file ``path`` on its own association.

    Raises
    ------
    DeliveryFailed
        With ``transient`` set as the module docstring says.
    """
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    sop_class = str(meta.SOPClassUID)
    syntax = str(meta.file_meta.TransferSyntaxUID)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(sop_class, [syntax])
    where = f"{called_ae}@{host}:{port}"
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        if assoc.is_rejected:
            why = f"association rejected by {where} (unknown AE title or not allowed?)"
        elif assoc.is_aborted:
            why = f"association aborted by {where}"
        else:
            why = f"no association with {where} (refused or timed out)"
        raise DeliveryFailed(why, transient=True)
    try:
        if not assoc.accepted_contexts:
            raise DeliveryFailed(
                f"{where} accepts no presentation context for SOP class {sop_class}",
                transient=False,
            )
        answer = assoc.send_c_store(path)
        code = int(answer.Status) if "Status" in answer else None
    finally:
        if assoc.is_established:
            assoc.release()
    if code is None:
        raise DeliveryFailed(f"no C-STORE response from {where} (timeout or abort)", True)
    if code == 0x0000:
        return StoreOutcome(code)
    if code in WARNING_STATUSES:
        return StoreOutcome(code, warning=f"C-STORE warning status {code:#06x} from {where}")
    transient = (code & 0xFF00) == 0xA700
    raise DeliveryFailed(f"C-STORE status {code:#06x} from {where}", transient=transient)
