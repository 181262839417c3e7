"""One small handler per pynetdicom event; dependencies are bound as extra arguments.

A handler never raises: it logs (UIDs, AE titles, addresses, statuses; never a patient
attribute) and returns a DIMSE status. The C-STORE handler answers Success only once the file is
durable in the spool and its row has committed in the store (DESIGN.md): it fdatasyncs the file
and renames it into the study folder, then hands the row to the gateway's committer
(:mod:`dicom_gateway.commit`), which fsyncs the folder and commits the rows of all the instances
waiting at that moment in one transaction, and waits for that commit.

Orphans: when the store does not take the row, the placed file is removed before 0xA700 goes
out, so the spool holds no file the store does not know. A crash between placement and commit
can still leave one; the peer got no Success and sends the instance again, which replaces the
file at the same path and records it; a file still without a row when the gateway next starts
is removed then (``Gateway.remove_orphans``), never adopted.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom_gateway import incoming, status
from dicom_gateway.assembly import StudyAssembly
from dicom_gateway.commit import Committer
from dicom_gateway.header import InstanceRejected, read_header
from dicom_gateway.spool import Spool
from governance.errors import InstanceConflict, StoreRejected, StoreUnavailable
from governance.text import clip_uid, printable

if TYPE_CHECKING:
    from dicom_gateway.limits import RefusalAuditor

logger = logging.getLogger(__name__)

P = ParamSpec("P")

#: Error Comment is LO: 64 characters (PS3.7 C.4.2).
_ERROR_COMMENT_LIMIT = 64


@dataclass(frozen=True, slots=True)
class ReceivePolicy:
    """What the C-STORE handler accepts: SOP classes and the size of one instance."""

    accepted_sop_classes: frozenset[str] = field(default_factory=frozenset)
    max_instance_bytes: int | None = None


def handle_echo(event: Event) -> int:
    """C-ECHO: the gateway is up."""
    logger.debug("C-ECHO from %s", _peer(event))
    return status.SUCCESS


def _never_raises(
    handler: Callable[Concatenate[Event, P], Any],
) -> Callable[Concatenate[Event, P], Any]:
    """The handler, answering 0x0110 (Processing Failure) where it would raise."""

    @functools.wraps(handler)
    def guarded(event: Event, *args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return handler(event, *args, **kwargs)
        except Exception:  # a bug must cost one instance, not the association or the server
            logger.exception("C-STORE from %s failed unexpectedly", _peer(event))
            return status.PROCESSING_FAILURE

    return guarded


@_never_raises
def handle_store(
    event: Event,
    spool: Spool,
    committer: Committer,
    assembly: StudyAssembly,
    pseudonym_key: bytes | None = None,
    policy: ReceivePolicy | None = None,
    worklist_fields: bool = False,
) -> Any:
    """C-STORE: check the header, place the file durably, record it, note the study.

    With ``worklist_fields`` (CXR_WORKLIST_PHI) the study's accession number, date and
    description are kept for the worklist; they are never logged.
    """
    policy = policy or ReceivePolicy()
    request = cast(C_STORE, event.request)
    sop_class_uid = str(request.AffectedSOPClassUID or "")
    sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
    source = Path(event.dataset_path)
    if incoming.take_failure(source):
        logger.error(
            "C-STORE of SOP Instance %s from %s: the spool's disk is full -> %s",
            clip_uid(sop_instance_uid),
            _peer(event),
            status.describe(status.OUT_OF_RESOURCES),
        )
        return _status(status.OUT_OF_RESOURCES, "spool disk full")
    refusal = spool.refusal(source.stat().st_size)
    if refusal is not None:
        # Before the disk is full: the peer keeps the instance and sends it again later.
        logger.warning(
            "C-STORE of SOP Instance %s from %s refused: %s -> %s",
            clip_uid(sop_instance_uid),
            _peer(event),
            refusal,
            status.describe(status.OUT_OF_RESOURCES),
        )
        return _status(status.OUT_OF_RESOURCES, "spool at its high-water mark")
    try:
        _check_request(event, source, sop_class_uid, policy)
        header = read_header(
            source,
            affected_sop_class_uid=sop_class_uid,
            affected_sop_instance_uid=sop_instance_uid,
            pseudonym_key=pseudonym_key,
            worklist_fields=worklist_fields,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            accepted_sop_classes=policy.accepted_sop_classes or None,
        )
    except InstanceRejected as exc:
        logger.warning(
            "C-STORE of SOP Instance %s from %s refused: %s -> %s",
            clip_uid(sop_instance_uid),
            _peer(event),
            exc.reason,
            status.describe(exc.status),
        )
        return _status(exc.status, exc.reason)

    try:
        incoming.settle(source)  # the fdatasync started while the data streamed
        # The folder's fsync is the committer's, once for every rename of its batch.
        target, existed = spool.place(
            source, header.study_instance_uid, header.sop_instance_uid, sync_folder=False
        )
    except OSError as exc:
        logger.error(
            "spool cannot take SOP Instance %s of study %s: %s -> %s",
            header.sop_instance_uid,
            header.study_instance_uid,
            exc.strerror or exc,
            status.describe(status.OUT_OF_RESOURCES),
        )
        return _status(status.OUT_OF_RESOURCES, "spool full or not writable")

    requestor = event.assoc.requestor
    item = dataclasses.replace(
        header, path=str(target), calling_ae=requestor.ae_title, peer_address=requestor.address
    )
    try:
        replaced = committer.record(item)
    except (InstanceConflict, StoreUnavailable, StoreRejected, OSError) as exc:
        # No row, no file: a file the store does not know would be an orphan. A resent
        # instance whose older copy was at the same path keeps the new (equivalent) file,
        # which the existing row still points at; so does another study's instance whose
        # SOP Instance UID this one reused.
        if not existed:
            spool.discard(target)
        value, comment, reason = _not_recorded(exc)
        logger.log(
            logging.WARNING if value == status.DATASET_MISMATCH else logging.ERROR,
            "C-STORE of SOP Instance %s (study %s) from %s not recorded: %s -> %s",
            header.sop_instance_uid,
            header.study_instance_uid,
            _peer(event),
            reason,
            status.describe(value),
        )
        return _status(value, comment)
    if replaced and replaced != str(target):
        spool.remove_replaced(replaced)

    assembly.instance_stored(
        event.assoc, header.study_instance_uid, requestor.ae_title, requestor.address
    )
    logger.debug(
        "stored SOP Instance %s of study %s from %s (%d bytes, %s)",
        header.sop_instance_uid,
        header.study_instance_uid,
        _peer(event),
        header.size_bytes,
        header.transfer_syntax_uid,
    )
    return status.SUCCESS


def _not_recorded(exc: Exception) -> tuple[int, str, str]:
    """The status, its Error Comment and the log's reason for an instance not recorded."""
    if isinstance(exc, InstanceConflict):
        # The UID belongs to another study's instance: that one is kept as it is.
        return status.DATASET_MISMATCH, "SOP Instance UID stored in another study", str(exc)
    if isinstance(exc, StoreRejected):
        # The store will never take this row (a value it cannot hold): not worth a retry.
        return status.PROCESSING_FAILURE, "store refused the instance", f"store refused: {exc}"
    if isinstance(exc, OSError):
        # The study folder could not be fsynced: the rename might not survive a crash.
        reason = f"spool folder not durable: {exc.strerror or exc}"
        return status.OUT_OF_RESOURCES, "spool full or not writable", reason
    return status.OUT_OF_RESOURCES, "store unavailable", f"store unavailable: {exc}"


