"""Nothing is lost when a worker dies with a study's message (the filesystem broker cannot
redeliver an unacknowledged one): the gateway's store sweep queues the study again and a real
worker process triages it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from cxr_triage.settings import Settings
from cxr_triage.up import prepare_store
from dicom_gateway.header import read_header
from dicom_gateway.scp import Gateway
from governance.db import Store
from governance.models import Study, StudyStatus
from governance.studies import record_instance
from governance.triage_results import mark_queued
from tests.services import Service, TrainedModel, activate_trained, wait_until
from training.synthetic.studies import write_studies
from worker.celery_app import make_celery

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_study_whose_message_died_with_its_worker_is_queued_again_and_triaged(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_service: Callable[[str, Settings], Service],
    trained_model: TrainedModel,
) -> None:
    settings = make_settings(requeue_after_s=60, precision="fp32")  # embedded broker
    prepare_store(settings)
    store = Store.from_url(settings.database_url)
    activate_trained(store, trained_model)
    [record] = [r for r in write_studies(tmp_path / "in", 1, size=256, seed=2, lateral=False)]
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    # The row as the gateway records it (the worker selects from it and checks the file's
    # header against it).
    ds = pydicom.dcmread(record.path, stop_before_pixels=True)
    item = dataclasses.replace(
        read_header(
            record.path,
            affected_sop_class_uid=str(ds.SOPClassUID),
            affected_sop_instance_uid=str(ds.SOPInstanceUID),
        ),
        path=str(record.path),
        calling_ae="PACS",
        received_at=hour_ago,
    )
    store.run(lambda s: record_instance(s, item))
    # Queued an hour ago; the message went with the worker that took it. Nothing is in the
    # broker now, and the study still says "queued".
    store.run(lambda s: mark_queued(s, [record.study_instance_uid], at=hour_ago))

    worker = start_service("worker", settings)
    gateway = Gateway(settings, store, make_celery(settings), sweep_interval_s=0.5)
    gateway.start()
    try:

        def triaged() -> tuple[dt.datetime, dt.datetime] | None:
            with store.read() as session:
                study = session.scalar(select(Study))
                if study is None or study.status != StudyStatus.TRIAGED:
                    return None
                assert study.queued_at is not None and study.triaged_at is not None
                return study.queued_at, study.triaged_at

        queued_at, triaged_at = wait_until(
            triaged, 120, "the stale study to be queued again and triaged", [worker]
        )
        assert hour_ago < queued_at < triaged_at
    finally:
        gateway.stop()
        store.dispose()
