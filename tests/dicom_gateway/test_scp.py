"""The gateway against real peers: dcmtk's echoscu/storescu and Orthanc, over real sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cxr_triage.settings import Settings
from dicom_gateway.scp import Gateway
from governance.audit import Action
from governance.db import Store
from tests.conftest import REDIS_URL
from tests.dicom_gateway.builders import (
    DX_PRESENTATION_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    make_dataset,
    write_instance,
    write_study,
)
from tests.dicom_gateway.inspection import (
    RedisQueue,
    stored_instances,
    wait_until,
)
from tests.inspect_store import audit_events
from tests.peers import Orthanc, echoscu, storescu

pytestmark = pytest.mark.integration


def test_echo_succeeds_and_an_empty_allow_list_accepts_any_caller(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(allowed_calling_aes=[])
    start_gateway(settings)

    for calling_ae in ("ANYONE", "SOMEONE_ELSE"):
        result = echoscu("127.0.0.1", settings.dicom_port, calling_ae=calling_ae)
        assert result.returncode == 0, result.stderr

    warnings = [r for r in caplog.records if "CXR_ALLOWED_CALLING_AES is empty" in r.message]
    assert len(warnings) == 1


def test_storescu_study_is_spooled_recorded_and_queued_once_on_release(
    tmp_path: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    redis_queue: Callable[[Settings], RedisQueue],
) -> None:
    settings = make_settings(
        database_url=database_url,
        broker_url=REDIS_URL,
        allowed_calling_aes=["MODALITY"],
        stable_age_s=0.5,
    )
    queue = redis_queue(settings)
    gateway = start_gateway(settings, sweep_interval_s=0.2)
    study_uid, sop_uids = write_study(tmp_path / "study")
    # One of each other accepted image class in the same study.
    for index, sop_class in enumerate((DX_PRESENTATION_STORAGE, SECONDARY_CAPTURE_STORAGE)):
        ds = make_dataset(study_uid, sop_class_uid=sop_class, seed=10 + index)
        write_instance(ds, tmp_path / "study" / f"other{index}.dcm")
        sop_uids.append(str(ds.SOPInstanceUID))

    result = storescu("127.0.0.1", settings.dicom_port, [tmp_path / "study"], calling_ae="MODALITY")

    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == len(sop_uids)
    assert queue.wait_for(1) == [study_uid]
    rows = stored_instances(gateway.store)
    assert sorted(sop for _, sop, _ in rows) == sorted(sop_uids)
    for row_study, sop_uid, path in rows:
        assert row_study == study_uid
        assert Path(path) == settings.spool_path / study_uid / f"{sop_uid}.dcm"
        assert Path(path).stat().st_size > 0
    assert list(gateway.spool.incoming.iterdir()) == []
    received = audit_events(gateway.store, Action.INSTANCES_RECEIVED)
    assert [(e.object_uid, e.actor, e.actor_address, e.detail["instances"]) for e in received] == [
        (study_uid, "MODALITY", "127.0.0.1", len(sop_uids))
    ]
    # Once: not again when the study has been quiet for the stable age, nor by the sweeps.
    time.sleep(settings.stable_age_s * 3)
    assert queue.study_uids() == [study_uid]


def test_unknown_calling_ae_is_rejected_and_audited(
    database_url: str,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    settings = make_settings(database_url=database_url, allowed_calling_aes=["PACS", "MODALITY"])
    gateway = start_gateway(settings)

    refused = echoscu("127.0.0.1", settings.dicom_port, calling_ae="INTRUDER")
    accepted = echoscu("127.0.0.1", settings.dicom_port, calling_ae="PACS")

    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    # The rejection goes out before the handler audits it.
    events = wait_until(lambda: audit_events(gateway.store, Action.ASSOCIATION_REFUSED))
    assert [(e.actor, e.actor_address, e.outcome) for e in events] == [
        ("INTRUDER", "127.0.0.1", "refused")
    ]
    assert events[0].event_code == "110113"
    assert events[0].detail["reason"] == "calling AE title not recognised"


def test_orthanc_pushes_a_study_that_is_stored_and_queued(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    redis_queue: Callable[[Settings], RedisQueue],
    make_orthanc: Callable[..., Orthanc],
) -> None:
    settings = make_settings(broker_url=REDIS_URL, allowed_calling_aes=["ORTHANC"])
    queue = redis_queue(settings)
    gateway = start_gateway(settings)
    orthanc = make_orthanc(
        modalities={"triage": (settings.ae_title, "127.0.0.1", settings.dicom_port)}
    )
    syntaxes = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5")
    study_uid, sop_uids = write_study(tmp_path / "study", syntaxes=syntaxes)
    ids = [orthanc.upload(path) for path in sorted((tmp_path / "study").glob("*.dcm"))]

    answer = orthanc.push("triage", ids)

    assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (3, 0)
    rows = stored_instances(gateway.store)
    assert sorted(sop for _, sop, _ in rows) == sorted(sop_uids)
    # Orthanc opens a new association when a file needs a syntax the open one lacks; each
    # released association queues (and audits) what it carried.
    assert set(queue.wait_for(1)) == {study_uid}
    received = wait_until(
        lambda: (
            (events := audit_events(gateway.store, Action.INSTANCES_RECEIVED))
            and sum(e.detail["instances"] for e in events) == 3
            and events
        ),
        what="3 audited instances",
    )
    assert {e.actor for e in received} == {"ORTHANC"}


def test_stop_closes_the_port(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    host, port = gateway.address
    assert echoscu(host, port).returncode == 0

    gateway.stop()

    with socket.socket() as sock:
        assert sock.connect_ex((host, port)) != 0
    store = Store.from_url(settings.database_url)
    store.dispose()
