"""A small PNG of a stored radiograph for the study page (rendered from the spool).

The web never imports torch or the worker's preprocessing: a thumbnail needs only the modality
and VOI LUTs pydicom applies, a rescale to 8 bits and a resize. Sizes are bounded before the
pixels are decoded.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

logger = logging.getLogger(__name__)

MAX_SIDE = 256
MAX_PIXELS = 64 * 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024


class ThumbnailError(Exception):
    """The image cannot be rendered (gone from the spool, unreadable, too large)."""


def render_thumbnail(path: str, max_side: int = MAX_SIDE) -> bytes:
    """PNG bytes of the first frame of the DICOM file at ``path``, at most ``max_side`` px."""
    if max_side < 16:
        raise ValueError(f"max_side must be at least 16, got {max_side}")
    try:
        header = dcmread(path, stop_before_pixels=True)
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if rows * columns * max(frames, 1) > MAX_PIXELS:
            raise ThumbnailError("image too large for a thumbnail")
        ds = dcmread(path)
        pixels = ds.pixel_array
    except FileNotFoundError:
        raise ThumbnailError("the image is no longer in the spool") from None
    except (InvalidDicomError, OSError, AttributeError, ValueError, RuntimeError) as exc:
        logger.warning("thumbnail of %s: %s", path, type(exc).__name__)
        raise ThumbnailError("the image cannot be decoded") from None
    if pixels.ndim == 3 and frames > 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise ThumbnailError("only grayscale radiographs have a thumbnail")
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
    low, high = np.percentile(values, (0.5, 99.5))
    scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 1.0 - scaled
    image = Image.fromarray((scaled * 255).astype(np.uint8))
    image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
