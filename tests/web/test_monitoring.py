"""The monitoring API, /metrics gauges and page: an injected drift alert, shown to admins only;
the page in Chromium draws the histogram and the alert (screenshot in test-artifacts/)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cxr_triage.settings import Settings
from governance.db import Store, create_store_engine
from governance.models import utcnow
from governance.monitoring.runs import WindowSettings, run_drift
from tests.governance.monitoring.store_data import add_model, insert_studies
from tests.governance.monitoring.synth import Population, draw
from tests.web.conftest import make_tokens
from tests.web.test_browser import ARTIFACTS, CHROMIUM, LAUNCH_ARGS, serving, watch

WINDOW = WindowSettings(days=7, studies=200, baseline_studies=300)


def drifted(store: Store, tmp_path: Path) -> None:
    """A model version whose latest window has a new manufacturer for 30 % of studies."""
    rng = np.random.default_rng(12)
    model_file = tmp_path / "m.pt"
    model_file.write_bytes(b"model")
    model = store.run(lambda s: add_model(s, str(model_file), validation=draw(rng, 2000)))
    t = utcnow() + dt.timedelta(minutes=1)
    step = dt.timedelta(minutes=10)
    t = store.run(lambda s: insert_studies(s, model, draw(rng, 300), start=t, step=step))
    t = store.run(lambda s: insert_studies(s, model, draw(rng, 200), start=t, step=step))
    run_drift(store, window=WINDOW, now=t)
    shift = Population(new_manufacturer=0.3)
    t = store.run(lambda s: insert_studies(s, model, draw(rng, 200, shift), start=t, step=step))
    run = run_drift(store, window=WINDOW, now=t)
    assert run is not None and run.alerted


def test_monitoring_api_and_metrics_show_the_alert_to_admins(
    store: Store, tmp_path: Path, client: TestClient, tokens: dict[str, str]
) -> None:
    drifted(store, tmp_path)
    refused = client.get(
        "/api/monitoring", headers={"Authorization": f"Bearer {tokens['radiologist']}"}
    )
    assert refused.status_code == 403
    answer = client.get("/api/monitoring", headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert answer.status_code == 200
    data = answer.json()
    assert data["alert"]["alerts"][0]["feature"] == "manufacturer"
    assert len(data["latest"]["histogram"]["window"]) == 20
    assert [r["alerted"] for r in data["runs"]] == [False, True]
    assert data["subgroups"]["labelled"] == 700
    assert data["recalibration"][0]["state"] == "waiting-for-labels"
    job = data["recalibration"][0]["id"]
    conflict = client.post(
        f"/api/recalibration/{job}/approve",
        json={"reason": "too early"},
        headers={"Authorization": f"Bearer {tokens['admin']}"},
    )
    assert conflict.status_code == 409 and "not a candidate" in conflict.json()["detail"]
    metrics = client.get("/metrics").text
    assert (
        'cxr_triage_drift_alert{feature="manufacturer",model_version="mon-v1",test="chi2"} 1.0'
        in metrics
    )
    assert 'cxr_triage_drift_alert{feature="sex",model_version="mon-v1",test="chi2"} 0.0' in metrics


@pytest.mark.integration
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_monitoring_page_draws_the_histogram_and_the_alert(
    make_settings: Callable[..., Settings], make_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev)")
    sync_playwright = sync_api.sync_playwright

    settings = make_settings(database_url=make_database_url("sqlite"))
    store = Store(create_store_engine(settings.database_url))
    drifted(store, tmp_path)
    tokens = make_tokens(store)
    try:
        with serving(settings, store) as base, sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
            )
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems = watch(page)
            page.goto(f"{base}/monitoring")
            page.wait_for_url("**/login?next=%2Fmonitoring")
            page.get_by_label("API token").fill(tokens["admin"])
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{base}/monitoring")
            page.wait_for_selector("body[data-loaded=true]")
            assert page.locator("#histogram-svg rect.bar").count() == 20
            assert page.locator("#histogram-svg polyline.reference").count() == 1
            banner = page.locator("#alert-banner")
            assert banner.is_visible() and "manufacturer" in banner.inner_text()
            assert page.locator("#timeline circle.alert-mark").count() == 1
            assert "ALERT" in page.locator("#tests").inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "monitoring.png"), full_page=True)
            assert not problems, problems
            browser.close()
    finally:
        store.dispose()
