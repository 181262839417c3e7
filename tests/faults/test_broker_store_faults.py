"""The broker and the store go away: our own Redis restarted and flushed with studies queued,
our own PostgreSQL stopped while a PACS sends. Real gateway, worker and web processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cxr_triage.settings import Settings
from governance.models import Role, StudyStatus
from governance.tokens import create_token
from tests.conftest import REDIS_URL
from tests.faults.conftest import FaultStack
from tests.faults.harness import Ledger, PgCluster, RedisServer, storescu_send, wait_settled
from tests.faults.steps import (
    gateway_answers,
    get_json,
    make_studies,
    start_gateway_and_worker,
    status_count,
    wait_gateway,
)
from tests.services import Service, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_redis_restarted_and_then_flushed_with_studies_queued_loses_none(
    tmp_path: Path,
    own_redis: RedisServer,
    make_database_url: Callable[[str], str],
    fault_stack: Callable[..., FaultStack],
    start_service: Callable[[str, Settings], Service],
) -> None:
    stack = fault_stack(make_database_url("postgresql"), own_redis.url)
    settings = stack.settings
    gateway = start_service("gateway", settings)  # no worker yet: the studies stay queued
    wait_gateway(settings, gateway)
    paths, uids = make_studies(tmp_path / "studies", 6, seed=31)
    ledger = Ledger()

    # Three studies queued, then Redis killed and started again (append-only file).
    assert storescu_send("127.0.0.1", settings.dicom_port, paths[:3], ledger, uids) == 0
    wait_until(lambda: status_count(stack, StudyStatus.QUEUED) == 3, 30, "3 queued", [gateway])
    time.sleep(1.5)  # appendfsync everysec
    own_redis.restart(kill=True, down_s=1.0)
    # Three more, then everything in Redis is flushed away.
    assert storescu_send("127.0.0.1", settings.dicom_port, paths[3:], ledger, uids) == 0
    wait_until(lambda: status_count(stack, StudyStatus.QUEUED) == 6, 30, "6 queued", [gateway])
    own_redis.flush()

    worker = start_service("worker", settings)
    counts = wait_settled(ledger, stack.store, timeout=120)
    assert (counts.sent, counts.acknowledged, counts.stored) == (6, 6, 6), counts.as_line()
    assert (counts.triaged_once, counts.duplicates, counts.lost, counts.stuck) == (
        6,
        0,
        0,
        0,
    ), counts.as_line() + "\n" + worker.text()[-3000:] + gateway.text()[-3000:]


def test_postgresql_stopped_while_a_pacs_sends_is_refused_then_recovered_without_restarts(
    tmp_path: Path,
    own_postgres: PgCluster,
    fault_stack: Callable[..., FaultStack],
    start_service: Callable[[str, Settings], Service],
) -> None:
    stack = fault_stack(own_postgres.url, REDIS_URL)
    settings = stack.settings
    _, token = stack.store.run(
        lambda s: create_token(s, name="reader", role=Role.RADIOLOGIST, created_by="pytest")
    )
    gateway, worker = start_gateway_and_worker(settings, start_service)
    web = start_service("web", settings)
    paths, uids = make_studies(tmp_path / "studies", 5, seed=32)
    ledger = Ledger()
    assert storescu_send("127.0.0.1", settings.dicom_port, paths[:2], ledger, uids) == 0
    wait_until(lambda: status_count(stack) == 2, 60, "the first two triaged", [worker])
    health = f"http://127.0.0.1:{settings.web_port}/healthz"
    wait_until(lambda: get_json(health), 60, "the web server", [web])

    own_postgres.stop("fast")
    try:
        during = Ledger()
        storescu_send("127.0.0.1", settings.dicom_port, paths[2:], during, uids)
        # Never Success without the record: every instance refused with 0xA700.
        assert during.acknowledged == set() and during.refusals == {0xA700: 3}, during
        for sop, study in (uids[p] for p in paths[2:]):
            ledger.record(sop, study, 0xA700)
        assert gateway_answers(settings)  # the gateway itself stays up
    finally:
        own_postgres.start()

    # The PACS sends again what was refused, until it is taken (the gateway recovers alone).
    deadline = time.monotonic() + 60
    while ledger.unacknowledged() and time.monotonic() < deadline:
        pending = [p for p in paths if uids[p][0] in ledger.unacknowledged()]
        storescu_send("127.0.0.1", settings.dicom_port, pending, ledger, uids)
        if ledger.unacknowledged():
            time.sleep(1)
    counts = wait_settled(ledger, stack.store, timeout=90)
    assert (counts.sent, counts.acknowledged, counts.stored) == (5, 5, 5), counts.as_line()
    assert (counts.triaged_once, counts.duplicates, counts.lost, counts.stuck) == (
        5,
        0,
        0,
        0,
    ), counts.as_line() + "\n" + worker.text()[-3000:]
    # Worker, web and gateway are the same processes as before the outage.
    assert all(s.proc.poll() is None for s in (gateway, worker, web))
    url = f"http://127.0.0.1:{settings.web_port}/api/worklist"
    listed = wait_until(lambda: get_json(url, token), 30, "the web to answer again", [web])
    assert {row["study_instance_uid"] for row in listed} == ledger.studies_acknowledged
