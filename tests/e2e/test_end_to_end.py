"""Orthanc -> gateway -> Redis -> a real worker process -> the study flagged in /api/worklist.

Everything is real: Debian's Orthanc pushes synthetic studies over C-STORE to ``cxr-triage
gateway``, which queues them on Redis; ``cxr-triage worker`` (a Celery worker process) scores
them with a trained demo model and writes to PostgreSQL; ``cxr-triage web`` serves the result.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from cxr_triage.settings import Settings
from tests.services import Service, Stack, wait_until
from training.synthetic.studies import write_studies

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def post_json(url: str, body: dict[str, Any], token: str) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def worklist(settings: Settings, token: str) -> list[dict[str, Any]]:
    try:
        return get_json(f"http://127.0.0.1:{settings.web_port}/api/worklist", token)  # type: ignore[no-any-return]
    except OSError:
        return []


def test_orthanc_to_flagged_worklist_on_postgres_and_redis(
    tmp_path: Path,
    make_orthanc: Callable[..., Any],
    start_service: Callable[[str, Settings], Service],
    production_stack: Stack,
) -> None:
    stack = production_stack
    settings, model, token = stack.settings, stack.model, stack.token

    # Two studies: one with consolidation, one without; each a frontal plus a lateral.
    studies = tmp_path / "studies"
    records = write_studies(studies, 2, size=512, seed=7, positive_fraction=0.5)
    label_of = {r.study_instance_uid: r.label for r in records}
    positive = next(uid for uid, label in label_of.items() if label == 1)
    negative = next(uid for uid, label in label_of.items() if label == 0)
    lateral = next(
        r.sop_instance_uid for r in records if r.study_instance_uid == positive and r.view == "LL"
    )

    services = [start_service(name, settings) for name in ("gateway", "worker", "web")]
    orthanc = make_orthanc(
        aet="ORTHANC",
        modalities={"triage": (settings.ae_title, "127.0.0.1", settings.dicom_port)},
    )
    wait_until(lambda: orthanc.echo("triage"), 60, "the gateway to answer C-ECHO", services)
    wait_until(
        lambda: get_json(f"http://127.0.0.1:{settings.web_port}/healthz"),
        60,
        "the web server",
        services,
    )

    ids = {
        uid: [orthanc.upload(r.path) for r in records if r.study_instance_uid == uid]
        for uid in (positive, negative)
    }
    pushed_at: dict[str, float] = {}
    for uid, resources in ids.items():
        answer = orthanc.push("triage", resources)
        pushed_at[uid] = time.monotonic()
        assert answer["FailedInstancesCount"] == 0 and answer["InstancesCount"] == 2

    def triaged() -> list[dict[str, Any]] | None:
        rows = worklist(settings, token)
        done = [r for r in rows if r["status"] in {"triaged", "no_frontal", "failed"}]
        return rows if len(done) == 2 else None

    rows = wait_until(triaged, 180, "both studies on the worklist as triaged", services)
    latency = time.monotonic() - max(pushed_at.values())

    by_uid = {row["study_instance_uid"]: row for row in rows}
    assert by_uid[positive]["status"] == "triaged" and by_uid[negative]["status"] == "triaged"
    assert by_uid[positive]["flagged"] is True, by_uid[positive]
    assert by_uid[negative]["flagged"] is False, by_uid[negative]
    assert rows[0]["study_instance_uid"] == positive  # flagged first
    assert by_uid[positive]["score"] >= by_uid[positive]["tau"] > by_uid[negative]["score"]
    assert by_uid[positive]["model_version"] == model.version
    assert by_uid[positive]["policy_version"] == 1

    detail = get_json(f"http://127.0.0.1:{settings.web_port}/api/studies/{positive}", token)
    images = {image["sop_instance_uid"]: image for image in detail["images"]}
    assert len(images) == 2
    assert images[lateral]["scored"] is False
    assert images[lateral]["skipped_reason"] == "lateral view (LL)"
    frontal = next(image for uid, image in images.items() if uid != lateral)
    assert frontal["probability"] == pytest.approx(by_uid[positive]["score"])
    stamps = detail["timestamps"]
    assert stamps["first_received_at"] <= stamps["queued_at"] <= stamps["triaged_at"]
    assert detail["model_sha256"] == model.sha256

    # The radiologist's final read goes through the same web process whose log is scanned.
    read = post_json(
        f"http://127.0.0.1:{settings.web_port}/api/studies/{positive}/final-read",
        {"pneumonia": True},
        token,
    )
    assert read["final_read"] is True and read["final_read_by"] == "radiologist"

    # What a hospital would grep for: no patient identifier in any service's log.
    phi = set()
    for record in records:
        ds = pydicom.dcmread(record.path, stop_before_pixels=True)
        phi |= {str(ds.PatientName), str(ds.PatientID), str(ds.get("AccessionNumber", ""))}
        phi.add(str(ds.get("PatientBirthDate", "")))
    phi.discard("")
    for service in services:
        text = service.text()
        leaked = sorted(value for value in phi if value in text)
        assert not leaked, f"{service.name} logged patient identifiers: {leaked}"

    print(f"\nlast instance stored -> both studies triaged in the API: {latency:.2f} s")
