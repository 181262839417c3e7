"""Which images of a study the model scores: frontal chest radiographs (CR/DX, PA, AP or no view).

Everything else is recorded as skipped with a reason a radiologist understands, not scored.
The decision reads header attributes only, so it needs no pixel decode.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

RADIOGRAPH_MODALITIES = {"CR", "DX"}
FRONTAL_VIEWS = {"PA", "AP", ""}
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "TORAX", "THORACIC"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LEFT LATERAL", "RIGHT LATERAL"}

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
SCORABLE_SOP_CLASSES = {CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING}


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value or "").strip().upper()


def skip_reason(ds: Dataset) -> str | None:
    """Why this image is not scored, or None when it is a frontal chest radiograph.

    ``ds`` may be read with ``stop_before_pixels=True``.
    """
    sop_class = ds.get("SOPClassUID", "")
    if sop_class == SECONDARY_CAPTURE:
        return "secondary capture, not a radiograph"
    modality = _text(ds, "Modality")
    if modality not in RADIOGRAPH_MODALITIES:
        return f"modality {modality or 'missing'} is not CR or DX"
    if sop_class and sop_class not in SCORABLE_SOP_CLASSES:
        return f"SOP class {sop_class} is not a CR or DX image"
    view = _text(ds, "ViewPosition")
    if view in LATERAL_VIEWS:
        return f"lateral view ({view})"
    if view not in FRONTAL_VIEWS:
        return f"view {view} is not PA or AP"
    body_part = _text(ds, "BodyPartExamined")
    if body_part not in CHEST_BODY_PARTS:
        return f"body part {body_part} is not chest"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "colour image, not a radiograph"
    return None