def _check_request(event: Event, source: Path, sop_class_uid: str, policy: ReceivePolicy) -> None:
    """Refuse what the request alone rules out: its size, its SOP class, its context."""
    limit = policy.max_instance_bytes
    if incoming.take_oversize(source) or (
        limit is not None and source.exists() and source.stat().st_size > limit
    ):
        megabytes = (limit or 0) / (1024 * 1024)
        raise InstanceRejected(
            status.OUT_OF_RESOURCES, f"instance larger than {megabytes:.0f} MB not kept"
        )
    if policy.accepted_sop_classes and sop_class_uid not in policy.accepted_sop_classes:
        raise InstanceRejected(
            status.SOP_CLASS_NOT_SUPPORTED, f"SOP class {clip_uid(sop_class_uid)} not accepted"
        )
    context = getattr(event, "context", None)
    if context is not None and str(context.abstract_syntax) != sop_class_uid:
        raise InstanceRejected(
            status.DATASET_MISMATCH,
            f"SOP class {clip_uid(sop_class_uid)} sent on a context for "
            f"{clip_uid(str(context.abstract_syntax))}",
        )


def handle_accepted(event: Event) -> None:
    logger.info("association accepted from %s", _peer(event))


def handle_released(event: Event, assembly: StudyAssembly) -> None:
    """A-RELEASE: the studies this association carried are ready to queue."""
    logger.info("association released by %s", _peer(event))
    assembly.association_ended(event.assoc, released=True)


def handle_aborted(event: Event, assembly: StudyAssembly) -> None:
    """A-ABORT: what was stored stays; its studies are queued after the stable age."""
    logger.warning("association with %s aborted", _peer(event))
    assembly.association_ended(event.assoc, released=False)


def handle_rejected(event: Event, refusals: RefusalAuditor, allowed_calling_aes: list[str]) -> None:
    """A-ASSOCIATE-RJ: count the refusal; it is audited per peer per minute, with a count."""
    requestor = event.assoc.requestor
    calling_ae = printable(requestor.ae_title or "", 16)
    not_allowed = bool(allowed_calling_aes) and calling_ae not in allowed_calling_aes
    reason = "calling AE title not recognised" if not_allowed else "association limit or policy"
    logger.debug("association from %s refused: %s", _peer(event), reason)
    try:
        refusals.note(
            requestor.address,
            actor=calling_ae or "(none)",
            reason=reason,
            calling_ae=calling_ae,
            called_ae=printable(event.assoc.acceptor.ae_title or "", 16),
        )
    except Exception:
        logger.exception("could not audit the refused association from %s", _peer(event))


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    calling_ae = printable(requestor.ae_title or "", 16) or "?"
    return f"{calling_ae}@{requestor.address}:{requestor.port}"


def _status(value: int, comment: str) -> Dataset:
    """A status with an Error Comment (LO, at most 64 characters) for the peer's log."""
    ds = Dataset()
    ds.Status = value
    if value != status.SUCCESS:
        # LO in the default character repertoire: ASCII, no backslash, 64 characters.
        text = printable(comment, _ERROR_COMMENT_LIMIT).replace("\\", "/")
        ds.ErrorComment = text.encode("ascii", "replace").decode("ascii")
    return ds
