"""``cxr-triage web``: its options, its refusal of an empty store, and a real server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.web.conftest import Scenario
from web.main import main

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(tmp_path / "data"),
        CXR_DATABASE_URL=database_url,
        PYTHONPATH=str(REPO),
    )
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cxr_triage.cli", "web", *args]


def test_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cxr-triage web")
    assert "--host" in out and "--port" in out and "127.0.0.1" in out


def test_an_unmigrated_store_is_refused_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = subprocess.run(
        _command("--port", str(free_port())), cwd=tmp_path, env=_env(tmp_path, url),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cxr-triage web:") and "`cxr-triage db upgrade`" in lines[0]


def _get(url: str, timeout: float = 5.0, token: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


@contextmanager
def web_server(tmp_path: Path, database_url: str) -> Iterator[str]:
    """Run ``cxr-triage web`` on a free port; yield its base URL; stop it with SIGTERM."""
    port = free_port()
    log = (tmp_path / "web.log").open("w")
    process = subprocess.Popen(
        _command("--port", str(port)), cwd=tmp_path, env=_env(tmp_path, database_url),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"web exited: {(tmp_path / 'web.log').read_text()}")
            try:
                if _get(f"{base}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"web did not answer: {(tmp_path / 'web.log').read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@pytest.mark.integration
def test_a_real_server_serves_the_page_and_the_worklist(
    tmp_path: Path, database_url: str, scenario: Scenario, tokens: dict[str, str]
) -> None:
    token = tokens["radiologist"]
    with web_server(tmp_path, database_url) as base:
        status, content_type, page = _get(f"{base}/")
        assert status == 200 and content_type.startswith("text/html")
        assert "Research software for assistive triage" in page and "NON-CLINICAL" in page
        status, _, body = _get(f"{base}/api/worklist")
        assert status == 401 and "log in" in json.loads(body)["detail"]
        status, content_type, body = _get(f"{base}/api/worklist", token=token)
        assert status == 200 and content_type.startswith("application/json")
        assert [row["study_instance_uid"] for row in json.loads(body)] == scenario.order
        status, _, body = _get(f"{base}/api/studies/1.2.3.404", token=token)
        assert status == 404 and json.loads(body) == {"detail": "no study 1.2.3.404"}
        status, _, script = _get(f"{base}/static/worklist.js")
        assert status == 200 and "/api/worklist" in script
    log = (tmp_path / "web.log").read_text()
    assert "Traceback" not in log
