"""Limits an image must meet before the worker decodes it, and after it is preprocessed.

A header can declare any size: a 2 kB file declaring 65535 x 65535 pixels would take about
8 GB to decode, the OOM killer would end the worker, and the redelivered task would kill the
next one. :func:`header_skip_reason` checks what the header declares, before any pixel is
decoded; :func:`content_skip_reason` refuses to score an image with nothing in it (constant or
nearly so after preprocessing), whose score would mean nothing. Both return a reason a
radiologist reads, or None; both are pure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

#: A unit image (values in [0, 1]) whose standard deviation is below this has no content.
MIN_CONTENT_STD = 0.01
#: Stored values spanning fewer grey levels than this (the whole image) have no content.
MIN_GREY_LEVELS = 4


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """The largest image the worker decodes: pixels of one frame and number of frames."""

    max_pixels: int = 50_000_000
    max_frames: int = 4

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {self.max_pixels}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}")


def _count(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """A non-negative integer attribute, or None when it is missing or not an integer."""
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            return default
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number >= 0 else None


def header_skip_reason(ds: Dataset, limits: ImageLimits) -> str | None:
    """Why the header rules out decoding this image, or None (PS3.3 C.7.6.3 Image Pixel).

    Checked: Rows and Columns (their product against ``max_pixels``), Number of Frames
    (against ``max_frames``; decoding reads every frame), Samples per Pixel, Bits Allocated
    and Bits Stored, and for native (uncompressed) data that Pixel Data holds what they declare.
    """
    rows, columns = _count(ds, "Rows"), _count(ds, "Columns")
    if not rows or not columns:
        return "Rows or Columns missing or zero"
    frames = _count(ds, "NumberOfFrames", 1)
    if frames is None or frames < 1:
        return "Number of Frames is not a positive integer"
    if rows * columns > limits.max_pixels:
        return (
            f"image of {rows} x {columns} pixels is over the limit of "
            f"{limits.max_pixels / 1e6:g} megapixels"
        )
    if frames > limits.max_frames:
        return f"{frames} frames, over the limit of {limits.max_frames}"
    samples = _count(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        return f"Samples per Pixel {ds.get('SamplesPerPixel')!s:.16} is not 1 or 3"
    allocated = _count(ds, "BitsAllocated")
    if allocated not in (1, 8, 16):
        return f"Bits Allocated {ds.get('BitsAllocated')!s:.16} is not 1, 8 or 16"
    stored = _count(ds, "BitsStored", allocated)
    if stored is None or not 1 <= stored <= allocated:
        return f"Bits Stored {ds.get('BitsStored')!s:.16} is not within Bits Allocated"
    if "PixelData" not in ds:
        return "no Pixel Data"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not syntax.is_compressed:
        expected = rows * columns * frames * samples * allocated // 8
        length = len(ds.PixelData)
        if length < expected:
            return f"Pixel Data holds {length} bytes, Rows x Columns x frames needs {expected}"
    return None


def content_skip_reason(
    pixels: np.ndarray | None, unit: np.ndarray, *, std: float | None = None
) -> str | None:
    """Why an image has nothing to score, or None.

    Parameters
    ----------
    pixels
        The decoded stored values (any shape), or None when only the preprocessed image is at
        hand.
    unit
        The preprocessed gray image in [0, 1] (before standardisation).
    std
        The standard deviation of the image before padding, when known (it is what counts:
        the black padding of a non-square image is not content).
    """
    if pixels is not None:
        values = np.asarray(pixels)
        if values.size == 0:
            return "image has no pixels"
        spread = float(np.max(values)) - float(np.min(values))
        if not np.isfinite(spread):
            return "image has values that are not finite"
        if spread < MIN_GREY_LEVELS:
            return "image has no content (constant or nearly constant)"
    if std is None:
        std = float(np.std(np.asarray(unit, dtype=np.float32)))
    if not np.isfinite(std) or std < MIN_CONTENT_STD:
        return "image has no content after preprocessing (constant or nearly constant)"
    return None
