"""The worklist in a real browser (Debian's chromium driven by playwright): log in, drawn,
refreshed, opened from the keyboard; acknowledge, override and final read from the page, each
checked in the store and the audit trail. Skipped only where /usr/bin/chromium is missing (CI
installs it). The page as the radiologist left it is saved to test-artifacts/worklist.png."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn

from cxr_triage.settings import Settings
from governance.db import Store, create_store_engine
from governance.models import utcnow
from tests.conftest import free_port
from tests.web.conftest import SKIP_LATERAL, Scenario, make_tokens, populate, study_uid
from web.app import create_app

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

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


@contextmanager
def serving(settings: Settings, store: Store, log_level: str = "warning") -> Iterator[str]:
    """The app on a real socket in a thread of this process; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, store), host="127.0.0.1", port=port, log_level=log_level,
        log_config=None,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Served:
    base: str
    store: Store
    scenario: Scenario
    tokens: dict[str, str]


@pytest.fixture
def served(
    make_settings: Callable[..., Settings], make_database_url: Callable[[str], str]
) -> Iterator[Served]:
    """The app on a real socket, in a thread of this process, over a populated SQLite store."""
    settings = make_settings(database_url=make_database_url("sqlite"))
    store = Store(create_store_engine(settings.database_url))
    scenario = populate(store, settings.model_path, settings.spool_path)
    tokens = make_tokens(store)
    with serving(settings, store) as base:
        yield Served(base, store, scenario, tokens)
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
        assert policy is not None
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


def log_in(page: Any, base: str, token: str) -> None:
    """Open the worklist, get sent to the login page, paste the token, come back."""
    page.goto(f"{base}/")
    page.wait_for_url("**/login?next=%2F")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")
    page.wait_for_selector("#worklist-body tr[data-uid]")


def watch(page: Any) -> list[str]:
    """Console errors and uncaught exceptions of the page, collected as they happen.

    A 401 before logging in is the page's cue to go to /login, not a problem.
    """
    problems: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error" and "401" not in message.text:
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return problems


def test_worklist_renders_flagged_first_refreshes_and_opens_a_study(served: Served) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev)")
    base, store, scenario = served.base, served.store, served.scenario
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            problems = watch(page)
            log_in(page, base, served.tokens["radiologist"])
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


def _study(store: Store, uid: str) -> SimpleNamespace:
    from sqlalchemy import select

    from governance.models import Study

    with store.read() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        return SimpleNamespace(
            **{
                c: getattr(study, c)
                for c in (
                    "acknowledged_by",
                    "priority_override",
                    "override_reason",
                    "final_read",
                    "final_read_by",
                )
            }  # fmt: skip
        )


def _actions(store: Store, uid: str) -> list[tuple[str, str, dict[str, Any]]]:
    from sqlalchemy import select

    from governance.models import AuditEvent

    with store.read() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.object_uid == uid).order_by(AuditEvent.id)
        )
        return [(e.action, e.actor, dict(e.detail)) for e in events]


def test_a_radiologist_acknowledges_overrides_and_reads_from_the_worklist(
    served: Served,
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev)")
    expect = sync_api.expect
    base, store, scenario = served.base, served.store, served.scenario
    flagged = scenario.uids["B"]  # the highest score: first on the list
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            problems = watch(page)
            log_in(page, base, served.tokens["radiologist"])
            expect(page.locator("#user-name")).to_have_text("radiologist (radiologist)")
            # The demo model was activated just now: the page says so, and that it is a demo.
            expect(page.locator("#change-banner")).to_be_visible()
            expect(page.locator("#change-banner")).to_contain_text("model demo-1 became active")
            assert "NON-CLINICAL" in page.locator(".banner").inner_text()
            first = page.locator("#worklist-body tr").first
            expect(first).to_have_attribute("data-uid", flagged)
            assert first.get_attribute("data-priority") == "priority"
            assert "demo-1 \u00b7 policy v2" in first.locator("td.decided-by").inner_text()

            # Acknowledge from the keyboard: focus the row, press A.
            row = page.locator(f"#worklist-body tr[data-uid='{flagged}']")
            row.focus()
            page.keyboard.press("a")
            expect(row.locator("td.read")).to_contain_text("acknowledged by radiologist")
            expect(row.locator("button.act-ack")).to_be_disabled()
            assert _study(store, flagged).acknowledged_by == "radiologist"

            # Override it downwards with a reason, in the dialog (keyboard: O on the row).
            row.focus()
            page.keyboard.press("o")
            dialog = page.locator("#override-dialog")
            expect(dialog).to_be_visible()
            assert page.evaluate("document.activeElement.closest('dialog') !== null")
            expect(dialog.get_by_label("Routine: in the order received")).to_be_checked()
            dialog.get_by_label("Reason (required; no patient identifiers)").fill(
                "old consolidation, unchanged since the prior film"
            )
            dialog.get_by_role("button", name="Save override").click()
            expect(dialog).to_be_hidden()
            # No longer priority: study A (flagged, 0.80) is first now; B is routine, by a person.
            expect(page.locator("#worklist-body tr").first).to_have_attribute(
                "data-uid", scenario.uids["A"]
            )
            expect(row).to_have_attribute("data-priority", "routine")
            expect(row.locator("td.priority")).to_contain_text("set by radiologist")
            study = _study(store, flagged)
            assert study.priority_override == "routine"
            assert study.override_reason == "old consolidation, unchanged since the prior film"

            # The final read, with the row's button.
            row.locator("button.act-read").click()
            read_dialog = page.locator("#final-read-dialog")
            expect(read_dialog).to_be_visible()
            read_dialog.get_by_label("Yes: pneumonia").check()
            read_dialog.get_by_role("button", name="Record final read").click()
            expect(read_dialog).to_be_hidden()
            expect(row.locator("td.read")).to_contain_text("Final read: pneumonia (radiologist")
            expect(row.locator("td.waiting")).to_contain_text("read after")
            study = _study(store, flagged)
            assert study.final_read is True and study.final_read_by == "radiologist"

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)

            events = _actions(store, flagged)
            names = [action for action, _, _ in events]
            assert names[-3:] == ["study_acknowledged", "study_overridden", "final_read_recorded"]
            assert {actor for _, actor, _ in events[-3:]} == {"radiologist"}
            override = events[-2][2]
            assert (override["from"], override["to"]) == ("priority", "routine")
            assert override["model_flagged"] is True

            # Signing out ends the session: the page sends the user to the login page again.
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url("**/login")
            page.goto(f"{base}/")
            page.wait_for_url("**/login?next=%2F")
            assert problems == []
        finally:
            browser.close()
    assert (ARTIFACTS / "worklist.png").stat().st_size > 10_000
