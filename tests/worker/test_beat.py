"""Beat and a real worker process run the drift job on schedule, on Redis and on the embedded
broker; two beats at once do not double a period's run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance.db import Store, create_store_engine
from governance.models import DriftRun, utcnow
from tests.conftest import REDIS_URL
from tests.governance.monitoring.store_data import add_model, insert_studies
from tests.governance.monitoring.synth import draw
from tests.services import Service, wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_two_beats_and_a_worker_run_one_drift_job_per_period(
    broker: str,
    make_settings: Callable[..., Settings],
    make_database_url: Callable[[str], str],
    start_service: Callable[[str, Settings], Service],
    tmp_path: Path,
) -> None:
    settings = make_settings(
        database_url=make_database_url("sqlite"),
        broker_url=REDIS_URL if broker == "redis" else "",
        drift_interval_s=3.0,
        drift_baseline_studies=300,
        drift_window_studies=200,
        device="cpu",
    )
    store = Store(create_store_engine(settings.database_url))
    rng = np.random.default_rng(30)
    model_file = tmp_path / "m.pt"
    model_file.write_bytes(b"model")
    past = utcnow() - dt.timedelta(days=6)
    model = store.run(
        lambda s: add_model(
            s,
            str(model_file),
            validation=draw(rng, 1000),
            effective_from=past - dt.timedelta(days=1),
        )  # fmt: skip
    )
    step = dt.timedelta(minutes=10)
    t = store.run(lambda s: insert_studies(s, model, draw(rng, 500), start=past, step=step))
    assert t < utcnow()
    services = [start_service("worker", settings)]
    started = utcnow()
    services += [start_service("beat", settings), start_service("beat", settings)]

    def beat_runs() -> list[tuple[str, str]]:
        with store.read() as session:
            return list(
                session.execute(
                    select(DriftRun.window_key, DriftRun.status).where(DriftRun.trigger == "beat")
                )
            )

    runs = wait_until(lambda: len(beat_runs()) >= 3 and beat_runs(), 120, "3 beat runs", services)
    elapsed = (utcnow() - started).total_seconds()
    keys = [key for key, _ in runs]
    assert len(keys) == len(set(keys))  # one run per period, whatever two beats sent
    assert all(key.startswith("beat:mon-v1:") for key in keys)
    assert len(keys) <= elapsed / settings.drift_interval_s + 2
    assert {status for _, status in runs} == {"ok"}
    store.dispose()
