"""The triage's TID 1500 "Imaging Measurement Report", written with highdicom.

One report per triaged study and destination: Comprehensive 3D SR by default (Comprehensive SR
for a destination that asks for it), in a new series of the source study, COMPLETE and
UNVERIFIED (a device wrote it; no person checked it). The content tree (PS3.16 TID 1500):

- observation context: a device observer named ``cxr-triage`` whose model name is the model
  version (TID 1004);
- procedure reported: a plain chest X-ray;
- image library: the frontal images that were analysed;
- one measurement group (TID 1501): finding Pneumonia (SCT 233604007) in the lung
  (SCT 39607008), the calibrated probability, the priority flag as a coded qualitative
  evaluation, and the algorithm identification (model version; tau, policy version and
  operating point as parameters).

A study with no frontal chest image gets a report whose qualitative evaluation says it was not
evaluated and why. A re-triage's report names the earlier one in PredecessorDocumentsSequence.
Built from header-only data sets of the stored source files: no pixels are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr_triage import __version__

MANUFACTURER = "cxr-triage (research software, not for diagnostic use)"
DEVICE_NAME = "cxr-triage"
# The device observer's UID: fixed for the software, so every report names the same device.
DEVICE_UID = "2.25.205416738226302462312196384917204585512"
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "AI triage report - not for diagnostic use"

# Our own codes, in a private coding scheme (PS3.16 8.2: "99" prefix) where no standard one fits.
SCHEME = "99CXRTRIAGE"
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
LUNG = CodedConcept("39607008", "SCT", "Lung structure")
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
PROBABILITY = CodedConcept("PNEUMONIA-P", SCHEME, "Calibrated probability of pneumonia")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PRIORITY = CodedConcept("TRIAGE-PRIORITY", SCHEME, "AI triage priority")
FLAGGED = CodedConcept("PRIORITY", SCHEME, "Flagged for priority reading")
NOT_FLAGGED = CodedConcept("ROUTINE", SCHEME, "Not flagged; routine reading")
NOT_EVALUATED = CodedConcept(
    "NO-FRONTAL", SCHEME, "Not evaluated: no frontal chest radiograph in the study"
)


@dataclass(frozen=True)
class ReportInput:
    """What one report says; no patient identifiers beyond those the source headers carry."""

    study_instance_uid: str
    model_version: str
    probability: float | None
    tau: float | None
    flagged: bool
    policy_version: int | None = None
    operating_point: str | None = None
    #: header-only data sets of the frontal images that were analysed (empty: none)
    analysed: Sequence[Dataset] = field(default_factory=tuple)
    #: header-only data sets of every stored instance of the study (the report's evidence)
    evidence: Sequence[Dataset] = field(default_factory=tuple)
    #: earlier reports of the study (their headers) that this one supersedes
    predecessors: Sequence[Dataset] = field(default_factory=tuple)


def _algorithm(report: ReportInput) -> hd.sr.AlgorithmIdentification:
    parameters = [
        f"tau={report.tau:.6g}" if report.tau is not None else "tau=none",
        f"policy_version={report.policy_version}"
        if report.policy_version is not None
        else "policy_version=none",
        f"operating_point={report.operating_point or 'unknown'}",
    ]
    return hd.sr.AlgorithmIdentification(
        name=f"{DEVICE_NAME} pneumonia ResNet-50",
        version=report.model_version[:64],
        parameters=parameters,
    )


def _content(report: ReportInput) -> hd.sr.MeasurementReport:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID,
            name=DEVICE_NAME,
            manufacturer_name=DEVICE_NAME,
            model_name=report.model_version[:64],
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=device)
    evaluated = bool(report.analysed) and report.probability is not None
    measurements = []
    if evaluated:
        assert report.probability is not None
        measurements.append(
            hd.sr.Measurement(
                name=PROBABILITY,
                value=round(float(report.probability), 6),
                unit=NO_UNITS,
                algorithm_id=_algorithm(report),
            )
        )
        evaluation = FLAGGED if report.flagged else NOT_FLAGGED
    else:
        evaluation = NOT_EVALUATED
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"pneumonia triage {report.model_version}"[:64]
        ),
        finding_type=PNEUMONIA,
        finding_sites=[hd.sr.FindingSite(anatomic_location=LUNG)],
        algorithm_id=_algorithm(report),
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=PRIORITY, value=evaluation)],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in report.analysed
        ]
        or None,
    )
    return hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=CHEST_XRAY,
        imaging_measurements=[group],
        referenced_images=list(report.analysed) or None,
    )


def build_report(
    report: ReportInput,
    *,
    sr_class: str = "comprehensive3d",
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The report as a DICOM data set (highdicom SR), ready to save or send.

    Parameters
    ----------
    report
        What the triage decided and the source headers; ``evidence`` must not be empty.
    sr_class
        ``"comprehensive3d"`` (Comprehensive 3D SR) or ``"comprehensive"`` (Comprehensive SR).

    Raises
    ------
    ValueError
        ``evidence`` is empty, belongs to another study, or ``sr_class`` is unknown.
    """
    if not report.evidence:
        raise ValueError("report.evidence must hold at least one source header")
    for ds in report.evidence:
        if str(ds.StudyInstanceUID) != report.study_instance_uid:
            raise ValueError("report.evidence holds an instance of another study")
    classes = {"comprehensive3d": hd.sr.Comprehensive3DSR, "comprehensive": hd.sr.ComprehensiveSR}
    if sr_class not in classes:
        raise ValueError(f"sr_class must be one of {sorted(classes)}, got {sr_class!r}")
    sr = classes[sr_class](
        evidence=list(report.evidence),
        content=_content(report),
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=False,
        previous_versions=list(report.predecessors) or None,
        manufacturer_model_name=DEVICE_NAME,
        software_versions=f"{__version__} model {report.model_version}"[:64],
        series_description=SERIES_DESCRIPTION,
    )
    return sr
