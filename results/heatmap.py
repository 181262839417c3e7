"""The heatmap as an RGB Secondary Capture, built with highdicom from the worker's arrays.

The worker (``worker.saliency``) computes the Grad-CAM and its overlay on the scored image;
this module burns in the caption "AI triage - not for diagnostic use" with the score and tau,
and writes a Secondary Capture in a new series of the source study: ImageType
DERIVED\\SECONDARY, BurnedInAnnotation YES, SourceImageSequence naming the scored image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from sqlalchemy import select

from governance.models import Instance, ResultDelivery, TriageEvent
from results.errors import DeliveryFailed
from results.sources import read_header
from results.sr import MANUFACTURER

if TYPE_CHECKING:
    from results.delivery import ResultsContext

CAPTION = "AI triage - not for diagnostic use"
SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "AI triage heatmap - not for diagnostic use"
MAX_SIDE = 4096


def caption_text(score: float | None, tau: float | None) -> str:
    score_text = f"{score:.3f}" if score is not None else "-"
    tau_text = f"{tau:.3f}" if tau is not None else "-"
    return f"{CAPTION} | score {score_text} | tau {tau_text}"


def burn_caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with a black band and ``text`` in white burned in at the bottom.

    Raises
    ------
    ValueError
        ``rgb`` is not an (H, W, 3) uint8 array of at most 4096 px a side.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if max(rgb.shape[:2]) > MAX_SIDE:
        raise ValueError(f"rgb must be at most {MAX_SIDE} px a side, got {rgb.shape[:2]}")
    image = Image.fromarray(rgb)
    width, height = image.size
    size = max(10, width // 40)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except (TypeError, OSError):
        font = ImageFont.load_default()
    band = size * 2
    canvas = Image.new("RGB", (width, height + band), (0, 0, 0))
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((size // 2, height + size // 3), text, fill=(255, 255, 255),
                                font=font)  # fmt: skip
    return np.asarray(canvas)


def build_heatmap_sc(
    source: Dataset,
    overlay: np.ndarray,
    *,
    score: float | None,
    tau: float | None,
    model_version: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The Secondary Capture of ``overlay`` (the worker's RGB blend) for the ``source`` image."""
    pixels = burn_caption(overlay, caption_text(score, tau))
    orientation = source.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # The overlay keeps the radiograph's rows and columns (resized, letterboxed).
        patient_orientation=tuple(orientation)
        if orientation and len(orientation) == 2
        else ("L", "F"),
        series_description=SERIES_DESCRIPTION,
        software_versions=f"cxr-triage model {model_version}"[:64],
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc:
        sc.Laterality = None  # type: ignore[assignment]  # type 2C: present, empty (a chest is not a paired body part)
    sc.DerivationDescription = f"Grad-CAM heatmap of the scored image; {CAPTION}"[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def build_heatmap_for(ctx: ResultsContext, row: ResultDelivery) -> Dataset:
    """The heatmap SC of a delivery's event, from the arrays the worker saved.

    Raises
    ------
    DeliveryFailed
        Transient while the worker has not written the heatmap yet (it computes it after the
        triage commits); permanent when the source image is gone from the spool.
    """
    with ctx.store.read() as session:
        event = session.get(TriageEvent, row.event_id)
        if event is None or event.model_version is None:
            raise DeliveryFailed("no scored triage to draw a heatmap of", transient=False)
        path = ctx.settings.heatmap_file(event.study_instance_uid, event.model_version)
        if not path.exists():
            raise DeliveryFailed("the worker has not written the heatmap yet", transient=True)
        with np.load(path) as arrays:
            overlay = np.array(arrays["overlay"])
            sop_uid = str(arrays["sop_instance_uid"])
        source_path = session.scalar(
            select(Instance.path).where(Instance.sop_instance_uid == sop_uid)
        )
        score, tau, version = event.probability, event.tau, event.model_version
    source = read_header(source_path) if source_path else None
    if source is None:
        raise DeliveryFailed(f"scored image {sop_uid} is no longer in the spool", False)
    return build_heatmap_sc(
        source,
        overlay,
        score=score,
        tau=tau,
        model_version=version,
        series_instance_uid=row.series_instance_uid,
        sop_instance_uid=row.sop_instance_uid,
    )
