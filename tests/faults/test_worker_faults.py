"""Workers that die: SIGKILL in the middle of a batch, and restarts during a burst.

Real gateway, worker and web processes, our own Redis, the shared PostgreSQL. Each test counts
studies sent, acknowledged, stored, triaged exactly once, duplicates and lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cxr_triage.settings import Settings
from governance.models import Study, StudyStatus
from tests.faults.conftest import FaultStack
from tests.faults.harness import Ledger, RedisServer, storescu_send, wait_settled
from tests.peers import echoscu
from tests.services import Service, wait_until
from training.synthetic import write_studies

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def make_studies(folder: Path, n: int, seed: int) -> tuple[list[Path], dict[Path, tuple[str, str]]]:
    records = write_studies(folder, n, size=256, seed=seed, lateral=False)
    uids = {Path(str(r.path)): (r.sop_instance_uid, r.study_instance_uid) for r in records}
    return list(uids), uids


def start_gateway_and_worker(
    settings: Settings, start_service: Callable[[str, Settings], Service]
) -> tuple[Service, Service]:
    gateway = start_service("gateway", settings)
    worker = start_service("worker", settings)
    wait_until(
        lambda: echoscu("127.0.0.1", settings.dicom_port, calling_ae="ORTHANC").returncode == 0,
        60,
        "the gateway to answer C-ECHO",
        [gateway],
    )
    wait_worker_ready(worker)
    return gateway, worker


def wait_worker_ready(worker: Service) -> None:
    wait_until(lambda: " ready." in worker.text(), 120, "the worker to be ready", [worker])


def triaged_count(stack: FaultStack) -> int:
    with stack.store.read() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Study).where(Study.status == StudyStatus.TRIAGED)
            )
            or 0
        )


def test_a_worker_killed_mid_batch_loses_nothing_and_triages_each_study_once(
    tmp_path: Path,
    own_redis: RedisServer,
    make_database_url: Callable[[str], str],
    fault_stack: Callable[..., FaultStack],
    start_service: Callable[[str, Settings], Service],
) -> None:
    stack = fault_stack(make_database_url("postgresql"), own_redis.url)
    settings = stack.settings
    _gateway, worker = start_gateway_and_worker(settings, start_service)
    paths, uids = make_studies(tmp_path / "studies", 10, seed=21)
    ledger = Ledger()

    assert storescu_send("127.0.0.1", settings.dicom_port, paths, ledger, uids) == 0
    wait_until(lambda: triaged_count(stack) >= 1, 60, "the first triage", [worker])
    worker.proc.kill()  # SIGKILL: no chance to acknowledge or give back its message
    worker.proc.wait(10)
    at_kill = triaged_count(stack)
    assert at_kill < 10, "the worker finished the batch before it was killed"

    replacement = start_service("worker", settings)
    counts = wait_settled(ledger, stack.store, timeout=90)
    assert (counts.sent, counts.acknowledged, counts.stored) == (10, 10, 10), counts.as_line()
    assert (counts.triaged_once, counts.duplicates, counts.lost, counts.stuck) == (
        10,
        0,
        0,
        0,
    ), counts.as_line() + "\n" + replacement.text()[-3000:]
