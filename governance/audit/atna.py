"""Audit events as IHE ATNA messages: RFC 5424 syslog carrying the DICOM audit message XML.

Each committed audit event becomes one syslog message (DICOM PS3.15 A.6/A.7):

- PRI: facility 10 (security/authorization), severity 5 (notice), 4 (warning) when the
  outcome is not a success; VERSION 1; the event's time in UTC; our host name; APP-NAME
  ``cxr-triage``; the process id; MSGID ``DICOM+RFC3881``.
- STRUCTURED-DATA: ``[origin ...]`` (RFC 5424 7.2) and ``[cxrAudit@32473 ...]`` with the event's
  id, action, DICOM event code, outcome, object UID and its place in the hash chain
  (``hash``/``prev``): a receiver that keeps these holds anchors for ``audit verify
  --expect-head``. 32473 is the private enterprise number reserved for documentation
  (RFC 5612); a site with its own number may change :data:`SD_ID`.
- MSG: a UTF-8 BOM and the DICOM audit message (PS3.15 A.5.1): EventIdentification with the
  event code (or our own action code in the ``99CXRTRIAGE`` coding scheme), the actor and this
  application as ActiveParticipants, the AuditSourceIdentification, and the object (a Study
  Instance UID, a model version, the audit log; a patient only as a keyed pseudonym).

Detail keys that name patient identifiers are never exported (:func:`governance.audit.record`
refuses them in the first place). Transports and the background queue are in
:mod:`governance.audit.export`.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import os
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from governance.audit.chain import CODE_MEANINGS, Action, Outcome, is_phi_key

SD_ID = "cxrAudit@32473"
MSGID = "DICOM+RFC3881"
APP_NAME = "cxr-triage"
FACILITY_SECURITY = 10
SEVERITY_NOTICE, SEVERITY_WARNING = 5, 4
OWN_CODING_SCHEME = "99CXRTRIAGE"
BOM = b"\xef\xbb\xbf"

# PS3.15 A.5.3 EventActionCode: Create, Read, Update, Delete, Execute.
ACTION_CODES = {
    Action.INSTANCES_RECEIVED: "C",
    Action.INSTANCES_EXPORTED: "R",
    Action.STUDY_VIEWED: "R",
    Action.AUDIT_LOG_USED: "R",
    Action.STUDY_TRIAGED: "C",
    Action.FINAL_READ_RECORDED: "C",
    Action.MODEL_REGISTERED: "C",
    Action.STUDY_FLAGGED: "U",
    Action.STUDY_OVERRIDDEN: "U",
    Action.STUDY_ACKNOWLEDGED: "U",
    Action.SPOOL_PRUNED: "D",
    Action.STUDIES_REQUEUED: "E",
}
# PS3.16 CID 401 Audit Event Type Codes, where one refines the event code: each code and its
# meaning, with the actions it types.
_EVENT_TYPES = {
    ("110120", "Application Start"): (Action.APPLICATION_START,),
    ("110121", "Application Stop"): (Action.APPLICATION_STOP,),
    ("110122", "Login"): (Action.USER_AUTHENTICATED, Action.TOKEN_REFUSED),
    ("110123", "Logout"): (Action.USER_LOGGED_OUT,),
    ("110126", "Node Authentication"): (Action.ASSOCIATION_REFUSED,),
    ("110131", "Software Configuration"): (
        Action.CONFIGURATION_CHANGED,
        Action.MODEL_ACTIVATED,
        Action.MODEL_ROLLED_BACK,
        Action.POLICY_SET,
    ),
    ("110137", "User Security Attributes Changed"): (Action.TOKEN_CREATED, Action.TOKEN_REVOKED),
}
EVENT_TYPE_CODES = {action: coded for coded, actions in _EVENT_TYPES.items() for action in actions}
# PS3.15 A.5.1 EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure.
OUTCOME_INDICATORS = {Outcome.SUCCESS: "0", Outcome.REFUSED: "4", Outcome.FAILURE: "8"}
# ParticipantObjectTypeCodeRole (RFC 3881): 3 report, 4 resource, 13 security resource.
_OBJECT_ROLES = {"study": "3", "audit_trail": "13"}


@functools.cache
def _software_version() -> str:
    try:
        return metadata.version("cxr-triage")
    except metadata.PackageNotFoundError:
        return "unknown"


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or the nil value."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _sd_value(value: object) -> str:
    # RFC 5424 6.3.3: '"', '\' and ']' are escaped inside PARAM-VALUE.
    text = str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def structured_data(fields: dict[str, Any]) -> str:
    """The STRUCTURED-DATA part: ``[origin ...][cxrAudit@32473 ...]``."""
    params = {
        "id": fields["id"],
        "action": fields["action"],
        "code": fields.get("event_code") or "-",
        "outcome": fields["outcome"],
        "objectType": fields.get("object_type") or "-",
        "object": fields.get("object_uid") or "-",
        "hash": fields["row_hash"],
        "prev": fields["prev_hash"],
    }
    cxr = " ".join(f'{name}="{_sd_value(value)}"' for name, value in params.items())
    origin = f'origin software="{APP_NAME}" swVersion="{_sd_value(_software_version())}"'
    return f"[{origin}][{SD_ID} {cxr}]"


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sends a message: its HOSTNAME and PROCID fields and the XML's AuditSourceID."""

    hostname: str
    procid: int
    audit_source_id: str

    @classmethod
    def here(cls, audit_source_id: str | None = None) -> Origin:
        """This machine's name and this process's id; the audit source is the host name unless
        ``audit_source_id`` is given."""
        hostname = socket.gethostname()
        return cls(hostname, os.getpid(), audit_source_id or hostname)


