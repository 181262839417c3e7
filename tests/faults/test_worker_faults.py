"""Workers that die: SIGKILL in the middle of a batch, and restarts during a burst.

Real gateway, worker and web processes, our own Redis, the shared PostgreSQL. Each test counts
studies sent, acknowledged, stored, triaged exactly once, duplicates and lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from cxr_triage.settings import Settings
from governance.models import Role
from governance.tokens import create_token
from tests.faults.conftest import FaultStack
from tests.faults.harness import Ledger, RedisServer, storescu_send, wait_settled
from tests.faults.steps import get_json, make_studies, start_gateway_and_worker, status_count
from tests.services import Service, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
    wait_until(lambda: status_count(stack) >= 1, 60, "the first triage", [worker])
    worker.proc.kill()  # SIGKILL: no chance to acknowledge or give back its message
    worker.proc.wait(10)
    at_kill = status_count(stack)
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


def test_web_and_worker_restarted_during_a_burst_lose_nothing(
    tmp_path: Path,
    own_redis: RedisServer,
    make_database_url: Callable[[str], str],
    fault_stack: Callable[..., FaultStack],
    start_service: Callable[[str, Settings], Service],
) -> None:
    stack = fault_stack(make_database_url("postgresql"), own_redis.url)
    settings = stack.settings
    _, token = stack.store.run(
        lambda s: create_token(s, name="reader", role=Role.RADIOLOGIST, created_by="pytest")
    )
    gateway, worker = start_gateway_and_worker(settings, start_service)
    web = start_service("web", settings)
    paths, uids = make_studies(tmp_path / "studies", 8, seed=22)
    ledger = Ledger()

    # Four associations of two studies each, one after the other, while we restart.
    def burst() -> None:
        for start in range(0, len(paths), 2):
            storescu_send("127.0.0.1", settings.dicom_port, paths[start : start + 2], ledger, uids)

    sender = threading.Thread(target=burst)
    sender.start()
    wait_until(lambda: status_count(stack) >= 1, 60, "the first triage", [worker, gateway])
    worker.proc.terminate()  # a warm shutdown: the running task finishes, the rest stay queued
    web.proc.terminate()
    worker.proc.wait(30)
    web.proc.wait(30)
    worker = start_service("worker", settings)
    web = start_service("web", settings)
    sender.join(120)
    assert not sender.is_alive()

    counts = wait_settled(ledger, stack.store, timeout=90)
    assert (counts.sent, counts.acknowledged, counts.stored) == (8, 8, 8), counts.as_line()
    assert (counts.triaged_once, counts.duplicates, counts.lost, counts.stuck) == (
        8,
        0,
        0,
        0,
    ), counts.as_line() + "\n" + worker.text()[-3000:]
    url = f"http://127.0.0.1:{settings.web_port}/api/worklist"
    listed = wait_until(lambda: get_json(url, token), 60, "the restarted web", [web])
    assert {row["study_instance_uid"] for row in listed} == ledger.studies_acknowledged
    assert {row["status"] for row in listed} <= {"triaged", "no_frontal"}
