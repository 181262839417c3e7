"""Done-when of issue 11: a study pushed from Orthanc comes back into the same Orthanc study as a
TID 1500 SR, through the real gateway, triage worker and results worker (PostgreSQL, Redis)."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from cxr_triage.settings import Settings
from results.sr import PROBABILITY
from tests.results.reports import coded_value, measurement_report
from tests.services import Service, Stack, wait_until
from training.synthetic.studies import write_studies

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _sr_in_study(orthanc: Any, study_uid: str) -> pydicom.Dataset | None:
    found = orthanc.request(
        "POST",
        "/tools/find",
        f'{{"Level": "Instance", "Query": {{"StudyInstanceUID": "{study_uid}", '
        f'"Modality": "SR"}}}}'.encode(),
    )
    if not found:
        return None
    with urllib.request.urlopen(f"{orthanc.url}/instances/{found[0]}/file") as answer:
        return pydicom.dcmread(io.BytesIO(answer.read()))


def test_a_study_pushed_from_orthanc_comes_back_as_a_report(
    tmp_path: Path,
    make_orthanc: Callable[..., Any],
    start_service: Callable[[str, Settings], Service],
    production_stack: Stack,
) -> None:
    stack = production_stack
    orthanc = make_orthanc(
        aet="ORTHANC",
        modalities={"triage": (stack.settings.ae_title, "127.0.0.1", stack.settings.dicom_port)},
    )
    config = tmp_path / "results.toml"
    config.write_text(
        f'[dicom.pacs]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    )
    settings = stack.settings.model_copy(
        update={"results_config": config, "result_backoff_s": 0.5, "result_sweep_s": 1.0}
    )
    services = [
        start_service(name, settings) for name in ("gateway", "worker", "results-worker", "web")
    ]
    records = write_studies(tmp_path / "studies", 1, size=256, seed=5)
    study_uid = records[0].study_instance_uid
    ids = [orthanc.upload(r.path) for r in records]
    wait_until(lambda: orthanc.echo("triage"), 60, "the gateway to answer C-ECHO", services)
    answer = orthanc.push("triage", ids)
    assert answer["FailedInstancesCount"] == 0

    ds = wait_until(
        lambda: _sr_in_study(orthanc, study_uid), 240, "the report back in Orthanc", services
    )
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert sr.StudyInstanceUID == study_uid
    assert stack.model.version in sr.SoftwareVersions
    group = measurement_report(sr.content).get_image_measurement_groups()[0]
    (probability,) = group.get_measurements(name=PROBABILITY)
    with stack.store.read() as session:
        from sqlalchemy import select

        from governance.models import Study, StudyInference

        result = session.scalar(
            select(StudyInference)
            .join(Study, Study.result_id == StudyInference.id)
            .where(Study.study_instance_uid == study_uid)
        )
        assert result is not None
        expected_p, flagged = result.probability, result.flagged
    assert probability.value == pytest.approx(expected_p, abs=1e-6)
    meaning = coded_value(group.get_qualitative_evaluations()[0]).meaning
    assert meaning == (
        "Flagged for priority reading" if flagged else "Not flagged; routine reading"
    )

    # No patient identifier in any service's log.
    source = pydicom.dcmread(records[0].path, stop_before_pixels=True)
    phi = {str(source.PatientName), str(source.PatientID), str(source.AccessionNumber)} - {""}
    for service in services:
        text = service.text()
        assert not [value for value in phi if value in text], service.name
    assert "answers C-ECHO" in services[2].text()
