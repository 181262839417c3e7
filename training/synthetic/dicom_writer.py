"""Synthetic radiographs as real DICOM Part-10 files: stored values, headers, transfer syntaxes.

:func:`to_stored` turns presentation values into what a detector would store (bit depth,
MONOCHROME1 or MONOCHROME2, Rescale Slope/Intercept, a VOI window that matches the stored
range) and :func:`pixel_transform_of` says how :mod:`worker.preprocess` reads them back, so
in-memory training data (:func:`training.synthetic.studies.synthetic_arrays`) takes the same
path as a DICOM file at serving time. :func:`build_dataset` writes the IODs of CR Image
Storage and Digital X-Ray Image Storage (For Presentation, For Processing), PS3.3 A.2, A.26.

Patient attributes are synthetic and obviously fake (``ZZFAKE^...``, ``FAKEPID...``); they
exist so that tests can check they never reach a log.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from worker.preprocess import PERCENTILES, PixelTransform

logger = logging.getLogger(__name__)

CRImageStorage = UID("1.2.840.10008.5.1.4.1.1.1")

SOP_CLASSES = {
    "CR": CRImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "DX-PROCESSING": DigitalXRayImageStorageForProcessing,
}
TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
BITS_STORED = (8, 10, 12, 14, 16)
_VIEW_CODES = {
    "PA": ("272479007", "postero-anterior"),
    "AP": ("399348003", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
}
FIELD_OF_VIEW_MM = 430.0
_MANUFACTURERS = (
    ("SYNTHETIC RADIOLOGY", "PHANTOM DR 1"),
    ("ACME IMAGING (SYNTHETIC)", "ACME CR-2"),
    ("CXR-TRIAGE", "SYNTH-DX"),
)


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a detector stores one image.

    ``slope``/``intercept`` of None means no Rescale attributes in the header; ``window`` says
    whether Window Center/Width are written (they then cover the stored range).
    """

    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    slope: float | None = None
    intercept: float | None = None
    window: bool = True

    def __post_init__(self) -> None:
        if self.bits_stored not in range(8, 17):
            raise ValueError(f"bits_stored must be 8 to 16, got {self.bits_stored}")
        if self.photometric not in {"MONOCHROME1", "MONOCHROME2"}:
            raise ValueError(
                f"photometric must be MONOCHROME1 or MONOCHROME2, got {self.photometric!r}"
            )
        if (self.slope is None) != (self.intercept is None):
            raise ValueError("slope and intercept must be given together")
        if self.slope is not None and not self.slope > 0:
            raise ValueError(f"slope must be positive, got {self.slope}")

    @property
    def bits_allocated(self) -> int:
        return 8 if self.bits_stored <= 8 else 16


def sample_encoding(rng: np.random.Generator, modality: str = "CR") -> Encoding:
    """A plausible detector encoding for ``modality`` (CR, DX or DX-PROCESSING).

    DX requires Rescale Slope 1 and Intercept 0, and DX For Presentation a window (PS3.3
    C.8.11.3); CR may go without either or use other rescale values.

    Raises
    ------
    ValueError
        ``modality`` is not one of CR, DX, DX-PROCESSING.
    """
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {', '.join(SOP_CLASSES)}, got {modality!r}")
    bits = int(rng.choice(BITS_STORED))
    photometric = "MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2"
    slope, intercept = None, None
    if modality != "CR":
        slope, intercept = 1.0, 0.0  # DX enumerates these values (PS3.3 C.8.11.4.1.2)
    elif rng.random() < 0.5:
        slope, intercept = [(1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, 100.0)][
            int(rng.integers(4))
        ]
    window = modality == "DX" or (modality == "CR" and rng.random() < 0.6)
    return Encoding(bits, photometric, slope, intercept, window)


