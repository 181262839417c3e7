"""The TID 1500 report: content, validity (dciodvfy, dsrdump) and supersession."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from results.sr import NOT_EVALUATED, PNEUMONIA, PROBABILITY, ReportInput, build_report
from tests.peers import dcmtk
from tests.results.reports import coded_value, measurement_report

DCIODVFY = Path("/usr/bin/dciodvfy")


def _headers(study: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(study.glob("*.dcm"))]


def _frontal(headers: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return [h for h in headers if h.get("ViewPosition") in ("PA", "AP")]


def _texts(item: pydicom.Dataset) -> list[tuple[str, str]]:
    """(concept code, text) of every TEXT item under ``item``."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            found.append((child.ConceptNameCodeSequence[0].CodeValue, child.TextValue))
        found += _texts(child)
    return found


def validate(path: Path) -> None:
    """dciodvfy reports no error and dsrdump reads the file."""
    if not DCIODVFY.exists():
        pytest.skip("dicom3tools' dciodvfy is not installed (apt-get install dicom3tools)")
    checked = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True)
    errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    dumped = subprocess.run([dcmtk("dsrdump"), str(path)], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr
    assert "Imaging Measurement Report" in dumped.stdout


@pytest.mark.parametrize("sr_class", ["comprehensive3d", "comprehensive"])
def test_report_of_a_flagged_study(result_studies: list[Path], tmp_path: Path, sr_class: str):
    headers = _headers(result_studies[0])
    frontal = _frontal(headers)
    report = ReportInput(
        study_instance_uid=str(headers[0].StudyInstanceUID),
        model_version="demo-7",
        probability=0.8312,
        tau=0.41,
        flagged=True,
        policy_version=2,
        operating_point="balanced",
        analysed=frontal,
        evidence=headers,
    )
    ds = build_report(report, sr_class=sr_class)
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    validate(path)

    sr = hd.sr.srread(path)
    expected = {
        "comprehensive3d": "1.2.840.10008.5.1.4.1.1.88.34",
        "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33",
    }  # noqa: E501
    assert sr.SOPClassUID == expected[sr_class]
    assert sr.StudyInstanceUID == headers[0].StudyInstanceUID
    assert sr.SeriesInstanceUID != headers[0].SeriesInstanceUID
    assert sr.PatientID == headers[0].PatientID
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert "demo-7" in sr.SoftwareVersions
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert {h.SOPInstanceUID for h in headers} <= referenced
    content = measurement_report(sr.content)
    groups = content.get_image_measurement_groups()
    assert len(groups) == 1
    group = groups[0]
    assert group.finding_type == PNEUMONIA
    assert group.finding_sites[0].value.value == "39607008"
    measurement = group.get_measurements(name=PROBABILITY)[0]
    assert measurement.value == pytest.approx(0.8312)
    (evaluation,) = group.get_qualitative_evaluations()
    assert coded_value(evaluation).meaning == "Flagged for priority reading"
    texts = _texts(group[0])
    assert ("111003", "demo-7") in texts  # Algorithm Version
    parameters = {text for code, text in texts if code == "111002"}  # Algorithm Parameters
    assert {"tau=0.41", "policy_version=2", "operating_point=balanced"} <= parameters
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [
        f.SOPInstanceUID for f in frontal
    ]
    device = content.get_observer_contexts()[0].observer_identifying_attributes
    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device.name == "cxr-triage"
    assert device.model_name == "demo-7"


def test_report_of_a_study_without_frontal_image_says_so(
    result_studies: list[Path], tmp_path: Path
):
    headers = [h for h in _headers(result_studies[1]) if h.get("ViewPosition") not in ("PA", "AP")]
    report = ReportInput(
        study_instance_uid=str(headers[0].StudyInstanceUID),
        model_version="demo-7",
        probability=None,
        tau=0.41,
        flagged=False,
        evidence=headers,
    )
    path = tmp_path / "no-frontal.dcm"
    build_report(report).save_as(path, enforce_file_format=True)
    validate(path)
    group = measurement_report(hd.sr.srread(path).content).get_image_measurement_groups()[0]
    assert group.get_measurements() == []
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.value == NOT_EVALUATED
    assert "no frontal chest radiograph" in coded_value(evaluation).meaning


def test_a_retriage_report_supersedes_the_earlier_one(result_studies: list[Path], tmp_path: Path):
    headers = _headers(result_studies[2])
    first = ReportInput(str(headers[0].StudyInstanceUID), "v1", 0.2, 0.5, False, 1, "balanced",
                        _frontal(headers), headers)  # fmt: skip
    first_ds = build_report(first)
    second = ReportInput(str(headers[0].StudyInstanceUID), "v2", 0.7, 0.5, True, 1, "balanced",
                         _frontal(headers), headers, predecessors=[first_ds])  # fmt: skip
    path = tmp_path / "second.dcm"
    build_report(second).save_as(path, enforce_file_format=True)
    validate(path)
    ds = pydicom.dcmread(path)
    (study,) = ds.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first_ds.SOPInstanceUID


def test_report_refuses_evidence_of_another_study(result_studies: list[Path]):
    headers = _headers(result_studies[0]) + _headers(result_studies[1])
    report = ReportInput(str(headers[0].StudyInstanceUID), "v1", 0.2, 0.5, False, evidence=headers)
    with pytest.raises(ValueError, match="another study"):
        build_report(report)
    with pytest.raises(ValueError, match="evidence"):
        build_report(ReportInput("1.2.3", "v1", 0.2, 0.5, False))
