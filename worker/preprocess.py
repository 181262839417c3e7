"""DICOM pixels to model input: the one preprocessing that training and serving share.

A model scores a DICOM file in production exactly as it was evaluated because both sides call
:func:`preprocess` (DICOM) or :func:`preprocess_image` (a JPEG/PNG array), which compose the
same small pure functions:

1. decode the stored values (``ds.pixel_array``; first frame of a multi-frame image);
2. a Modality LUT Sequence or VOI LUT Sequence, where present, on the full-resolution values
   (they are look-up tables indexed by stored value);
3. resize to fit the model's input keeping the whole field of view (aspect ratio kept; the
   linear steps below commute with resizing, and doing them on the small image is cheaper);
4. Rescale Slope/Intercept (PS3.3 C.11.1.1.2);
5. the VOI window (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID) to [0, 1], or without one,
   the 0.5th-99.5th percentile range to [0, 1];
6. MONOCHROME1 inverted so that bone and consolidation are bright;
7. centred on a black square canvas of the input size;
8. three channels standardised with the ImageNet mean and standard deviation.

Every function takes and returns arrays, checks its arguments and does no I/O, so the same
pixels in any photometric interpretation, bit depth, rescale or transfer syntax give the same
input (up to quantisation).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from scipy.special import expit

logger = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True, slots=True)
class PixelTransform:
    """The header attributes that turn stored values into presentation values.

    ``window`` is (center, width) in rescaled units; None means the percentile range.
    """

    slope: float = 1.0
    intercept: float = 0.0
    window: tuple[float, float] | None = None
    voi_function: str = "LINEAR"
    invert: bool = False


def apply_rescale(values: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Modality rescale, ``slope * values + intercept`` (PS3.3 C.11.1.1.2), as float32.

    Raises
    ------
    ValueError
        ``slope`` is zero or not finite, or ``intercept`` is not finite.
    """
    if not math.isfinite(slope) or slope == 0:
        raise ValueError(f"slope must be finite and non-zero, got {slope}")
    if not math.isfinite(intercept):
        raise ValueError(f"intercept must be finite, got {intercept}")
    out = np.asarray(values, dtype=np.float32)
    if slope == 1.0 and intercept == 0.0:
        return out
    return out * np.float32(slope) + np.float32(intercept)


def apply_window(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """The VOI window to [0, 1] (PS3.3 C.11.2.1.2.1 LINEAR, C.11.2.1.3.2 LINEAR_EXACT,
    C.11.2.1.3.1 SIGMOID), with output range 0..1 instead of ymin..ymax.

    Raises
    ------
    ValueError
        ``width`` is below 1 (LINEAR) or not positive (LINEAR_EXACT, SIGMOID), or ``function``
        is not one of LINEAR, LINEAR_EXACT, SIGMOID.
    """
    fn = (function or "LINEAR").upper()
    x = np.asarray(values, dtype=np.float32)
    if fn == "LINEAR":
        if not width >= 1:
            raise ValueError(f"width must be >= 1 for a LINEAR window, got {width}")
        out = ((x - (center - 0.5)) / (width - 1) + 0.5) if width > 1 else (x > center - 0.5)
    elif fn == "LINEAR_EXACT":
        if not width > 0:
            raise ValueError(f"width must be > 0 for a LINEAR_EXACT window, got {width}")
        out = (x - center) / width + 0.5
    elif fn == "SIGMOID":
        if not width > 0:
            raise ValueError(f"width must be > 0 for a SIGMOID window, got {width}")
        return expit(4.0 * (x - center) / width).astype(np.float32)
    else:
        raise ValueError(f"function must be LINEAR, LINEAR_EXACT or SIGMOID, got {function!r}")
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def scale_to_unit(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Map the ``percentiles`` range of ``values`` to [0, 1], clipping outside (no window given).

    A constant image maps to zeros.

    Raises
    ------
    ValueError
        ``percentiles`` is not an increasing pair within [0, 100].
    """
    low_q, high_q = percentiles
    if not 0.0 <= low_q < high_q <= 100.0:
        raise ValueError(f"percentiles must be increasing within [0, 100], got {percentiles}")
    x = np.asarray(values, dtype=np.float32)
    low, high = np.percentile(x, [low_q, high_q])
    if not high > low:
        return np.zeros_like(x, dtype=np.float32)
    return np.clip((x - low) / (high - low), 0.0, 1.0).astype(np.float32)


def invert(unit: np.ndarray) -> np.ndarray:
    """MONOCHROME1 to MONOCHROME2 on values in [0, 1]."""
    return (np.float32(1.0) - np.asarray(unit, dtype=np.float32)).astype(np.float32)


def fit_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) that fits ``size`` on the longer side keeping the aspect ratio.

    Raises
    ------
    ValueError
        Any argument is not positive.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image shape must be positive, got {(height, width)}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_to_fit(values: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D array so its longer side is ``size`` (antialiased bilinear), as float32.

    Raises
    ------
    ValueError
        ``values`` is not 2-D, or ``size`` is not positive.
    """
    x = np.asarray(values)
    if x.ndim != 2:
        raise ValueError(f"values must be a 2-D image, got shape {x.shape}")
    height, width = fit_size(x.shape[0], x.shape[1], size)
    if (height, width) == x.shape:
        return x.astype(np.float32, copy=False)
    image = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32), mode="F")
    # reducing_gap: a box reduction first, then bilinear; far faster on 2048^2 and still
    # antialiased.
    resized = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.float32)


