"""Study assembly and queueing: aborted associations, late instances, a broker that is down."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from cxr_triage.settings import Settings
from dicom_gateway import status
from dicom_gateway.scp import Gateway
from governance.audit import Action
from governance.db import Store
from governance.models import utcnow
from governance.studies import studies_awaiting_queue
from tests.conftest import REDIS_URL, free_port
from tests.dicom_gateway.builders import make_dataset, write_instance, write_study
from tests.dicom_gateway.inspection import (
    RedisQueue,
    stored_instances,
    wait_until,
)
from tests.inspect_store import audit_events
from tests.peers import pynetdicom_store, storescu

pytestmark = pytest.mark.integration


def _awaiting(store: Store) -> list[str]:
    with store.read() as session:
        return studies_awaiting_queue(session, utcnow())


def test_an_aborted_association_is_queued_after_the_stable_age(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    redis_queue: Callable[[Settings], RedisQueue],
) -> None:
    settings = make_settings(broker_url=REDIS_URL, stable_age_s=0.5)
    queue = redis_queue(settings)
    gateway = start_gateway(settings)
    study_uid = generate_uid()
    paths = [
        write_instance(make_dataset(study_uid, seed=i), tmp_path / f"im{i}.dcm") for i in range(2)
    ]

    statuses = pynetdicom_store("127.0.0.1", settings.dicom_port, paths, abort=True)

    assert statuses == [status.SUCCESS, status.SUCCESS]
    assert queue.wait_for(1) == [study_uid]
    [event] = wait_until(lambda: audit_events(gateway.store, Action.INSTANCES_RECEIVED))
    assert (event.object_uid, event.detail["instances"], event.detail["association"]) == (
        study_uid,
        2,
        "aborted",
    )
    wait_until(lambda: _awaiting(gateway.store) == [], what="the study marked queued")


def test_a_study_on_an_association_that_stays_open_is_queued_after_the_stable_age(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    redis_queue: Callable[[Settings], RedisQueue],
) -> None:
    settings = make_settings(broker_url=REDIS_URL, stable_age_s=0.5)
    queue = redis_queue(settings)
    start_gateway(settings)
    ds = make_dataset(generate_uid())
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == status.SUCCESS

        assert queue.wait_for(1) == [ds.StudyInstanceUID]
        assert assoc.is_established
    finally:
        assoc.release()


def test_an_instance_arriving_later_queues_the_study_again(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    redis_queue: Callable[[Settings], RedisQueue],
) -> None:
    settings = make_settings(broker_url=REDIS_URL)
    queue = redis_queue(settings)
    start_gateway(settings)
    study_uid = generate_uid()
    first = write_instance(make_dataset(study_uid, seed=1), tmp_path / "first.dcm")
    late = write_instance(make_dataset(study_uid, seed=2), tmp_path / "late.dcm")

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [first]) == [status.SUCCESS]
    assert queue.wait_for(1) == [study_uid]
    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [late]) == [status.SUCCESS]
    assert queue.wait_for(2) == [study_uid, study_uid]


def test_studies_received_while_the_broker_is_down_are_kept_and_queued_at_next_start(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    redis_queue: Callable[[Settings], RedisQueue],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_gateway.assembly")
    down = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", stable_age_s=0.5)
    gateway = start_gateway(down)
    study_uids = []
    for index in range(2):
        study_uid, _ = write_study(
            tmp_path / f"study{index}", syntaxes=("1.2.840.10008.1.2.1",) * 2
        )
        result = storescu(
            "127.0.0.1", down.dicom_port, [tmp_path / f"study{index}"], calling_ae="MODALITY"
        )
        assert result.returncode == 0, result.stderr
        study_uids.append(study_uid)

    assert len(stored_instances(gateway.store)) == 4
    wait_until(lambda: gateway.assembly.pending == 2 and not gateway.assembly.broker_available)
    time.sleep(2.0)  # a few retries with backoff
    assert gateway.assembly.queued_total == 0
    assert sorted(_awaiting(gateway.store)) == sorted(study_uids)
    outage_warnings = [r for r in caplog.records if "broker unreachable" in r.message]
    assert len(outage_warnings) == 1  # once per outage, not once per study or retry
    gateway.stop()

    up = make_settings(data_dir=down.data_dir, broker_url=REDIS_URL)
    queue = redis_queue(up)
    start_gateway(up)

    assert sorted(queue.wait_for(2)) == sorted(study_uids)
    wait_until(lambda: _awaiting(gateway.store) == [], what="the studies marked queued")