def to_stored(
    presentation: np.ndarray, encoding: Encoding, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Presentation values in [0, 1] to stored values and the window that displays them.

    The detector uses a random part of its range; MONOCHROME1 stores dense as low values.

    Returns
    -------
    stored
        uint8 or uint16 array, all values below ``2**bits_stored``.
    window
        (center, width) in rescaled units covering the 0.5th-99.5th percentile of the stored
        values (slightly widened at random), or None when ``encoding.window`` is False.

    Raises
    ------
    ValueError
        ``presentation`` is not 2-D or has values outside [0, 1].
    """
    values = np.asarray(presentation, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"presentation must be 2-D, got shape {values.shape}")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError("presentation values must lie in [0, 1]")
    if encoding.photometric == "MONOCHROME1":
        values = 1.0 - values
    top = 2**encoding.bits_stored - 1
    low = rng.uniform(0.0, 0.08)
    span = rng.uniform(0.75, 0.99 - low)
    stored = np.rint((low + span * values) * top).clip(0, top)
    stored = stored.astype(np.uint8 if encoding.bits_allocated == 8 else np.uint16)
    if not encoding.window:
        return stored, None
    lo, hi = np.percentile(stored, PERCENTILES)
    slope = encoding.slope if encoding.slope is not None else 1.0
    intercept = encoding.intercept if encoding.intercept is not None else 0.0
    widen = rng.uniform(1.0, 1.15)
    center = slope * (lo + hi) / 2 + intercept
    width = max(2.0, slope * (hi - lo) * widen)
    return stored, (round(float(center), 2), round(float(width), 2))


def pixel_transform_of(encoding: Encoding, window: tuple[float, float] | None) -> PixelTransform:
    """The :class:`~worker.preprocess.PixelTransform` that serving reads from such a header."""
    return PixelTransform(
        slope=encoding.slope if encoding.slope is not None else 1.0,
        intercept=encoding.intercept if encoding.intercept is not None else 0.0,
        window=window,
        invert=encoding.photometric == "MONOCHROME1",
    )


@dataclass(frozen=True, slots=True)
class PatientInfo:
    """The synthetic patient and study attributes of one study (obviously fake)."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age_years: int
    accession_number: str
    study_instance_uid: str
    study_datetime: dt.datetime
    institution: str
    manufacturer: tuple[str, str]


def sample_patient(rng: np.random.Generator, index: int) -> PatientInfo:
    """Fake patient and study attributes; ``index`` makes them unique within one run."""
    age = int(rng.integers(18, 91))
    study = dt.datetime(2024, 1, 1, 8, 0) + dt.timedelta(
        days=int(rng.integers(0, 700)), minutes=int(rng.integers(0, 600))
    )
    birth = study.date() - dt.timedelta(days=365 * age + int(rng.integers(0, 365)))
    token = f"{int(rng.integers(16**6)):06X}"
    return PatientInfo(
        patient_name=f"ZZFAKE^SYNTH{index:04d}^{token}",
        patient_id=f"FAKEPID{token}{index:04d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex="M" if rng.random() < 0.5 else "F",
        age_years=age,
        accession_number=f"FAKEACC{index:06d}"[:16],
        study_instance_uid=generate_uid(),
        study_datetime=study,
        institution="Synthetic General Hospital (not a real site)",
        manufacturer=_MANUFACTURERS[int(rng.integers(len(_MANUFACTURERS)))],
    )


def build_dataset(
    stored: np.ndarray,
    encoding: Encoding,
    window: tuple[float, float] | None,
    patient: PatientInfo,
    *,
    modality: str = "CR",
    view: str = "PA",
    series_number: int = 1,
    instance_number: int = 1,
) -> Dataset:
    """A complete, uncompressed (Explicit VR Little Endian) dataset for one radiograph.

    Raises
    ------
    ValueError
        ``modality`` or ``view`` is unknown, or ``stored`` does not fit ``encoding``.
    """
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {', '.join(SOP_CLASSES)}, got {modality!r}")
    if view not in {"PA", "AP", "LL"}:
        raise ValueError(f"view must be PA, AP or LL, got {view!r}")
    if stored.ndim != 2 or int(stored.max(initial=0)) >= 2**encoding.bits_stored:
        raise ValueError("stored must be 2-D with values below 2**bits_stored")
    if modality != "CR" and (encoding.slope, encoding.intercept) != (1.0, 0.0):
        raise ValueError("encoding must have slope 1 and intercept 0 for DX (PS3.3 C.8.11.4)")
    sop_class = SOP_CLASSES[modality]
    dicom_modality = "CR" if modality == "CR" else "DX"
    when = patient.study_datetime
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = when.strftime("%H%M%S")
    ds.AccessionNumber = patient.accession_number
    ds.Modality = dicom_modality
    ds.Manufacturer, ds.ManufacturerModelName = patient.manufacturer
    ds.InstitutionName = patient.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST 2 VIEWS (SYNTHETIC)"
    ds.SeriesDescription = f"CHEST {view}"
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age_years:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = patient.study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["P", "F"] if view == "LL" else ["L", "F"]
    spacing = round(FIELD_OF_VIEW_MM / max(stored.shape), 4)
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = encoding.bits_allocated
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0
    if encoding.slope is not None:
        ds.RescaleIntercept = f"{encoding.intercept:g}"
        ds.RescaleSlope = f"{encoding.slope:g}"
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = f"{window[0]:g}"
        ds.WindowWidth = f"{window[1]:g}"
        ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    if dicom_modality == "DX":
        _add_dx_modules(ds, encoding, for_processing=modality == "DX-PROCESSING", view=view)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "CXRTRIAGE_SYN"
    return ds


def _add_dx_modules(ds: Dataset, encoding: Encoding, *, for_processing: bool, view: str) -> None:
    """The DX Series, DX Image, DX Anatomy Imaged and DX Detector attributes (PS3.3 C.8.11)."""
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PixelIntensityRelationship = "LOG"
    # +1: lower values mean less X-ray intensity (MONOCHROME1 stores dense tissue low).
    ds.PixelIntensityRelationshipSign = 1 if encoding.photometric == "MONOCHROME1" else -1
    ds.PresentationLUTShape = "INVERSE" if encoding.photometric == "MONOCHROME1" else "IDENTITY"
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code("816094009", "Chest")])  # CID 4031
    ds.ViewCodeSequence = Sequence([_code(*_VIEW_CODES[view])])  # CID 4010
    ds.PositionerType = ""
    ds.DetectorType = "SCINTILLATOR"
    ds.AcquisitionContextSequence = Sequence()


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Re-encode ``ds`` in place with ``transfer_syntax`` (a key of TRANSFER_SYNTAXES).

    Compression goes through pydicom's encoders (RLE natively, JPEG-LS via pyjpegls, JPEG 2000
    via pylibjpeg-openjpeg); pydicom has no encoder for JPEG Lossless (Process 14).

    Raises
    ------
    ValueError
        ``transfer_syntax`` is not a key of TRANSFER_SYNTAXES.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)}, "
            f"got {transfer_syntax!r}"
        )
    uid = TRANSFER_SYNTAXES[transfer_syntax]
    if transfer_syntax in {"explicit", "implicit"}:
        ds.file_meta.TransferSyntaxUID = uid
        return ds
    ds.compress(uid, generate_instance_uid=False)
    return ds
