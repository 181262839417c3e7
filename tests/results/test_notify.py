"""Flag notifications to a real HTTP receiver and a real MLLP listener (sockets, threads)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hl7apy.parser import parse_message
from sqlalchemy import select

from governance.db import Store
from governance.models import AuditEvent, DeliveryState, ResultDelivery, Study
from results import config as results_config
from results.delivery import ResultsContext, sweep
from results.notify import PERSON_PRIORITY_STANDS, SIGNATURE_HEADER
from tests.results.triaged import triaged_study

pytestmark = pytest.mark.integration

SECRET = "a-webhook-secret-of-some-length"


class Receiver(ThreadingHTTPServer):
    received: list[tuple[Any, bytes]]


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.server.received.append((self.headers, body))  # type: ignore[attr-defined]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = Receiver(("127.0.0.1", 0), Handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class MllpListener:
    """A small MLLP server: parses each message with hl7apy and answers an ACK (AA)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\x1c\x0d" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                text = data[1 : data.find(b"\x1c\x0d")].decode()
                message = parse_message(text, find_groups=True)
                self.messages.append(text)
                control_id = message.msh.msh_10.value
                ack = (
                    f"MSH|^~\\&|RIS||CXRTRIAGE||20260101000000||ACK^R01|A{control_id}|P|2.5.1\r"
                    f"MSA|AA|{control_id}"
                )
                conn.sendall(b"\x0b" + ack.encode() + b"\x1c\x0d")

    def close(self) -> None:
        self.sock.close()


def test_one_signed_webhook_and_one_oru_per_flag_change_also_after_a_restart(
    webhook: Receiver, make_settings, make_database_url, result_studies: list[Path], tmp_path: Path
) -> None:
    mllp = MllpListener()
    config_path = tmp_path / "results.toml"
    config_path.write_text(
        f"""
[webhook.ris-hook]
url = "http://127.0.0.1:{webhook.server_address[1]}/triage"
secret = "{SECRET}"
include_accession = true

[hl7.ris]
host = "127.0.0.1"
port = {mllp.port}
receiving_application = "RIS"
"""
    )
    url = make_database_url("sqlite")
    settings = make_settings(database_url=url, results_config=config_path, result_backoff_s=0.2)
    ctx = ResultsContext(settings, Store.from_url(url), results_config.load(config_path))
    flagged = triaged_study(ctx.store, result_studies[0], tmp_path / "spool", probability=0.9)
    routine = triaged_study(ctx.store, result_studies[1], tmp_path / "spool", probability=0.1)
    assert sweep(ctx) == 2  # the lost messages: found by the sweep; no flag change, no row

    assert len(webhook.received) == 1
    headers, body = webhook.received[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected
    assert headers["Idempotency-Key"] == f"cxr-triage-event-{flagged.event_id}"
    payload = json.loads(body)
    assert payload["study_instance_uid"] == flagged.study_instance_uid
    assert payload["flag"] is True and payload["score"] == pytest.approx(0.9)
    assert payload["tau"] == 0.5 and payload["model_version"] == "demo-results"
    assert payload["accession_number"]  # the site opted in for this sink

    assert len(mllp.messages) == 1
    oru = parse_message(mllp.messages[0], find_groups=True)
    assert oru.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    order = oru.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_3.to_er7() == flagged.study_instance_uid
    values = {
        obs.obx.obx_3.obx_3_1.value: obs.obx.obx_5.to_er7() for obs in order.oru_r01_observation
    }
    assert values["TRIAGE-PRIORITY"].startswith("PRIORITY")
    assert float(values["PNEUMONIA-P"]) == pytest.approx(0.9)

    # A worker restart (a new context: nothing in memory) sends nothing twice.
    restarted = ResultsContext(settings, Store.from_url(url), results_config.load(config_path))
    sweep(restarted)
    assert len(webhook.received) == 1 and len(mllp.messages) == 1

    # A person set a priority; a re-triage removes the AI flag: the message says theirs stands.
    def set_priority(session):  # type: ignore[no-untyped-def]
        study = session.scalar(
            select(Study).where(Study.study_instance_uid == flagged.study_instance_uid)
        )
        study.priority_override = "urgent"

    ctx.store.run(set_priority)
    triaged_study(
        ctx.store, result_studies[0], tmp_path / "spool", probability=0.2, previously_flagged=True
    )
    sweep(restarted)
    assert len(webhook.received) == 2 and len(mllp.messages) == 2
    second = json.loads(webhook.received[1][1])
    assert second["flag"] is False and second["person_priority"] == "urgent"
    assert PERSON_PRIORITY_STANDS in second["note"]
    assert PERSON_PRIORITY_STANDS in mllp.messages[1]

    with ctx.store.read() as session:
        states = {r.state for r in session.scalars(select(ResultDelivery))}
        audited = session.execute(
            select(AuditEvent.detail).where(AuditEvent.action == "notification_sent")
        ).all()
    assert states == {DeliveryState.SENT}
    assert len(audited) == 4
    assert all("accession" not in json.dumps(detail).lower() for (detail,) in audited)
    assert routine.event_id not in {d["event_id"] for (d,) in audited}
    mllp.close()
    ctx.store.dispose()
    restarted.store.dispose()


def test_a_study_that_cannot_be_triaged_is_notified_once(
    webhook: Receiver, make_settings, make_database_url, result_studies: list[Path], tmp_path: Path
) -> None:
    from worker.tasks import _mark_failed

    config_path = tmp_path / "results.toml"
    config_path.write_text(
        f'[webhook.hook]\nurl = "http://127.0.0.1:{webhook.server_address[1]}/"\n'
        f'secret = "{SECRET}"\n'
    )
    url = make_database_url("postgresql")
    settings = make_settings(database_url=url, results_config=config_path)
    ctx = ResultsContext(settings, Store.from_url(url), results_config.load(config_path))
    triaged = triaged_study(ctx.store, result_studies[2], tmp_path / "spool", probability=0.1)
    _mark_failed(ctx.store, triaged.study_instance_uid, "triage failed; see the worker log")
    _mark_failed(ctx.store, triaged.study_instance_uid, "triage failed; see the worker log")
    sweep(ctx)
    assert len(webhook.received) == 1
    payload = json.loads(webhook.received[0][1])
    assert payload["change"] == "failed" and payload["flag"] is False
    assert "could not be triaged" in payload["note"]
    assert "accession_number" not in payload  # this sink did not opt in
    ctx.store.dispose()
