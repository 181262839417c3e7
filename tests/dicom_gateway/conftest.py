"""Fixtures for the gateway tests: a running gateway on a free port, and the Redis queue."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from cxr_triage.settings import Settings
from dicom_gateway.scp import Gateway
from governance.db import Store
from tests.conftest import REDIS_URL
from tests.dicom_gateway.inspection import RedisQueue
from worker.celery_app import make_celery


@pytest.fixture
def redis_queue() -> Iterator[Callable[[Settings], RedisQueue]]:
    """Factory: the Redis list of a settings' queue; deleted at teardown."""
    queues: list[RedisQueue] = []

    def make(settings: Settings) -> RedisQueue:
        queue = RedisQueue(REDIS_URL, settings.queue)
        try:
            queue.client.ping()
        except redis.ConnectionError as exc:
            pytest.fail(f"Redis at {REDIS_URL} does not answer ({exc}); .ci/run starts it")
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.delete()


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., Gateway]]:
    """Factory: start a Gateway for the given settings (store from its database_url).

    The store is migrated first (idempotent) unless ``migrate=False``. Gateways are stopped at
    teardown, in reverse order; one gateway runs at a time in a process.
    """
    from migrations import upgrade

    running: list[tuple[Gateway, Store]] = []

    def start(
        settings: Settings,
        *,
        sweep_interval_s: float = 30.0,
        migrate: bool = True,
        refusal_window_s: float = 60.0,
    ) -> Gateway:
        if migrate:
            upgrade(settings.database_url)
        store = Store.from_url(settings.database_url)
        gateway = Gateway(
            settings,
            store,
            make_celery(settings),
            sweep_interval_s=sweep_interval_s,
            refusal_window_s=refusal_window_s,
        )
        gateway.start()
        running.append((gateway, store))
        return gateway

    yield start
    for gateway, store in reversed(running):
        gateway.stop()
        store.dispose()
