"""The drift job on a real store (SQLite and PostgreSQL): runs stored, alerts audited, once per
window key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from sqlalchemy import select

from governance.db import Store
from governance.models import AuditEvent, DriftRun, ModelVersion, utcnow
from governance.monitoring.drift import DriftConfig
from governance.monitoring.runs import NO_BASELINE, WindowSettings, pin_baseline, run_drift
from tests.governance.monitoring.store_data import add_model, insert_studies
from tests.governance.monitoring.synth import Population, draw

# After the policy takes effect (now), so that it is in force for every synthetic study.
T0 = utcnow() + dt.timedelta(minutes=1)
STEP = dt.timedelta(minutes=10)
WINDOW = WindowSettings(days=7, studies=200, baseline_studies=300)


def test_drift_runs_are_stored_and_an_injected_shift_is_audited(
    store: Store, tmp_path: Path
) -> None:
    rng = np.random.default_rng(42)
    model_file = tmp_path / "m.pt"
    model_file.write_bytes(b"model")
    model = store.run(lambda s: add_model(s, str(model_file), validation=draw(rng, 2000)))
    assert run_drift(store, window=WINDOW, now=T0).status == NO_BASELINE  # type: ignore[union-attr]

    t = store.run(lambda s: insert_studies(s, model, draw(rng, 300), start=T0, step=STEP))
    t = store.run(lambda s: insert_studies(s, model, draw(rng, 200), start=t, step=STEP))
    quiet = run_drift(store, window=WINDOW, now=t, window_key="beat:1")
    assert quiet is not None and quiet.status == "ok" and not quiet.alerted
    assert quiet.n_studies == 200 and quiet.inputs["baseline"]["n"] == 300
    assert quiet.inputs["reference_source"] == "validation (training)"
    assert run_drift(store, window=WINDOW, now=t, window_key="beat:1") is None  # idempotent

    shift = Population(new_manufacturer=0.3)
    t = store.run(lambda s: insert_studies(s, model, draw(rng, 200, shift), start=t, step=STEP))
    moved = run_drift(store, window=WINDOW, now=t, window_key="beat:2")
    assert moved is not None and moved.alerted
    assert [a["feature"] for a in moved.results["alerts"]] == ["manufacturer"]
    with store.read() as session:
        assert len(session.scalars(select(DriftRun)).all()) == 3
        alert = session.scalar(select(AuditEvent).where(AuditEvent.action == "drift_alert"))
        assert alert is not None and alert.object_uid == "mon-v1"
        assert alert.detail["features"][0]["feature"] == "manufacturer"
        assert alert.detail["features"][0]["cramers_v"] >= 0.1

    # An admin pins the period of the shifted studies as the baseline: they no longer alert.
    store.run(
        lambda s: pin_baseline(
            s, s.get_one(ModelVersion, model.id), starts_at=t - 200 * STEP, ends_at=t,
            pinned_by="admin1", reason="new detector accepted",
        )
    )  # fmt: skip
    pinned = run_drift(
        store, window=WindowSettings(days=7, studies=100, baseline_studies=300), now=t,
        config=DriftConfig(min_studies=50),
    )  # fmt: skip
    assert pinned is not None and pinned.inputs["baseline"]["source"] == "pinned"
    later = run_drift(store, window=WINDOW, now=t + dt.timedelta(days=30))
    assert later is not None and later.status == "too few studies" and later.n_studies == 0
    tiny = run_drift(
        store, window=WindowSettings(days=0.01, studies=200, baseline_studies=300), now=t,
        config=DriftConfig(min_studies=100),
    )  # fmt: skip
    assert tiny is not None and tiny.status == "too few studies" and tiny.psi is None
