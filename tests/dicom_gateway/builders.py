"""Small synthetic DICOM instances for the gateway tests (noise plus a gradient, 12 bits).

They are not chest radiographs: the gateway never looks at pixels. Compressed copies are made
with pydicom's encoders (RLE, JPEG-LS, JPEG 2000) or dcmtk's ``dcmcjpeg`` (JPEG lossless SV1).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

CR_IMAGE_STORAGE = ComputedRadiographyImageStorage
DX_PRESENTATION_STORAGE = DigitalXRayImageStorageForPresentation
SECONDARY_CAPTURE_STORAGE = SecondaryCaptureImageStorage

#: Transfer syntaxes the tests send, compressed ones included.
TEST_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
)


def make_dataset(
    study_uid: str,
    *,
    sop_class_uid: str = CR_IMAGE_STORAGE,
    sop_instance_uid: str | None = None,
    series_uid: str | None = None,
    size: int = 64,
    seed: int = 0,
) -> Dataset:
    """A 12-bit MONOCHROME2 image instance of ``sop_class_uid`` in study ``study_uid``."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 3000, size, dtype=np.float32)[None, :]
    pixels = (gradient + rng.normal(0, 200, (size, size))).clip(0, 4095).astype(np.uint16)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid or generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SYN-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDate = "20260101"
    ds.Modality = "DX" if sop_class_uid == DX_PRESENTATION_STORAGE else "CR"
    if sop_class_uid == SECONDARY_CAPTURE_STORAGE:
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Manufacturer = "Synthetic"
    ds.SeriesNumber = 1
    ds.InstanceNumber = seed + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def write_instance(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write ``ds`` as a Part-10 file in ``transfer_syntax`` (compressing it if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax == JPEGLosslessSV1:
        # pydicom has no JPEG lossless encoder; dcmtk's dcmcjpeg does it.
        plain = path.with_suffix(".plain.dcm")
        ds.save_as(plain, enforce_file_format=True)
        subprocess.run(["dcmcjpeg", "+e1", str(plain), str(path)], check=True)
        plain.unlink()
        return path
    if transfer_syntax.is_compressed:
        ds.compress(transfer_syntax)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True, little_endian=None, implicit_vr=None)
    return path


def write_study(
    folder: Path,
    *,
    study_uid: str | None = None,
    syntaxes: tuple[str, ...] = TEST_SYNTAXES,
    size: int = 64,
) -> tuple[str, list[str]]:
    """Write one study with an instance per transfer syntax into ``folder``.

    Returns the Study Instance UID and the SOP Instance UIDs, in file order.
    """
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    sop_uids = []
    for index, syntax in enumerate(syntaxes):
        ds = make_dataset(study_uid, series_uid=series_uid, size=size, seed=index)
        write_instance(ds, folder / f"im{index:03d}.dcm", syntax)
        sop_uids.append(str(ds.SOPInstanceUID))
    return study_uid, sop_uids
