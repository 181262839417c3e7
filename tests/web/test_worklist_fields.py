"""The worklist fields (CXR_WORKLIST_PHI), the viewer link and the thumbnail, in Chromium.

With the setting on, the gateway's header reading keeps the Accession Number, study date and
description; the worklist and study page show them with the age band, sex and an "open in
viewer" link; with it off, none of them. The thumbnail of the scored image is served to the
radiologist role only and never cached publicly. No log line carries the accession number.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from sqlalchemy import select

from cxr_triage.settings import Settings
from dicom_gateway.header import read_header
from governance.db import Store
from governance.models import Study
from tests.results.triaged import triaged_study
from tests.web.conftest import make_tokens
from tests.web.test_browser import CHROMIUM, LAUNCH_ARGS, log_in, serving, watch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]

VIEWER = "https://viewer.example.org/ohif/viewer?StudyInstanceUIDs={study_instance_uid}"


def _keep_fields(store: Store, files: list[Path], keep: bool) -> None:
    """Record the worklist fields as the gateway does (read_header with the setting)."""
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    header = read_header(
        files[0],
        affected_sop_class_uid=str(ds.SOPClassUID),
        affected_sop_instance_uid=str(ds.SOPInstanceUID),
        worklist_fields=keep,
    )

    def work(session):  # type: ignore[no-untyped-def]
        study = session.scalar(
            select(Study).where(Study.study_instance_uid == header.study_instance_uid)
        )
        study.accession_number = header.accession_number
        study.study_date = header.study_date
        study.study_description = header.study_description
        study.patient_age_years, study.patient_sex = 47, "F"

    store.run(work)


@pytest.mark.parametrize("phi", [True, False], ids=["setting-on", "setting-off"])
def test_worklist_fields_viewer_link_and_thumbnail(
    phi: bool,
    make_settings: Callable[..., Settings],
    make_database_url: Callable[[str], str],
    synthetic_study_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev)")
    caplog.set_level(logging.DEBUG)
    settings = make_settings(
        database_url=make_database_url("sqlite"),
        worklist_phi=phi,
        viewer_url_template=VIEWER if phi else "",
    )
    store = Store.from_url(settings.database_url)
    study_dir = sorted(p for p in synthetic_study_dir.iterdir() if p.is_dir())[0]
    triaged = triaged_study(store, study_dir, tmp_path / "spool", probability=0.9)
    _keep_fields(store, triaged.files, phi)
    if phi:  # the worker's heatmap overlay (CXR_HEATMAPS), as worker.saliency writes it
        png = settings.heatmap_file(triaged.study_instance_uid, "demo-results").with_suffix(".png")
        png.parent.mkdir(parents=True)
        Image.fromarray(np.full((512, 512, 3), (200, 40, 40), np.uint8)).save(png)
    source = pydicom.dcmread(triaged.files[0], stop_before_pixels=True)
    accession = str(source.AccessionNumber)
    assert accession
    tokens = make_tokens(store)
    uid = triaged.study_instance_uid
    # debug: the log scan below reads everything the web logs
    with serving(settings, store, log_level="debug") as base:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
            )
            try:
                page = browser.new_page()
                problems = watch(page)
                log_in(page, base, tokens["radiologist"])
                row = page.locator(f"#worklist-body tr[data-uid='{uid}']")
                text = row.inner_text()
                links = page.locator("a.viewer-link")
                if phi:
                    assert f"Acc {accession}" in text
                    assert "40-49 F" in text
                    assert links.count() == 1
                    href = links.first.get_attribute("href")
                    assert href == VIEWER.format(study_instance_uid=uid)
                else:
                    assert accession not in text and "40-49" not in text
                    assert page.locator(".study-facts").count() == 0
                    assert links.count() == 0

                row.locator("a.uid").click()
                page.wait_for_url(f"**/studies/{uid}")
                page.wait_for_selector("#images-body tr")
                image = page.locator("#thumbnail img")
                sync_api.expect(image).to_be_visible(timeout=20_000)
                deadline = time.monotonic() + 20
                while image.evaluate("img => img.naturalWidth") == 0:
                    assert time.monotonic() < deadline, "the thumbnail did not load"
                    time.sleep(0.1)
                assert image.evaluate("img => img.naturalWidth") <= 256
                heatmap = page.locator("#heatmap img")
                if phi:
                    sync_api.expect(heatmap).to_be_visible(timeout=20_000)
                    assert "not for diagnostic use" in page.locator("#heatmap").inner_text()
                else:
                    assert heatmap.count() == 0
                facts = page.locator("#study-facts")
                if phi:
                    assert accession in facts.inner_text()
                    assert page.locator("#study-facts a.viewer-link").count() == 1
                else:
                    assert facts.is_hidden()
                page.screenshot(path=str(tmp_path / "study.png"))
                assert problems == []
            finally:
                browser.close()

        # The thumbnail: the radiologist role only, never cached publicly.
        def get(token: str) -> tuple[int, str]:
            request = urllib.request.Request(
                f"{base}/api/studies/{uid}/thumbnail.png",
                headers={"Authorization": f"Bearer {token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status, answer.headers["Cache-Control"]
            except urllib.error.HTTPError as exc:
                return exc.code, ""

        assert get(tokens["radiologist"]) == (200, "private, no-store, max-age=0")
        assert get(tokens["auditor"])[0] == 403
        store.dispose()
    logged = [r.getMessage() for r in caplog.records]
    assert logged, "the scan must see the app's log"
    assert not [line for line in logged if accession in line]
