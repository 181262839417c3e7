"""Export of the report to real Orthanc peers: read back, retried, parked, never blocking."""

from __future__ import annotations

import io
import logging
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select

from governance.db import Store
from governance.deliveries import delivery_dict
from governance.models import AuditEvent, DeliveryState, ResultDelivery
from results import config as results_config
from results.delivery import ResultsContext, plan_event, sweep
from results.main import check_destinations
from results.sr import PROBABILITY
from tests.peers import ORTHANC_BIN, Orthanc, _wait_http
from tests.results.reports import coded_value, measurement_report
from tests.results.triaged import triaged_study

pytestmark = pytest.mark.integration


def _restart(orthanc: Orthanc) -> None:
    """Start a stopped Orthanc again on the same ports and storage."""
    with open(orthanc.log_path, "ab") as log:
        orthanc.process = subprocess.Popen(
            [ORTHANC_BIN, str(orthanc.folder / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=orthanc.folder,
        )
    _wait_http(orthanc, 20.0)


def _reports(orthanc: Orthanc) -> dict[str, pydicom.Dataset]:
    """Every SR instance Orthanc holds, by SOP Instance UID (read back over REST)."""
    found: dict[str, pydicom.Dataset] = {}
    for orthanc_id in orthanc.request("GET", "/instances"):
        with urllib.request.urlopen(f"{orthanc.url}/instances/{orthanc_id}/file") as answer:
            ds = pydicom.dcmread(io.BytesIO(answer.read()))
        if ds.Modality == "SR":
            found[str(ds.SOPInstanceUID)] = ds
    return found


def _states(store: Store) -> dict[tuple[int, str], SimpleNamespace]:
    with store.read() as session:
        return {
            (r.event_id, r.destination): SimpleNamespace(**delivery_dict(r))
            for r in session.scalars(select(ResultDelivery))
        }


def _sweep_until(ctx: ResultsContext, done, timeout: float = 40.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep(ctx)
        states = _states(ctx.store)
        if done(states):
            return states
        time.sleep(0.1)
    pytest.fail(
        f"deliveries did not settle: {[(k, r.state) for k, r in _states(ctx.store).items()]}"
    )


def test_reports_reach_orthanc_retry_while_it_is_down_and_a_refusal_is_parked(
    make_orthanc, make_settings, make_database_url, result_studies: list[Path], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    pacs = make_orthanc(aet="PACS", config={"DicomCheckCalledAet": True})
    backup = make_orthanc(aet="BACKUP", config={"DicomCheckCalledAet": True})
    config_path = tmp_path / "results.toml"
    config_path.write_text(
        f"""
[dicom.pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs.dicom_port}

[dicom.backup]
ae_title = "BACKUP"
host = "127.0.0.1"
port = {backup.dicom_port}
sr = "comprehensive"

[dicom.wrong]
ae_title = "NOBODY"
host = "127.0.0.1"
port = {backup.dicom_port}
"""
    )
    url = make_database_url("postgresql")
    settings = make_settings(
        database_url=url,
        results_config=config_path,
        result_backoff_s=0.2,
        result_max_attempts=3,
        result_timeout_s=5,
    )
    ctx = ResultsContext(settings, Store.from_url(url), results_config.load(config_path))
    assert check_destinations(ctx) == ["wrong"]

    first = triaged_study(ctx.store, result_studies[0], tmp_path / "spool", probability=0.83)
    assert len(plan_event(ctx, first.event_id)) == 3
    assert plan_event(ctx, first.event_id) == plan_event(ctx, first.event_id)  # idempotent
    settled = _sweep_until(
        ctx,
        lambda s: all(r.state in (DeliveryState.SENT, DeliveryState.FAILED) for r in s.values()),
    )
    assert settled[(first.event_id, "pacs")].state == DeliveryState.SENT
    assert settled[(first.event_id, "backup")].state == DeliveryState.SENT
    wrong = settled[(first.event_id, "wrong")]
    assert wrong.state == DeliveryState.FAILED
    assert wrong.attempts == 3
    assert "rejected" in (wrong.last_error or "")

    reports = _reports(pacs)
    assert len(reports) == 1
    sr_uid, ds = next(iter(reports.items()))
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert sr.StudyInstanceUID == first.study_instance_uid
    assert "demo-results" in sr.SoftwareVersions
    group = measurement_report(sr.content).get_image_measurement_groups()[0]
    assert group.get_measurements(name=PROBABILITY)[0].value == pytest.approx(0.83)
    evaluation = coded_value(group.get_qualitative_evaluations()[0])
    assert evaluation.meaning == "Flagged for priority reading"
    (backup_sr,) = _reports(backup).values()
    assert backup_sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR

    # The PACS goes away; a re-triage's report waits and retries; the backup keeps receiving.
    pacs.stop()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="results.main"):
        assert check_destinations(ctx) == ["pacs", "wrong"]
    assert sum("pacs" in r.getMessage() and "C-ECHO" in r.getMessage() for r in caplog.records) == 1
    second = triaged_study(
        ctx.store, result_studies[0], tmp_path / "spool", probability=0.2, previously_flagged=True
    )
    plan_event(ctx, second.event_id)
    states = _sweep_until(ctx, lambda s: s[(second.event_id, "backup")].state == DeliveryState.SENT)
    retrying = states[(second.event_id, "pacs")]
    assert retrying.state == DeliveryState.RETRYING
    assert "PACS@127.0.0.1" in (retrying.last_error or "")
    _restart(pacs)
    states = _sweep_until(
        ctx,
        lambda s: (
            s[(second.event_id, "pacs")].state == DeliveryState.SENT
            and s[(second.event_id, "wrong")].state == DeliveryState.FAILED
        ),
    )
    assert states[(second.event_id, "pacs")].attempts >= 2
    assert states[(second.event_id, "wrong")].attempts == 3
    newer = _reports(pacs)
    assert set(newer) > {sr_uid}
    (latest,) = (d for uid, d in newer.items() if uid != sr_uid)
    predecessor = latest.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr_uid

    # Every final outcome is audited, without patient identifiers in the details.
    with ctx.store.read() as session:
        audited = session.execute(
            select(AuditEvent.detail, AuditEvent.outcome).where(
                AuditEvent.action == "instances_exported"
            )
        ).all()
    outcomes = sorted((detail["destination"], outcome) for detail, outcome in audited)
    assert outcomes == [
        ("backup", "success"), ("backup", "success"), ("pacs", "success"), ("pacs", "success"),
        ("wrong", "failure"), ("wrong", "failure"),
    ]  # fmt: skip
    patient_id = str(ds.PatientID)
    assert all(patient_id not in str(detail) for detail, _ in audited)
    ctx.store.dispose()
