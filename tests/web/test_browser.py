"""The worklist in a real browser (Debian's chromium driven by playwright): drawn, refreshed,
opened from the keyboard. Skipped only where /usr/bin/chromium is missing (CI installs it)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn

from cxr_triage.settings import Settings
from governance.db import Store, create_store_engine
from governance.models import utcnow
from tests.conftest import free_port
from tests.web.conftest import SKIP_LATERAL, Scenario, populate, study_uid
from web.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]


@pytest.fixture
def served(
    make_settings: Callable[..., Settings], make_database_url: Callable[[str], str]
) -> Iterator[tuple[str, Store, Scenario]]:
    """The app on a real socket, in a thread of this process, over a populated SQLite store."""
    settings = make_settings(database_url=make_database_url("sqlite"))
    store = Store(create_store_engine(settings.database_url))
    scenario = populate(store, settings.model_path, settings.spool_path)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, store),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            log_config=None,
        )  # fmt: skip
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", store, scenario
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.dispose()


def _add_flagged_study(store: Store, uid: str, score: float) -> None:
    from governance.models import ModelVersion, Study, StudyInference, StudyStatus
    from governance.policies import policy_in_force
    from governance.studies import ReceivedInstance, record_instance

    def work(session) -> None:  # type: ignore[no-untyped-def]
        now = utcnow()
        record_instance(
            session,
            ReceivedInstance(
                study_instance_uid=uid, series_instance_uid=f"{uid}.0",
                sop_instance_uid=f"{uid}.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1", path="/spool/x.dcm", size_bytes=1,
                calling_ae="ORTHANC", view_position="PA", received_at=now,
            ),
        )  # fmt: skip
        model = session.query(ModelVersion).filter_by(version="demo-1").one()
        policy = policy_in_force(session, model.id)
        study = session.query(Study).filter_by(study_instance_uid=uid).one()
        result = StudyInference(
            study_id=study.id, model_version_id=model.id, model_sha256=model.sha256,
            policy_id=policy.id, policy_version=policy.version, tau=policy.tau,
            probability=score, flagged=True, images_scored=1, started_at=now,
            finished_at=now + dt.timedelta(seconds=1),
        )  # fmt: skip
        session.add(result)
        session.flush()
        study.result_id = result.id
        study.status = StudyStatus.TRIAGED
        study.triaged_at = now + dt.timedelta(seconds=1)

    store.run(work)


def test_worklist_renders_flagged_first_refreshes_and_opens_a_study(
    served: tuple[str, Store, Scenario],
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev)")
    base, store, scenario = served
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(f"{base}/")
            page.wait_for_selector("#worklist-body tr[data-uid]")
            rows = page.locator("#worklist-body tr")
            assert rows.evaluate_all("rs => rs.map(r => r.dataset.uid)") == scenario.order
            assert rows.evaluate_all("rs => rs.map(r => r.dataset.flagged)") == [
                "true", "true", "false", "false", "false",
            ]  # fmt: skip
            assert rows.nth(0).locator("td").nth(0).inner_text() == "PRIORITY"
            assert rows.nth(0).locator("td").nth(3).inner_text() == "0.950"
            assert "0.350 (triage)" in rows.nth(0).inner_text()
            waiting = rows.nth(4).locator("td.waiting").inner_text()
            assert waiting.endswith("min") and waiting.startswith("1 h"), waiting
            assert "NON-CLINICAL" in page.locator(".banner").inner_text()

            # A new flagged study with the highest score comes to the top without a reload.
            newest = study_uid("Z")
            page.evaluate("window.__marker = 'same page'")
            _add_flagged_study(store, newest, 0.99)
            # (A locator wait, not wait_for_function: the page's CSP forbids eval.)
            sync_api.expect(page.locator("#worklist-body tr").first).to_have_attribute(
                "data-uid", newest, timeout=20_000
            )
            assert page.evaluate("window.__marker") == "same page"
            assert page.locator("#worklist-body tr").count() == 6

            # Keyboard: focus the row of study A and press Enter to open its page.
            row_a = page.locator(f"#worklist-body tr[data-uid='{scenario.uids['A']}']")
            row_a.focus()
            page.keyboard.press("Enter")
            page.wait_for_url(f"**/studies/{scenario.uids['A']}")
            page.wait_for_selector("#images-body tr")
            images = page.locator("#images-body").inner_text()
            assert f"skipped: {SKIP_LATERAL}" in images and "0.800" in images
            assert "Triaged" in page.locator("#stages-body").inner_text()
            assert problems == []
        finally:
            browser.close()
