"""The test PACS's routing script, run by Debian's Orthanc: no Docker, no request by hand.

A modality stores a chest study into Orthanc with dcmtk's ``storescu``; Orthanc, with the
repository's ``deploy/orthanc/autoroute.lua`` and the compose file's Orthanc settings, forwards
it to ``cxr-triage gateway`` once it is stable; a ``cxr-triage worker`` process triages it and
``cxr-triage web`` lists it as triaged. Results that come back into the PACS (a Secondary
Capture in the same study) and studies that are not chest radiographs are not forwarded. The
containers' health checks (``deploy/healthcheck.py``) run against the live services.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance.models import Instance, Study
from tests.conftest import REDIS_URL, free_port
from tests.deploy.compose_file import ROOT
from tests.peers import storescu
from tests.services import Service, Stack, settings_env, wait_until
from training.synthetic.studies import write_studies

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUTING_SCRIPT = ROOT / "deploy" / "orthanc" / "autoroute.lua"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
LOG_PREFIX = "cxr-triage autoroute: "


def routing_config() -> dict[str, Any]:
    """The compose file's Orthanc settings that routing depends on, with the repo's script.

    Only ``StableAge`` is shortened (compose: 10 s) so the test does not wait.
    """
    compose = json.loads((ROOT / "deploy" / "orthanc" / "orthanc.json").read_text())
    config = {key: compose[key] for key in ("UserMetadata", "DicomAssociationCloseDelay")}
    config.update({"LuaScripts": [str(ROUTING_SCRIPT)], "StableAge": 1})
    return config


def secondary_capture(source: Path, out: Path, *, new_study: bool) -> pydicom.Dataset:
    """A Secondary Capture made from a radiograph, like a result sent back to the PACS.

    It keeps the radiograph's Modality (CR/DX), as some exporters do, so only the SOP class
    tells it apart; with ``new_study`` it is a study of its own with Modality OT.
    """
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 99
    ds.SeriesDescription = "triage result"
    ds.ConversionType = "WSD"
    if new_study:
        ds.StudyInstanceUID = generate_uid()
        ds.Modality = "OT"
    out.mkdir(parents=True)
    ds.save_as(out / "sc.dcm")
    return ds


def worklist_row(settings: Settings, token: str, study_uid: str) -> dict[str, Any] | None:
    """The study's row on the worklist once triage has decided it, else None."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.web_port}/api/worklist",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            rows = json.load(answer)
    except OSError:
        return None
    row = next((r for r in rows if r["study_instance_uid"] == study_uid), None)
    return row if row and row["status"] in {"triaged", "no_frontal", "no_model", "failed"} else None


def routing_log(orthanc: Any) -> list[str]:
    return [
        line.split(LOG_PREFIX, 1)[1] for line in orthanc.log().splitlines() if LOG_PREFIX in line
    ]


def healthcheck(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_study_stored_into_orthanc_is_routed_to_the_gateway_and_triaged(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_orthanc: Callable[..., Any],
    start_service: Callable[[str, Settings], Service],
    production_stack: Stack,
) -> None:
    stack = production_stack
    settings, store, model, token = stack.settings, stack.store, stack.model, stack.token
    records = write_studies(tmp_path / "studies", 1, size=256, seed=11)
    study_uid = records[0].study_instance_uid
    radiographs = {r.sop_instance_uid for r in records}
    result = secondary_capture(records[0].path, tmp_path / "result", new_study=False)
    other = secondary_capture(records[0].path, tmp_path / "other", new_study=True)

    services = [start_service(name, settings) for name in ("gateway", "worker", "web")]
    orthanc = make_orthanc(
        aet="ORTHANC",
        modalities={"triage": (settings.ae_title, "127.0.0.1", settings.dicom_port)},
        config=routing_config(),
    )
    wait_until(lambda: orthanc.echo("triage"), 60, "the gateway to answer C-ECHO", services)

    # A modality stores the study into the PACS; everything after that is automatic.
    sent = storescu(
        "127.0.0.1",
        orthanc.dicom_port,
        [records[0].path.parent],
        called_ae="ORTHANC",
        calling_ae="MODALITY",
    )
    assert sent.returncode == 0, sent.stderr[-2000:]
    row = wait_until(
        lambda: worklist_row(settings, token, study_uid),
        180,
        "the study routed by Orthanc and triaged",
        services,
    )
    assert row["status"] == "triaged", row
    assert row["model_version"] == model.version
    assert routing_log(orthanc) == [
        f'study {study_uid}: forwarded 2 CR/DX series (2 instances) to "triage"'
    ]
    with store.read() as session:
        received = session.execute(select(Instance.sop_instance_uid, Instance.calling_ae)).all()
    assert {uid for uid, _ in received} == radiographs
    assert {ae for _, ae in received} == {"ORTHANC"}

    # Our result coming back into the same study, and a study with no radiograph: both make a
    # study stable again in Orthanc, and neither is forwarded.
    for folder in (tmp_path / "result", tmp_path / "other"):
        sent = storescu(
            "127.0.0.1", orthanc.dicom_port, [folder], called_ae="ORTHANC", calling_ae="MODALITY"
        )
        assert sent.returncode == 0, sent.stderr[-2000:]
    wait_until(
        lambda: len(routing_log(orthanc)) == 3,
        60,
        "Orthanc to judge the two new stable studies",
        services,
    )
    assert sorted(routing_log(orthanc)[1:]) == sorted(
        f"study {uid}: no new CR/DX series, not forwarded"
        for uid in (study_uid, other.StudyInstanceUID)
    )
    with store.read() as session:
        uids = set(session.scalars(select(Instance.sop_instance_uid)))
        studies = set(session.scalars(select(Study.study_instance_uid)))
    assert str(result.SOPInstanceUID) not in uids and uids == radiographs
    assert studies == {study_uid}

    # What the routing script logs names studies by UID, never a patient.
    ds = pydicom.dcmread(records[0].path, stop_before_pixels=True)
    phi = {
        str(ds.PatientName),
        str(ds.PatientID),
        str(ds.AccessionNumber),
        str(ds.PatientBirthDate),
    } - {""}
    assert not [line for line in routing_log(orthanc) if any(value in line for value in phi)]

    # The containers' health checks, against these live services.
    for kind in ("gateway", "web"):
        check = healthcheck(settings, kind)
        assert check.returncode == 0 and check.stdout == f"{kind}: healthy\n", check
    node = f"cxr-{services[1].proc.pid}@{socket.gethostname()}"
    check = healthcheck(settings, "worker", "--node", node)
    assert check.returncode == 0, check
    check = healthcheck(settings, "worker", "--node", "cxr-0@nowhere", "--timeout", "2")
    assert check.returncode == 1 and "no worker cxr-0@nowhere answered" in check.stdout
    nobody = make_settings(
        database_url=settings.database_url,
        broker_url=REDIS_URL,
        dicom_port=free_port(),
        web_port=free_port(),
    )
    for kind in ("gateway", "web"):
        check = healthcheck(nobody, kind, "--timeout", "2")
        assert check.returncode == 1 and check.stdout.startswith(f"{kind}: "), check
