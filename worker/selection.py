"""Which images of a study the model scores: frontal chest radiographs (CR/DX, PA, AP or no view).

Everything else is recorded as skipped with a reason a radiologist understands, not scored.
The worker decides from the header columns the gateway kept on the store's Instance row
(:func:`row_skip_reason`), so it never opens a lateral or any other file it will not score; the
file of a selected image is opened to score it, and skipped when its header disagrees with its
row (:func:`header_mismatch`). ``predict``, which has no row, decides from the header
(:func:`skip_reason`).
"""

from __future__ import annotations

from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

RADIOGRAPH_MODALITIES = {"CR", "DX"}
FRONTAL_VIEWS = {"PA", "AP", ""}
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "TORAX", "THORACIC"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LEFT LATERAL", "RIGHT LATERAL"}
SCORABLE_SOP_CLASSES = {
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
}


class InstanceColumns(Protocol):
    """The header columns the gateway keeps on an Instance row."""

    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def series_instance_uid(self) -> str | None: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def modality(self) -> str | None: ...
    @property
    def view_position(self) -> str | None: ...
    @property
    def body_part(self) -> str | None: ...


def _normal(value: object, max_length: int = 64) -> str:
    """A header value as the gateway keeps it in a column: first value, no NULs, upper case."""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").replace("\x00", "").strip()[:max_length].upper()


def _header(ds: Dataset, keyword: str, max_length: int = 64) -> str:
    try:
        return _normal(ds.get(keyword, ""), max_length)
    except Exception:  # a value that cannot be converted to its VR counts as absent
        return ""


def classify(
    sop_class: str, modality: str, view: str, body_part: str, samples_per_pixel: int = 1
) -> str | None:
    """Why an image with these (normalised) attributes is not scored, or None to score it."""
    if sop_class == SecondaryCaptureImageStorage:
        return "secondary capture, not a radiograph"
    if modality not in RADIOGRAPH_MODALITIES:
        return f"modality {modality or 'missing'} is not CR or DX"
    if sop_class and sop_class not in SCORABLE_SOP_CLASSES:
        return f"SOP class {sop_class} is not a CR or DX image"
    if view in LATERAL_VIEWS:
        return f"lateral view ({view})"
    if view not in FRONTAL_VIEWS:
        return f"view {view} is not PA or AP"
    if body_part not in CHEST_BODY_PARTS:
        return f"body part {body_part} is not chest"
    if samples_per_pixel != 1:
        return "colour image, not a radiograph"
    return None


def skip_reason(ds: Dataset) -> str | None:
    """Why this image is not scored, or None when it is a frontal chest radiograph.

    ``ds`` may be read with ``stop_before_pixels=True``.
    """
    return classify(
        str(ds.get("SOPClassUID", "") or "").strip(),
        _header(ds, "Modality"),
        _header(ds, "ViewPosition"),
        _header(ds, "BodyPartExamined"),
        int(ds.get("SamplesPerPixel", 1) or 1),
    )


def row_skip_reason(row: InstanceColumns) -> str | None:
    """Why the image of this Instance row is not scored, from its columns alone (no file read)."""
    return classify(
        (row.sop_class_uid or "").strip(),
        _normal(row.modality),
        _normal(row.view_position),
        _normal(row.body_part),
    )


# (keyword, column, label, column length): what the file's header must agree with its row on.
_CHECKED = (
    ("SOPInstanceUID", "sop_instance_uid", "SOP Instance UID", 64),
    ("StudyInstanceUID", "study_instance_uid", "Study Instance UID", 64),
    ("SeriesInstanceUID", "series_instance_uid", "Series Instance UID", 64),
    ("SOPClassUID", "sop_class_uid", "SOP Class UID", 64),
    ("Modality", "modality", "modality", 16),
    ("ViewPosition", "view_position", "view position", 16),
    ("BodyPartExamined", "body_part", "body part", 64),
)


def header_mismatch(ds: Dataset, row: InstanceColumns) -> str | None:
    """Where the file's header disagrees with the row the gateway recorded, or None.

    A row's Series Instance UID that the gateway did not keep (None) is not compared.
    """
    for keyword, column, label, max_length in _CHECKED:
        expected = getattr(row, column)
        if expected is None and column == "series_instance_uid":
            continue
        found = _header(ds, keyword, max_length)
        if found != _normal(expected, max_length):
            return f"header disagrees with the store on {label} ({found or 'missing'})"[:250]
    return None
