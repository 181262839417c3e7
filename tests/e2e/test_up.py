"""`cxr-triage up` on the embedded defaults: SQLite store, filesystem broker, three processes.

A study pushed over DICOM is triaged by the worker through kombu's filesystem broker, and
Ctrl-C (SIGINT) stops every service cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cxr_triage.settings import Settings
from cxr_triage.up import SERVICES, prepare_store
from dicom_gateway.scu import send_files, wait_for_echo
from governance.db import Store
from governance.models import Role
from governance.tokens import create_token
from tests.services import TrainedModel, activate_trained, settings_env, wait_until
from training.synthetic.studies import write_studies

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _worklist(port: int, token: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/worklist", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)  # type: ignore[no-any-return]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_triages_on_embedded_defaults_and_stops_on_ctrl_c(
    tmp_path: Path, make_settings: Callable[..., Settings], trained_model: TrainedModel
) -> None:
    settings = make_settings(precision="fp32")  # no database or broker URL: the embedded ones
    assert settings.database_url.startswith("sqlite:///") and settings.embedded_broker
    prepare_store(settings)
    store = Store.from_url(settings.database_url)
    activate_trained(store, trained_model)
    _, token = store.run(
        lambda s: create_token(s, name="dr-up", role=Role.RADIOLOGIST, created_by="pytest")
    )
    store.dispose()
    records = write_studies(tmp_path / "studies", 1, size=256, seed=3, positive_fraction=1.0)

    log = tmp_path / "up.log"
    with log.open("wb") as handle:
        up = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage.cli", "up"],
            env=settings_env(settings),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for_echo("127.0.0.1", settings.dicom_port, settings.ae_title, timeout=90), (
            log.read_text()
        )
        report = send_files(
            [r.path for r in records], "127.0.0.1", settings.dicom_port, settings.ae_title
        )
        assert report.sent == len(records) and not report.failed
        rows = wait_until(
            lambda: [r for r in _worklist(settings.web_port, token) if r["status"] == "triaged"],
            120,
            "the study to be triaged through the filesystem broker",
        )
        assert rows[0]["study_instance_uid"] == records[0].study_instance_uid
        assert rows[0]["flagged"] is True
        children = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", log.read_text())]
        assert len(children) == len(SERVICES)  # gateway, worker, web, beat
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert not [pid for pid in children if _alive(pid)], "a service outlived `up`"
    assert "Traceback" not in text
