"""Flag notifications: a signed JSON webhook and an HL7 v2 ORU^R01 over MLLP.

Sent on a new flag and on a flag that a re-triage removed. A removed flag never lowers a
priority a person set: the message says so when a person's priority stands. Each notification
carries the event id as its idempotency key (``Idempotency-Key`` header; the HL7 message
control id), so a receiver that sees one twice (a worker died between sending and recording)
can drop the copy. The accession number is sent only where the site opted in for that sink; it
is never logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from governance.models import Instance, ResultDelivery, Study, StudyStatus, TriageEvent
from results.config import Hl7Sink, WebhookSink
from results.errors import DeliveryFailed
from results.sources import read_header

if TYPE_CHECKING:
    from results.delivery import ResultsContext

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-CXR-Signature"
MAX_ANSWER_BYTES = 65_536
MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"
DISCLAIMER = "AI triage - not for diagnostic use"
PERSON_PRIORITY_STANDS = "a priority set by a person stands and is not changed"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the HMAC-SHA256 of the body, in hex."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _facts(ctx: ResultsContext, row: ResultDelivery, with_accession: bool) -> dict[str, Any]:
    with ctx.store.read() as session:
        event = session.get(TriageEvent, row.event_id)
        if event is None:
            raise DeliveryFailed(f"triage event {row.event_id} is gone", transient=False)
        study = session.get(Study, event.study_id)
        override = study.priority_override if study is not None else None
        accession = None
        if with_accession:
            path = session.scalar(
                select(Instance.path).where(Instance.study_id == event.study_id).limit(1)
            )
            header = read_header(path) if path else None
            accession = str(header.get("AccessionNumber", "") or "") if header else ""
        if event.status == StudyStatus.FAILED:
            change = "failed"
        else:
            change = "flagged" if event.flagged else "unflagged"
        facts: dict[str, Any] = {
            "event_id": event.id,
            "study_instance_uid": event.study_instance_uid,
            "change": change,
            "flag": bool(event.flagged),
            "previously_flagged": bool(event.previously_flagged),
            "score": event.probability,
            "tau": event.tau,
            "model_version": event.model_version,
            "policy_version": event.policy_version,
            "status": event.status,
            "person_priority": override,
            "note": DISCLAIMER,
        }
        if change == "failed":
            facts["note"] = (
                f"{DISCLAIMER}; the study could not be triaged: read it without AI triage"
            )
        elif not event.flagged and override:
            facts["note"] = f"{DISCLAIMER}; flag removed by re-triage, {PERSON_PRIORITY_STANDS}"
        elif not event.flagged:
            facts["note"] = f"{DISCLAIMER}; flag removed by re-triage"
        if with_accession:
            facts["accession_number"] = accession or None
        return facts


def send_webhook(ctx: ResultsContext, row: ResultDelivery, sink: WebhookSink) -> dict[str, object]:
    """POST the signed JSON; 2xx is sent, 408/429/5xx and network errors retry, other 4xx park."""
    body = json.dumps(_facts(ctx, row, sink.include_accession), sort_keys=True).encode()
    request = urllib.request.Request(
        sink.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(sink.secret, body),
            "Idempotency-Key": f"cxr-triage-event-{row.event_id}",
            "User-Agent": "cxr-triage",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=ctx.settings.result_timeout_s) as answer:
            answer.read(MAX_ANSWER_BYTES)
            code = answer.status
    except urllib.error.HTTPError as exc:
        transient = exc.code in (408, 425, 429) or exc.code >= 500
        raise DeliveryFailed(f"webhook {sink.name} answered HTTP {exc.code}", transient) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryFailed(f"webhook {sink.name} not reached: {reason}", True) from None
    return {"url_host": request.host, "http_status": code}


def build_oru(facts: dict[str, Any], sink: Hl7Sink, *, control_id: str) -> str:
    """The ORU^R01 (HL7 v2.5.1) of a flag change, as ER7 text (segments separated by CR)."""
    from hl7apy.core import Message

    msg = Message("ORU_R01", version="2.5.1")
    msg.msh.msh_3 = "CXRTRIAGE"
    msg.msh.msh_5 = sink.receiving_application
    if sink.receiving_facility:
        msg.msh.msh_6 = sink.receiving_facility
    msg.msh.msh_7 = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    msg.msh.msh_9 = "ORU^R01^ORU_R01"
    msg.msh.msh_10 = control_id
    msg.msh.msh_11 = "P"
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    if facts.get("accession_number"):
        order.obr.obr_2 = str(facts["accession_number"])[:199]
    order.obr.obr_3 = str(facts["study_instance_uid"])
    order.obr.obr_4 = "CXR-AI-TRIAGE^AI chest X-ray pneumonia triage^99CXRTRIAGE"
    order.obr.obr_25 = "F"
    if facts["change"] == "failed":
        priority = "FAILED^AI triage failed; read without it"
    elif facts["flag"]:
        priority = "PRIORITY^Flagged for priority reading"
    else:
        priority = "ROUTINE^Not flagged by AI triage"
    values = [
        ("CWE", "TRIAGE-PRIORITY^AI triage priority^99CXRTRIAGE", priority + "^99CXRTRIAGE"),
        ("NM", "PNEUMONIA-P^Calibrated probability of pneumonia^99CXRTRIAGE", facts["score"]),
        ("NM", "TAU^Threshold tau^99CXRTRIAGE", facts["tau"]),
        ("ST", "MODEL^Model version^99CXRTRIAGE", facts["model_version"]),
        ("ST", "NOTE^Note^99CXRTRIAGE", facts["note"]),
    ]
    number = 0
    for value_type, code, value in values:
        if value is None:
            continue
        number += 1
        observation = order.add_group("ORU_R01_OBSERVATION")
        observation.obx.obx_1 = str(number)
        observation.obx.obx_2 = value_type
        observation.obx.obx_3 = code
        observation.obx.obx_5 = f"{value:.6g}" if isinstance(value, float) else str(value)
        observation.obx.obx_11 = "F"
    return str(msg.to_er7())


def send_hl7(ctx: ResultsContext, row: ResultDelivery, sink: Hl7Sink) -> dict[str, object]:
    """Send the ORU over MLLP and read the ACK: AA/CA is sent, AE/CE retries, AR/CR parks."""
    from hl7apy.parser import parse_message

    facts = _facts(ctx, row, sink.include_accession)
    control_id = f"CXR{row.event_id}"
    message = build_oru(facts, sink, control_id=control_id)
    timeout = ctx.settings.result_timeout_s
    try:
        with socket.create_connection((sink.host, sink.port), timeout=timeout) as conn:
            conn.sendall(MLLP_START + message.encode("utf-8") + MLLP_END)
            answer = _read_frame(conn)
    except OSError as exc:
        raise DeliveryFailed(f"HL7 sink {sink.name} not reached: {exc}", True) from None
    try:
        ack = parse_message(answer.decode("utf-8", "replace"))
        code = str(ack.msa.msa_1.value)
    except Exception:
        raise DeliveryFailed(f"HL7 sink {sink.name} sent an unreadable ACK", True) from None
    if code in ("AA", "CA"):
        return {"host": sink.host, "port": sink.port, "ack": code, "control_id": control_id}
    transient = code in ("AE", "CE")
    raise DeliveryFailed(f"HL7 sink {sink.name} answered {code}", transient)


def _read_frame(conn: socket.socket) -> bytes:
    data = b""
    while MLLP_END not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("connection closed before the ACK ended")
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise OSError("ACK longer than 64 KB")
    start = data.find(MLLP_START)
    return data[start + 1 : data.find(MLLP_END)]