def pad_to_square(unit: np.ndarray, size: int) -> np.ndarray:
    """Centre a 2-D image no larger than ``size`` on a black ``size`` x ``size`` canvas.

    Raises
    ------
    ValueError
        ``unit`` is not 2-D or is larger than ``size`` on either side.
    """
    x = np.asarray(unit, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"unit must be a 2-D image, got shape {x.shape}")
    height, width = x.shape
    if height > size or width > size:
        raise ValueError(f"image {x.shape} does not fit a {size}x{size} canvas")
    if height == size and width == size:
        return x
    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top : top + height, left : left + width] = x
    return canvas


def standardize(unit: np.ndarray) -> np.ndarray:
    """A [0, 1] gray image (H, W) to the network's (3, H, W) input: ImageNet mean and std.

    Raises
    ------
    ValueError
        ``unit`` is not 2-D.
    """
    x = np.asarray(unit, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"unit must be a 2-D image, got shape {x.shape}")
    return (x[None, :, :] - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def to_unit_image(pixels: np.ndarray, transform: PixelTransform, size: int) -> np.ndarray:
    """Stored values to a ``size`` x ``size`` gray image in [0, 1] (steps 3-7 above)."""
    small = resize_to_fit(pixels, size)
    values = apply_rescale(small, transform.slope, transform.intercept)
    if transform.window is not None:
        unit = apply_window(
            values, transform.window[0], transform.window[1], transform.voi_function
        )
    else:
        unit = scale_to_unit(values)
    if transform.invert:
        unit = invert(unit)
    return pad_to_square(unit, size)


def pixel_transform(ds: Dataset) -> PixelTransform:
    """Read the rescale, window and photometric interpretation from a dataset's header.

    Raises
    ------
    ValueError
        The photometric interpretation is one we cannot turn into a gray image.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in {
        "MONOCHROME1",
        "MONOCHROME2",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_ICT",
        "YBR_RCT",
        "PALETTE COLOR",
    }:
        raise ValueError(f"photometric interpretation {photometric!r} is not supported")
    if not photometric.startswith("MONOCHROME"):
        return PixelTransform()  # colour: decode() gives luminance; no rescale or window
    # A zero or missing slope is taken as 1 (a zero slope would erase the image).
    slope = _first_float(ds.get("RescaleSlope")) or 1.0
    intercept = _first_float(ds.get("RescaleIntercept")) or 0.0
    if "ModalityLUTSequence" in ds:
        slope, intercept = 1.0, 0.0  # applied as a table by preprocess()
    window = None
    if "VOILUTSequence" not in ds:
        center = _first_float(ds.get("WindowCenter"))
        width = _first_float(ds.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            window = (center, width)
    return PixelTransform(
        slope=slope,
        intercept=intercept,
        window=window,
        voi_function=str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper(),
        invert=photometric == "MONOCHROME1",
    )


def decode(ds: Dataset) -> np.ndarray:
    """The stored values of the first frame as a 2-D array, with LUT sequences applied.

    Colour images become luminance (ITU-R BT.601). Raises ValueError for what cannot be
    decoded, naming the transfer syntax but no patient attribute.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; one clear error for the caller
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ValueError(f"cannot decode pixel data (transfer syntax {syntax}): {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if samples == 3 or pixels.ndim == 3:
        rgb = pixels.astype(np.float32)
        return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if "ModalityLUTSequence" in ds:
        pixels = apply_modality_lut(pixels, ds)
    if "VOILUTSequence" in ds:
        pixels = apply_voi_lut(pixels, ds, index=0)
    return pixels


def preprocess(ds: Dataset, size: int) -> np.ndarray:
    """A DICOM dataset to the model's (3, size, size) float32 input.

    Raises
    ------
    ValueError
        ``size`` is not positive, or the pixel data cannot be decoded or interpreted.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    transform = pixel_transform(ds)
    pixels = decode(ds)
    return standardize(to_unit_image(pixels, transform, size))


def preprocess_image(gray: np.ndarray, size: int) -> np.ndarray:
    """A gray image from a JPEG or PNG (H, W) to the model's (3, size, size) input.

    Such an image carries no window, so it takes the percentile range, exactly as a DICOM
    image without one does.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return standardize(to_unit_image(np.asarray(gray), PixelTransform(), size))


def _first_float(value: object) -> float | None:
    """The first value of a possibly multi-valued DS/IS attribute, or None."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