def format_message(fields: dict[str, Any], origin: Origin | None = None) -> bytes:
    """One audit event as an RFC 5424 syslog message (without transport framing).

    Parameters
    ----------
    fields
        The event, as :func:`governance.audit.event_fields` gives it.
    origin
        The sender (default: :meth:`Origin.here`).

    Returns
    -------
    bytes
        ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG``, UTF-8, MSG with a BOM.
    """
    origin = origin or Origin.here()
    success = fields["outcome"] == Outcome.SUCCESS
    pri = FACILITY_SECURITY * 8 + (SEVERITY_NOTICE if success else SEVERITY_WARNING)
    header = " ".join(
        (
            f"<{pri}>1",
            _timestamp(fields["occurred_at"]),
            _header_field(origin.hostname, 255),
            APP_NAME,
            _header_field(str(origin.procid), 128),
            MSGID,
            structured_data(fields),
        )
    )
    body = audit_message_xml(fields, audit_source_id=origin.audit_source_id)
    return header.encode("utf-8") + b" " + BOM + body.encode("utf-8")


def _coded(parent: ET.Element, tag: str, code: str, scheme: str, meaning: str) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": scheme, "originalText": meaning}
    )


def audit_message_xml(fields: dict[str, Any], *, audit_source_id: str) -> str:
    """The DICOM audit message (PS3.15 A.5.1) of one event, as an XML string.

    Parameters
    ----------
    fields
        The event, as :func:`governance.audit.event_fields` gives it.
    audit_source_id
        Who reports the event (AuditSourceIdentification/AuditSourceID).
    """
    action = fields["action"]
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": ACTION_CODES.get(action, "E"),
            "EventDateTime": _timestamp(fields["occurred_at"]),
            "EventOutcomeIndicator": OUTCOME_INDICATORS.get(fields["outcome"], "4"),
        },
    )
    code = fields.get("event_code")
    if code:
        _coded(ident, "EventID", code, "DCM", CODE_MEANINGS.get(code, code))
    else:
        _coded(ident, "EventID", action, OWN_CODING_SCHEME, action.replace("_", " "))
    if action in EVENT_TYPE_CODES:
        type_code, meaning = EVENT_TYPE_CODES[action]
        _coded(ident, "EventTypeCode", type_code, "DCM", meaning)
    actor = {"UserID": fields["actor"], "UserIsRequestor": "true"}
    address = fields.get("actor_address")
    if address:
        actor["NetworkAccessPointID"] = address
        actor["NetworkAccessPointTypeCode"] = "2" if _is_ip(address) else "1"
    ET.SubElement(root, "ActiveParticipant", actor)
    ET.SubElement(root, "ActiveParticipant", {"UserID": APP_NAME, "UserIsRequestor": "false"})
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": audit_source_id})
    _add_objects(root, fields)
    return ET.tostring(root, encoding="unicode")


def _add_objects(root: ET.Element, fields: dict[str, Any]) -> None:
    object_type = fields.get("object_type") or ""
    detail = {k: v for k, v in (fields.get("detail") or {}).items() if not is_phi_key(k)}
    object_uid = fields.get("object_uid")
    if fields["action"] == Action.AUDIT_LOG_USED and not object_uid:
        object_uid, object_type = "cxr-triage:audit_events", "audit_trail"
    if object_uid:
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": object_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": _OBJECT_ROLES.get(object_type, "4"),
            },
        )
        if object_type == "study":
            _coded(obj, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        elif object_type == "audit_trail":
            _coded(obj, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
            ET.SubElement(obj, "ParticipantObjectName").text = "Security Audit Log"
        else:
            kind = object_type or "object"
            _coded(obj, "ParticipantObjectIDTypeCode", kind, OWN_CODING_SCHEME, kind)
        if detail:
            payload = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
            ET.SubElement(
                obj,
                "ParticipantObjectDetail",
                {"type": "cxr-detail", "value": base64.b64encode(payload.encode()).decode()},
            )
    pseudonym = detail.get("patient_pseudonym")
    if pseudonym:
        patient = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": str(pseudonym),
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
            },
        )
        _coded(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
        ET.SubElement(patient, "ParticipantObjectName").text = "pseudonym"


def _is_ip(address: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, address)
            return True
        except OSError:
            continue
    return False
