"""The worklist and study pages, their static files, and what the web package imports."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cxr_triage.settings import Settings
from governance.db import Store
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from tests.web.conftest import Scenario
from web.pages import STATIC_DIR, error_page

HTML = {"Accept": "text/html"}


def test_worklist_page_says_research_use_and_non_clinical_model(
    client: TestClient, scenario: Scenario
) -> None:
    response = client.get("/", headers=HTML)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "Research software for assistive triage" in page
    assert "not a diagnosis" in page
    assert "NON-CLINICAL" in page and f"Active model: {scenario.model_version}" in page
    # A semantic table the script fills, and the scripts served from this package.
    assert '<table class="worklist"' in page and "<caption>" in page
    assert page.count('<th scope="col">') >= 7
    assert 'src="/static/worklist.js"' in page and 'src="/static/common.js"' in page
    assert "$" not in page  # every template value was filled in
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


def test_worklist_page_without_an_active_model(client: TestClient) -> None:
    page = client.get("/").text
    assert "No active model" in page
    assert "NON-CLINICAL" not in page


def test_a_clinical_model_is_not_called_non_clinical(
    client: TestClient, store: Store, tmp_path: Path
) -> None:
    (tmp_path / "m.pt").write_bytes(b"validated weights")

    def work(session) -> None:  # type: ignore[no-untyped-def]
        model = register_model(
            session, version="site-2", path=tmp_path / "m.pt", input_size=224, clinical=True
        )
        set_policy(session, model, operating_point="triage", tau=0.3, rationale="SOP 12",
                   approved_by="qa")  # fmt: skip
        activate_model(session, "site-2")

    store.run(work)
    page = client.get("/").text
    assert "Active model: site-2" in page
    assert "NON-CLINICAL" not in page


def test_study_page_names_the_study_and_unknown_ones_are_404(
    radiologist: TestClient, scenario: Scenario
) -> None:
    client = radiologist
    uid = scenario.uids["A"]
    response = client.get(f"/studies/{uid}", headers=HTML)
    assert response.status_code == 200
    assert f'data-uid="{uid}"' in response.text
    assert 'src="/static/study.js"' in response.text
    assert "NON-CLINICAL" in response.text
    missing = client.get("/studies/1.2.3.999", headers=HTML)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "No study 1.2.3.999" in missing.text


def test_study_page_escapes_what_it_is_given(radiologist: TestClient) -> None:
    response = radiologist.get("/studies/<img src=x onerror=alert(1)>", headers=HTML)
    assert response.status_code == 404
    assert "No study" in response.text
    assert "<img src=x" not in response.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in response.text


def test_unknown_paths_are_404_html_for_browsers_and_json_for_programs(
    client: TestClient,
) -> None:
    page = client.get("/nowhere", headers=HTML)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    api = client.get("/api/nowhere")
    assert api.status_code == 404
    assert api.json() == {"detail": "nothing at /api/nowhere"}


@pytest.mark.parametrize(
    "name", ["style.css", "common.js", "worklist.js", "study.js", "actions.js"]
)
def test_static_files_are_served(client: TestClient, name: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.text == (STATIC_DIR / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["page.html", "error.html", "login.html", "monitoring.html"])
def test_every_full_page_starts_with_the_shared_head(name: str) -> None:
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    assert text.startswith('<!--#include file="head.html" -->\n')


def test_an_include_line_is_replaced_by_its_file() -> None:
    page = bytes(error_page(404, "No such study").body).decode()
    head = (STATIC_DIR / "head.html").read_text(encoding="utf-8")
    assert page.startswith(head.replace("$title", "404"))
    assert "<!--#include" not in page and page.count("<head>") == 1
    assert "</head>" in page and "No such study" in page


def test_pages_load_nothing_from_outside() -> None:
    # No CDN: the hospital network has no internet, and the CSP would block it anyway.
    for file in STATIC_DIR.iterdir():
        # An XML namespace is a name, not something fetched.
        text = re.sub(r'xmlns="[^"]*"', "", file.read_text(encoding="utf-8"))
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), file.name
        assert "<script>" not in text, f"{file.name}: inline scripts break the CSP"


def test_docs_pages_that_need_a_cdn_are_not_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_the_web_package_does_not_import_torch(
    make_settings: Callable[..., Settings],
) -> None:
    code = (
        "import sys\n"
        "import web.app, web.main, web.api, web.health, web.metrics, web.pages\n"
        "from cxr_triage.settings import Settings\n"
        "web.app.create_app(Settings(_env_file=None, database_url='sqlite://'))\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'worker.tasks', 'worker.model')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
