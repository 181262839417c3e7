"""Per-image features recorded at triage time, in the triage's own transaction.

The worker hands over what only it saw (statistics of the model input before ImageNet
standardisation and a few header values it read with the pixels, :class:`InputFeatures`); the
rest comes from the store's Instance and Study rows. No pixels and no patient identifiers are
kept: age becomes a band.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.models import ImageFeature, ImageInference, Instance, Study

logger = logging.getLogger(__name__)

AGE_BANDS = ((18, "0-17"), (40, "18-39"), (65, "40-64"), (200, "65+"))
#: The columns of an image's Instance row that its feature row keeps as they are.
_INSTANCE_COLUMNS = ("manufacturer", "view_position", "modality", "body_part", "calling_ae")


@dataclass(frozen=True, slots=True)
class InputFeatures:
    """What the worker measured of one image: the unit image's statistics, a few header values.

    Each field is named as the ImageFeature column it is kept in.
    """

    img_mean: float | None
    img_std: float | None
    img_frac_zero: float | None
    img_frac_one: float | None
    model_name: str | None
    pixel_spacing: str | None
    bits_stored: str | None
    photometric: str | None

    @classmethod
    def measure(cls, unit: np.ndarray, ds: Any) -> InputFeatures:
        """Of the model input ``unit`` (in [0, 1], before standardisation) and its dataset."""
        return cls(**unit_image_stats(unit), **header_features(ds))  # type: ignore[arg-type]


def unit_image_stats(unit: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation and the fractions of pixels at 0 and at 1 of a [0, 1] image."""
    values = np.asarray(unit, dtype=np.float32)
    if values.size == 0:
        raise ValueError("unit must not be empty")
    return {
        "img_mean": float(values.mean()),
        "img_std": float(values.std()),
        "img_frac_zero": float(np.mean(values <= 0.0)),
        "img_frac_one": float(np.mean(values >= 1.0)),
    }


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[:limit] or None


def header_features(ds: Any) -> dict[str, str | None]:
    """Model name, pixel spacing (mm, 2 decimals), bits stored, photometric of a dataset."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        spacing_text = f"{float(spacing[0]):.2f}" if spacing else None
    except (TypeError, ValueError, IndexError):
        spacing_text = None
    return {
        "model_name": _text(ds.get("ManufacturerModelName"), 64),
        "pixel_spacing": spacing_text,
        "bits_stored": _text(ds.get("BitsStored"), 8),
        "photometric": _text(ds.get("PhotometricInterpretation"), 16),
    }


def age_band(age_years: int | None) -> str | None:
    if age_years is None or age_years < 0:
        return None
    return next(band for limit, band in AGE_BANDS if age_years < limit)


def record_image_features(
    session: Session,
    *,
    study_id: int,
    model_version_id: int,
    measured: Mapping[int, InputFeatures | None],
) -> int:
    """Add a feature row for each image inference of the study by this model that has none.

    ``measured`` maps instance ids to what the worker measured (None where it did not reach the
    pixels). Returns the number of rows added.
    """
    rows = session.execute(
        select(ImageInference, Instance, Study)
        .join(Instance, Instance.id == ImageInference.instance_id)
        .join(Study, Study.id == Instance.study_id)
        .outerjoin(ImageFeature, ImageFeature.image_inference_id == ImageInference.id)
        .where(
            Instance.study_id == study_id,
            ImageInference.model_version_id == model_version_id,
            ImageFeature.id.is_(None),
        )
    ).all()
    for inference, instance, study in rows:
        features = measured.get(instance.id)
        session.add(
            ImageFeature(
                image_inference_id=inference.id,
                study_id=study_id,
                model_version_id=model_version_id,
                probability=inference.probability,
                age_band=age_band(study.patient_age_years),
                sex=study.patient_sex,
                **instance.columns(*_INSTANCE_COLUMNS),
                # None where the worker did not reach the pixels: those columns stay NULL.
                **(asdict(features) if features is not None else {}),
            )
        )
    return len(rows)
