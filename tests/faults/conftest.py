"""Fixtures of the fault tests: our own Redis and PostgreSQL, a small model, the stack's settings.

The model is a randomly initialised ResNet-50 exported at 32 px: these tests count studies,
not scores, so they need no training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cxr_triage.settings import Settings
from governance.db import Store
from tests.faults.harness import (
    PgCluster,
    RedisServer,
    Unavailable,
    activate_model_file,
    export_random_model,
)
from tests.peers import peer_missing


@pytest.fixture(scope="session")
def fault_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_random_model(tmp_path_factory.mktemp("fault-model"))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (never the shared one on 6379)."""
    try:
        server = RedisServer(tmp_path / "redis")
    except Unavailable as exc:
        peer_missing(str(exc))
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def own_postgres() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this test's own (never the shared one on 5432)."""
    try:
        cluster = PgCluster()
    except Unavailable as exc:
        peer_missing(str(exc))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@dataclass(frozen=True)
class FaultStack:
    settings: Settings
    store: Store


@pytest.fixture
def fault_stack(
    make_settings: Callable[..., Settings], fault_model: Path
) -> Iterator[Callable[..., FaultStack]]:
    """Factory: settings for gateway, worker and web on the given store and broker, short
    recovery intervals, the store migrated and the small model active."""
    from migrations import upgrade

    stores: list[Store] = []

    def make(database_url: str, broker_url: str, **overrides: object) -> FaultStack:
        values: dict[str, object] = {
            "database_url": database_url,
            "broker_url": broker_url,
            "allowed_calling_aes": ["ORTHANC", "PYNETDICOM"],
            "precision": "fp32",
            "stable_age_s": 1.0,
            "requeue_after_s": 6.0,
            "sweep_interval_s": 1.0,
            "network_timeout_s": 10.0,
            "spool_min_free_gb": 0.0,
        }
        values.update(overrides)
        settings = make_settings(**values)
        upgrade(settings.database_url)
        store = Store.from_url(settings.database_url)
        stores.append(store)
        activate_model_file(store, fault_model, "fault-v1")
        return FaultStack(settings, store)

    yield make
    for store in stores:
        store.dispose()
