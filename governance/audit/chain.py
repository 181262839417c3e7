"""The audit trail's append-only hash chain: who did what to which object, when, how it ended.

Events carry DICOM PS3.15 A.5.3 event codes where one fits; our own events (a study triaged, a
flag set, an override, a policy changed, a model activated) carry none. The application only
inserts rows; it never updates or deletes one, and triggers refuse both (migration 0002); on
PostgreSQL the services' role may not (migration 0004). Each row's hash covers its content and
the previous row's hash (:meth:`AuditEvent.canonical`), keyed with the site's audit key
(HMAC-SHA256, :mod:`governance.audit_key`) when the store has one, so
:func:`governance.audit.verify.verify_chain` finds a row that was edited, deleted or reordered.

Details hold UIDs, AE titles, versions and figures, never patient identifiers; where a patient
must be linked, :func:`pseudonym` gives a keyed pseudonym of the Patient ID instead.

An export sink (the ATNA syslog exporter of :mod:`governance.audit.export`) receives each event
once its transaction has committed; an event rolled back with its transaction is never exported.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from governance.db import AUDIT_ANCHORS_INFO, AUDIT_KEY_INFO
from governance.models import GENESIS_HASH, HMAC_SCHEME, AuditEvent, utcnow

logger = logging.getLogger(__name__)


class Action(enum.StrEnum):
    """Audit actions; the DICOM event code (PS3.15 A.5.3) where one fits."""

    # DICOM-coded events
    INSTANCES_RECEIVED = "instances_received"  # 110104 DICOM Instances Transferred
    INSTANCES_EXPORTED = "instances_exported"  # 110104 (results sent back to the PACS)
    STUDY_VIEWED = "study_viewed"  # 110103 DICOM Instances Accessed
    USER_AUTHENTICATED = "user_authenticated"  # 110114 User Authentication (login, token)
    USER_LOGGED_OUT = "user_logged_out"  # 110114
    QUERY = "query"  # 110112 Query (worklist, study search)
    AUDIT_LOG_USED = "audit_log_used"  # 110101 Audit Log Used
    ASSOCIATION_REFUSED = "association_refused"  # 110113 Security Alert
    TOKEN_REFUSED = "token_refused"  # 110113
    TOKEN_CREATED = "token_created"  # 110113 (user security attributes changed)
    TOKEN_REVOKED = "token_revoked"  # 110113
    AUDIT_TAMPER_DETECTED = "audit_tamper_detected"  # 110113
    APPLICATION_START = "application_start"  # 110100 Application Activity
    APPLICATION_STOP = "application_stop"  # 110100
    CONFIGURATION_CHANGED = "configuration_changed"  # 110100
    MODEL_ACTIVATED = "model_activated"  # 110100 (configuration)
    MODEL_ROLLED_BACK = "model_rolled_back"  # 110100 (configuration)
    POLICY_SET = "policy_set"  # 110100 (configuration)
    # Our own events
    STUDY_TRIAGED = "study_triaged"
    STUDY_FLAGGED = "study_flagged"
    STUDY_OVERRIDDEN = "study_overridden"
    STUDY_ACKNOWLEDGED = "study_acknowledged"
    FINAL_READ_RECORDED = "final_read_recorded"
    MODEL_REGISTERED = "model_registered"
    NOTIFICATION_SENT = "notification_sent"  # a flag notification to a RIS or webhook
    DELIVERY_RETRIED = "delivery_retried"  # a person asked to retry a parked export
    DRIFT_ALERT = "drift_alert"
    LABELS_IMPORTED = "labels_imported"
    RECALIBRATION_STARTED = "recalibration_started"
    RECALIBRATION_APPROVED = "recalibration_approved"  # creates a policy version
    RECALIBRATION_REJECTED = "recalibration_rejected"
    POLICY_MODE_CHANGED = "policy_mode_changed"  # shadow <-> live, approved by a person
    SPOOL_PRUNED = "spool_pruned"  # one event per retention run, with counts
    STUDIES_REQUEUED = "studies_requeued"  # by the reconciler (counts) or a person (UIDs)


class Outcome(enum.StrEnum):
    """Outcomes an event is recorded with (``AuditEvent.outcome``)."""

    SUCCESS = "success"
    REFUSED = "refused"  # a peer, token or request was turned away
    FAILURE = "failure"  # the action was attempted and failed
    ALL = enum.nonmember((SUCCESS, REFUSED, FAILURE))


# DICOM PS3.16 CID 400 "Audit Event ID" meanings of the codes we use.
CODE_MEANINGS = {
    "110100": "Application Activity",
    "110101": "Audit Log Used",
    "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred",
    "110112": "Query",
    "110113": "Security Alert",
    "110114": "User Authentication",
}

EVENT_CODES: dict[str, str] = {
    Action.INSTANCES_RECEIVED: "110104",
    Action.INSTANCES_EXPORTED: "110104",
    Action.STUDY_VIEWED: "110103",
    Action.USER_AUTHENTICATED: "110114",
    Action.USER_LOGGED_OUT: "110114",
    Action.QUERY: "110112",
    Action.AUDIT_LOG_USED: "110101",
    Action.ASSOCIATION_REFUSED: "110113",
    Action.TOKEN_REFUSED: "110113",
    Action.TOKEN_CREATED: "110113",
    Action.TOKEN_REVOKED: "110113",
    Action.AUDIT_TAMPER_DETECTED: "110113",
    Action.APPLICATION_START: "110100",
    Action.APPLICATION_STOP: "110100",
    Action.CONFIGURATION_CHANGED: "110100",
    Action.MODEL_ACTIVATED: "110100",
    Action.MODEL_ROLLED_BACK: "110100",
    Action.POLICY_SET: "110100",
}

# Detail keys that would carry patient identifiers (compared lower-case, letters only).
_PHI_KEYS = frozenset(
    {
        "patientname",
        "patientsname",
        "patientid",
        "otherpatientids",
        "issuerofpatientid",
        "accession",
        "accessionnumber",
        "birthdate",
        "dateofbirth",
        "patientbirthdate",
        "patientsbirthdate",
    }
)

# Actions whose detail names the model and policy that decided a study.
TRIAGE_ACTIONS = (Action.STUDY_TRIAGED, Action.STUDY_FLAGGED)


def record(
    session: Session,
    object_type: str | None = None,
    object_uid: str | None = None,
    *,
    actor: str,
    action: str,
    outcome: str = "success",
    detail: dict[str, Any] | None = None,
    actor_address: str | None = None,
    occurred_at: dt.datetime | None = None,
) -> AuditEvent:
    """Add one audit event to the session's transaction (committed with the change it records).

    The event is chained to the newest row: it takes the next id and the previous row's hash,
    and its own hash covers both (see :meth:`AuditEvent.canonical`). Writers are serialised
    while they chain: SQLite write transactions already are (BEGIN IMMEDIATE); on PostgreSQL a
    transaction-level advisory lock does it, released at commit.

    Parameters
    ----------
    session
        A write session (``Store.write()`` / ``Store.run()``); the event commits with it.
    object_type, object_uid
        What it was done to: ``"study"`` and a Study Instance UID, ``"model_version"`` and a
        version, ``"threshold_policy"`` and :func:`governance.models.policy_uid`... Given by
        position or by name: ``record(session, "study", uid, actor=..., action=...)``.
    actor
        Who acted: a user name, ``cli:USER``, a calling AE title or a component name.
    action
        One of :class:`Action`; its DICOM event code is filled in from :data:`EVENT_CODES`.
    outcome
        One of :class:`Outcome`.
    detail
        JSON-serialisable figures and identifiers; never patient identifiers.
    actor_address
        The actor's network address, where there is one.
    occurred_at
        When it happened (timezone-aware); now by default.

    Raises
    ------
    ValueError
        ``detail`` has a key that names a patient identifier (``patient_id``, ``PatientName``,
        ``accession_number``, ``birth_date``...); use :func:`pseudonym` for a patient link.
    """
    phi = sorted(key for key in (detail or {}) if is_phi_key(key))
    if phi:
        raise ValueError(f"detail must not carry patient identifiers: {', '.join(phi)}")
    _lock_chain(session)
    last = session.execute(
        select(AuditEvent.id, AuditEvent.row_hash).order_by(AuditEvent.id.desc()).limit(1)
    ).first()
    prev_hash = last.row_hash if last else GENESIS_HASH
    event = AuditEvent(
        id=(last.id + 1) if last else 1,
        occurred_at=occurred_at or utcnow(),
        actor=actor,
        actor_address=actor_address,
        action=action,
        event_code=EVENT_CODES.get(action),
        object_type=object_type,
        object_uid=object_uid,
        outcome=outcome,
        detail=detail or {},
        prev_hash=prev_hash,
    )
    key = session.info.get(AUDIT_KEY_INFO)
    event.hash_scheme = HMAC_SCHEME if key else None
    event.row_hash = event.compute_hash(prev_hash, key or None)
    session.add(event)
    session.flush()
    session.info[_HEAD_KEY] = (event.id, event.row_hash)
    if _export_sink is not None:
        session.info.setdefault(_PENDING_KEY, []).append(event_fields(event))
    return event


def record_audit_use(
    session: Session,
    *,
    actor: str,
    operation: str,
    detail: dict[str, Any] | None = None,
    actor_address: str | None = None,
    outcome: str = Outcome.SUCCESS,
) -> AuditEvent:
    """Record that someone read or checked the audit trail (DICOM 110101 "Audit Log Used").

    Parameters
    ----------
    session
        A write session.
    actor
        Who used the audit log (``cli:USER``, a web user).
    operation
        ``"query"`` or ``"verify"`` (kept in the detail as ``operation``).
    detail
        The filters used, how many events were returned, the verification result.
    actor_address
        The client's address (web requests).
    outcome
        ``success``, or ``failure`` when a verification found the trail altered.
    """
    return record(
        session,
        "audit_trail",
        actor=actor,
        action=Action.AUDIT_LOG_USED,
        outcome=outcome,
        actor_address=actor_address,
        detail={"operation": operation, **(detail or {})},
    )


def pseudonym(patient_id: str, key: bytes) -> str:
    """A keyed pseudonym of a Patient ID: HMAC-SHA256, hex.

    It links a patient's studies in the audit without keeping the ID; without the key the ID
    cannot be recovered or confirmed by hashing guesses.

    Parameters
    ----------
    patient_id
        The Patient ID (0010,0020) as received.
    key
        The site's secret pseudonym key (at least 16 bytes).

    Raises
    ------
    ValueError
        ``key`` is shorter than 16 bytes, or ``patient_id`` is empty.
    """
    if len(key) < 16:
        raise ValueError("key must be at least 16 bytes")
    if not patient_id.strip():
        raise ValueError("patient_id must not be empty")
    return hmac.new(key, patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def is_phi_key(key: str) -> bool:
    """Whether a detail key names a patient identifier (name, ID, accession, birth date)."""
    return "".join(c for c in key.lower() if c.isalpha()) in _PHI_KEYS


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """A plain dict of an event's columns but its hash scheme, the detail copied (what the
    export sink and the query output get)."""
    fields = event.columns()
    del fields["hash_scheme"]
    return fields | {"detail": dict(event.detail or {})}


AUDIT_LOCK_KEY = 0x63787261  # "cxra": any constant shared by every writer


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})


# --- export after commit ------------------------------------------------------------------

ExportSink = Callable[[dict[str, Any]], object]

_PENDING_KEY = "cxr_audit_pending_export"
_HEAD_KEY = "cxr_audit_head"  # (id, hash) of the newest event this transaction wrote
_export_sink: ExportSink | None = None


def set_export_sink(sink: ExportSink | None) -> ExportSink | None:
    """Hand every committed audit event of this process to ``sink`` (None: stop); returns the old.

    ``sink`` gets :func:`event_fields` of each event after its transaction commits. It is called
    inside the commit, so it must return at once and never raise (queue the work).
    """
    global _export_sink
    previous, _export_sink = _export_sink, sink
    return previous


@sa_event.listens_for(Session, "after_commit")
def _export_committed(session: Session) -> None:
    head = session.info.pop(_HEAD_KEY, None)
    anchors = session.info.get(AUDIT_ANCHORS_INFO)
    if head is not None and anchors is not None:
        anchors.note(*head)
    pending = session.info.pop(_PENDING_KEY, None)
    sink = _export_sink
    if not pending or sink is None:
        return
    for fields in pending:
        try:
            sink(fields)
        except Exception:  # the audited action has committed; exporting is best effort
            logger.exception("audit export sink failed for event %s", fields.get("id"))


@sa_event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
    session.info.pop(_HEAD_KEY, None)
