"""Small DICOM files for worker tests, written with pydicom (no generator needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)


def radiograph(
    *,
    study_uid: str,
    view: str = "PA",
    modality: str = "CR",
    body_part: str = "CHEST",
    seed: int = 0,
    shape: tuple[int, int] = (96, 80),
) -> Dataset:
    """A 12-bit MONOCHROME2 radiograph dataset with random smooth content."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 5))
    img = np.kron(coarse, np.ones((shape[0] // 6 + 1, shape[1] // 5 + 1)))[: shape[0], : shape[1]]
    stored = np.round(img * 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = (
        ComputedRadiographyImageStorage
        if modality == "CR"
        else DigitalXRayImageStorageForPresentation
    )
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.ViewPosition = view
    ds.BodyPartExamined = body_part
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-123456"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
