"""A small DICOM SCU: C-ECHO a peer and C-STORE files to it (the demo's modality, exports).

Files are sent as they are on disk (no decode, no re-encode): each file's transfer syntax is
proposed in its own presentation context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # the standard's limit on proposed presentation contexts


@dataclass
class SendReport:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def echo(
    host: str, port: int, called_ae: str, *, calling_ae: str = "CXRSCU", timeout: float = 5.0
) -> bool:
    """C-ECHO the peer; True when it answered Success."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def wait_for_echo(host: str, port: int, called_ae: str, *, timeout: float = 30.0) -> bool:
    """C-ECHO until the peer answers or ``timeout`` seconds pass.

    pynetdicom logs every refused connection as an error; while the peer is still starting
    that is expected, so its transport logger is quietened for the wait.
    """
    transport = logging.getLogger("pynetdicom")
    level = transport.level
    transport.setLevel(logging.CRITICAL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if echo(host, port, called_ae, timeout=2.0):
                return True
            time.sleep(0.25)
        return False
    finally:
        transport.setLevel(level)


def send_files(
    files: Iterable[Path],
    host: str,
    port: int,
    called_ae: str,
    *,
    calling_ae: str = "CXRSCU",
    timeout: float = 30.0,
) -> SendReport:
    """C-STORE ``files`` to the peer on one association (header read only, pixels as stored)."""
    report = SendReport()
    items: list[tuple[Path, str, str]] = []
    for path in files:
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            items.append((path, str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, OSError, AttributeError) as exc:
            report.failed.append((str(path), f"not a DICOM file: {type(exc).__name__}"))
    contexts = sorted({(sop_class, syntax) for _, sop_class, syntax in items})
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(
            f"files need {len(contexts)} presentation contexts; at most {MAX_CONTEXTS}"
        )
    if not items:
        return report
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_ae, max_pdu=0)
    if not assoc.is_established:
        report.failed.extend((str(p), "association not accepted") for p, _, _ in items)
        return report
    try:
        for path, _, _ in items:
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code == 0x0000:
                report.sent += 1
            else:
                report.failed.append(
                    (str(path), f"status {code:#06x}" if code is not None else "no response")
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return report
