"""ATNA export: RFC 5424 messages with the DICOM audit XML, sent to real UDP, TCP and TLS
receivers on free ports; best effort when the receiver is down; never patient identifiers."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from governance import audit
from governance.audit.atna import BOM, SD_ID, Origin, format_message
from governance.audit.export import SyslogExporter, configure_export, parse_syslog_url
from governance.db import Store
from governance.errors import ConfigError
from tests.conftest import free_port

STUDY = "1.2.826.0.1.3680043.10.999.65"
HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) "
)
PHI_MARKERS = ("PAT-0042", "Doe^Jane", "ACC-777", "19700101", "PatientName", "AccessionNumber")


def fields(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": 42,
        "occurred_at": dt.datetime(2026, 11, 25, 8, 30, 1, 250000, tzinfo=dt.UTC),
        "actor": "MODALITY1",
        "actor_address": "10.0.0.7",
        "action": audit.Action.INSTANCES_RECEIVED,
        "event_code": "110104",
        "object_type": "study",
        "object_uid": STUDY,
        "outcome": "success",
        "detail": {"instances": 2, "calling_ae": "MODALITY1"},
        "prev_hash": "a" * 64,
        "row_hash": "b" * 64,
    }
    values.update(overrides)
    return values


def parse(message: bytes) -> tuple[dict[str, str], dict[str, dict[str, str]], ET.Element]:
    """Split an RFC 5424 message: header fields, structured data elements, the XML body."""
    match = HEADER.match(message)
    assert match, message[:120]
    header = {k: v.decode() for k, v in match.groupdict().items()}
    rest = message[match.end() :].decode("utf-8")
    elements: dict[str, dict[str, str]] = {}
    while rest.startswith("["):
        sd_id, _, rest = rest[1:].partition(" ")
        params: dict[str, str] = {}
        while not rest.startswith("]"):
            name, _, rest = rest.lstrip(" ").partition('="')
            value = []
            while rest[0] != '"':
                if rest[0] == "\\":
                    rest = rest[1:]
                value.append(rest[0])
                rest = rest[1:]
            params[name] = "".join(value)
            rest = rest[1:]
        elements[sd_id] = params
        rest = rest[1:]
    assert rest.startswith(" " + BOM.decode("utf-8")), rest[:20]
    return header, elements, ET.fromstring(rest[2:])


def test_message_header_structured_data_and_xml() -> None:
    header, sd, xml = parse(format_message(fields(), Origin("cxr-host", 123, "cxr-host")))
    assert header == {
        "pri": "85",
        "time": "2026-11-25T08:30:01.250000Z",
        "host": "cxr-host",
        "app": "cxr-triage",
        "procid": "123",
        "msgid": "DICOM+RFC3881",
    }
    assert sd[SD_ID]["code"] == "110104" and sd[SD_ID]["object"] == STUDY
    assert sd[SD_ID]["id"] == "42" and sd[SD_ID]["hash"] == "b" * 64
    assert sd[SD_ID]["prev"] == "a" * 64
    assert sd["origin"]["software"] == "cxr-triage"
    ident = xml.find("EventIdentification")
    assert ident is not None and ident.get("EventActionCode") == "C"
    assert ident.get("EventOutcomeIndicator") == "0"
    event_id = ident.find("EventID")
    assert event_id is not None and event_id.get("csd-code") == "110104"
    assert event_id.get("originalText") == "DICOM Instances Transferred"
    actor, app = xml.findall("ActiveParticipant")
    assert actor.get("UserID") == "MODALITY1" and actor.get("NetworkAccessPointID") == "10.0.0.7"
    assert actor.get("NetworkAccessPointTypeCode") == "2" and app.get("UserIsRequestor") == "false"
    assert xml.find("AuditSourceIdentification").get("AuditSourceID") == "cxr-host"  # type: ignore[union-attr]
    study = xml.find("ParticipantObjectIdentification")
    assert study is not None and study.get("ParticipantObjectID") == STUDY
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"  # type: ignore[union-attr]


def test_failures_are_warnings_and_own_events_use_a_private_code() -> None:
    header, sd, xml = parse(
        format_message(
            fields(
                action="study_overridden",
                event_code=None,
                outcome="refused",
                actor='a "quoted] actor\\',
                actor_address=None,
            )
        )
    )
    assert header["pri"] == "84"
    assert sd[SD_ID]["code"] == "-" and sd[SD_ID]["action"] == "study_overridden"
    ident = xml.find("EventIdentification")
    assert ident is not None and ident.get("EventOutcomeIndicator") == "4"
    assert ident.find("EventID").get("codeSystemName") == "99CXRTRIAGE"  # type: ignore[union-attr]
    assert xml.find("ActiveParticipant").get("UserID") == 'a "quoted] actor\\'  # type: ignore[union-attr]


def test_event_type_codes_and_audit_log_object() -> None:
    _, _, xml = parse(format_message(fields(action="policy_set", event_code="110100")))
    type_code = xml.find("EventIdentification/EventTypeCode")
    assert type_code is not None and type_code.get("csd-code") == "110131"
    _, _, used = parse(
        format_message(
            fields(
                action="audit_log_used",
                event_code="110101",
                object_uid=None,
                object_type="audit_trail",
            )
        )
    )
    obj = used.find("ParticipantObjectIdentification")
    assert obj is not None and obj.get("ParticipantObjectTypeCodeRole") == "13"
    assert obj.findtext("ParticipantObjectName") == "Security Audit Log"


def test_no_patient_identifiers_leave_in_a_message() -> None:
    detail = {
        "patient_id": "PAT-0042",
        "PatientName": "Doe^Jane",
        "accession": "ACC-777",
        "birth_date": "19700101",
        "patient_pseudonym": "c" * 64,
        "instances": 1,
    }
    message = format_message(fields(detail=detail))
    text = message.decode("utf-8")
    for marker in PHI_MARKERS:
        assert marker not in text
    _, _, xml = parse(message)
    patient = xml.findall("ParticipantObjectIdentification")[1]
    assert patient.get("ParticipantObjectID") == "c" * 64
    assert patient.get("ParticipantObjectTypeCode") == "1"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("udp://arr.example.org", ("udp", "arr.example.org", 514)),
        ("tcp://10.1.2.3:601", ("tcp", "10.1.2.3", 601)),
        ("tls://[::1]", ("tls", "::1", 6514)),
    ],
)
def test_syslog_urls(url: str, expected: tuple[str, str, int]) -> None:
    target = parse_syslog_url(url)
    assert (target.transport, target.host, target.port) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        "udp://",
        "udp://h:99999",
        "tcp://h?ca=/x",
        "tls://h?ca=/nonexistent.pem",
        "tls://h?verify=no",
    ],
)
def test_bad_syslog_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="CXR_SYSLOG_URL"):
        parse_syslog_url(url)


# --- real receivers -------------------------------------------------------------------------


@pytest.fixture
def udp_receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


class StreamReceiver:
    """A syslog receiver over TCP (or TLS): reads octet-counted frames (RFC 6587 3.4.1)."""

    def __init__(self, port: int = 0, context: ssl.SSLContext | None = None) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = self.server.getsockname()[1]
        self.context = context
        self.messages: list[bytes] = []
        self.arrived = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            with conn:
                stream = conn.makefile("rb")
                while True:
                    length = b""
                    while (char := stream.read(1)) not in (b" ", b""):
                        length += char
                    if not length:
                        break
                    message = stream.read(int(length))
                    with self.arrived:
                        self.messages.append(message)
                        self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 15) -> list[bytes]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.server.close()


def test_udp_export_of_committed_events(store: Store, udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    configure_export(f"udp://127.0.0.1:{port}", audit_source_id="site-a")
    try:

        def rolled_back(session: Any) -> None:
            audit.record(session, actor="x", action=audit.Action.QUERY, object_uid="1.2.3")
            raise RuntimeError("the audited action failed")

        with pytest.raises(RuntimeError):
            store.run(rolled_back)
        event = store.run(
            lambda s: audit.record(
                s,
                actor="dr.ann",
                action=audit.Action.STUDY_VIEWED,
                object_type="study",
                object_uid=STUDY,
                detail={"patient_pseudonym": "d" * 64},
            )
        )
        message, _ = udp_receiver.recvfrom(65535)
    finally:
        configure_export(None)
    _, sd, xml = parse(message)  # the first datagram is the committed event, not the other
    assert sd[SD_ID]["id"] == str(event.id) and sd[SD_ID]["hash"] == event.row_hash
    assert sd[SD_ID]["code"] == "110103" and sd[SD_ID]["object"] == STUDY
    assert xml.find("AuditSourceIdentification").get("AuditSourceID") == "site-a"  # type: ignore[union-attr]
    for marker in PHI_MARKERS:
        assert marker.encode() not in message


def test_tcp_export_uses_octet_counting(store: Store) -> None:
    receiver = StreamReceiver()
    configure_export(f"tcp://127.0.0.1:{receiver.port}")
    try:
        for n in range(3):
            store.run(
                partial(
                    audit.record,
                    actor="worker",
                    action=audit.Action.STUDY_TRIAGED,
                    object_type="study",
                    object_uid=f"{STUDY}.{n}",
                    detail={"tau": 0.3, "model_version": "v1"},
                )
            )
        messages = receiver.wait_for(3)
    finally:
        configure_export(None)
        receiver.close()
    assert len(messages) == 3
    objects = [parse(m)[1][SD_ID]["object"] for m in messages]
    assert objects == [f"{STUDY}.{n}" for n in range(3)]
    assert all(m.startswith(b"<85>1 ") for m in messages)


def test_tls_export(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    receiver = StreamReceiver(context=context)
    exporter = SyslogExporter(parse_syslog_url(f"tls://127.0.0.1:{receiver.port}?ca={cert}"))
    try:
        exporter.submit(fields())
        (message,) = receiver.wait_for(1)
    finally:
        exporter.close()
        receiver.close()
    assert parse(message)[1][SD_ID]["object"] == STUDY
    assert exporter.stats.sent == 1


def test_receiver_down_drops_when_full_then_delivers_the_buffer() -> None:
    port = free_port()
    exporter = SyslogExporter(
        parse_syslog_url(f"tcp://127.0.0.1:{port}"), queue_size=3, max_backoff=0.2, timeout=1
    )
    try:
        accepted = [exporter.submit(fields(id=n)) for n in range(1, 11)]
        # Never blocks, never raises: what does not fit is dropped and counted.
        assert accepted[:3] == [True, True, True]
        assert exporter.stats.dropped == accepted.count(False) >= 6
        deadline = time.monotonic() + 15
        while exporter.stats.failed_sends == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert exporter.stats.failed_sends >= 1  # it tried, and keeps what it holds
        receiver = StreamReceiver(port=port)
        try:
            messages = receiver.wait_for(accepted.count(True))
        finally:
            receiver.close()
    finally:
        exporter.close(timeout=1)
    delivered = [int(parse(m)[1][SD_ID]["id"]) for m in messages]
    assert delivered == [n for n, ok in enumerate(accepted, 1) if ok]
    assert exporter.stats.sent == len(delivered)


def test_a_forked_child_exports_with_its_own_thread(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    exporter = configure_export(f"udp://127.0.0.1:{port}")
    assert exporter is not None
    try:
        pid = os.fork()
        if pid == 0:  # the child, as a Celery prefork worker would be
            code = 1
            try:
                exporter.submit(fields(id=77))
                exporter.close(timeout=5)
                code = 0 if exporter.stats.sent == 1 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        message, _ = udp_receiver.recvfrom(65535)
    finally:
        configure_export(None)
    assert parse(message)[1][SD_ID]["id"] == "77"
