"""Pixels to model input: the one preprocessing that training, serving and ``predict`` share.

:func:`prepare` is the entry point: a DICOM dataset, a DICOM/JPEG/PNG file or a gray array in,
a :class:`Prepared` out (the model input, the [0, 1] image before standardisation, its
statistics and the stage timestamps). It composes small pure functions:

1. decode (``ds.pixel_array``, first frame; a JPEG/PNG as luminance);
2. source-specific steps to presentation values: a Modality LUT Sequence or Rescale
   Slope/Intercept (PS3.3 C.11.1.1.2), then a VOI LUT Sequence or the VOI window (PS3.3
   C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID) at full resolution, then MONOCHROME1 inverted so
   that bone and consolidation are bright; a JPEG/PNG is already presentation values;
3. resize to fit the model's input keeping the whole field of view (antialiased bilinear);
4. the same final intensity normalisation for every source: the 0.5th-99.5th percentile range
   to [0, 1], so a DICOM and the 8-bit JPEG rendered from it by its own window give the same
   input up to quantisation;
5. centred on a black square canvas of the input size;
6. three channels standardised with the ImageNet mean and standard deviation.

:data:`PREPROCESSING_VERSION` names this recipe; :func:`preprocessing_record` is what a model
carries (TorchScript extra file, registry row) and :func:`check_preprocessing` refuses a model
made with another recipe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from scipy.special import expit

from governance.errors import ModelIntegrityError

logger = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN = np.array(MEAN, dtype=np.float32)
IMAGENET_STD = np.array(STD, dtype=np.float32)
PERCENTILES = (0.5, 99.5)
# Version 2: one final normalisation (the percentile range) for every source, VOI window at
# full resolution. Version 1 (no record in the model file) stretched only images without one.
PREPROCESSING_VERSION = 2
PREPROCESSING_FILE = "preprocessing.json"  # the TorchScript extra file that carries the record


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


def presentation_image(
    pixels: np.ndarray,
    transform: PixelTransform,
    size: int,
    percentiles: tuple[float, float] = PERCENTILES,
) -> np.ndarray:
    """Stored values to the resized [0, 1] image before padding (steps 2-4 above).

    Rescale is linear, so without a window it runs on the resized image (cheaper); a window
    is not, so it runs at full resolution, exactly as a viewer renders a JPEG from the file.
    """
    if transform.window is None:
        values = apply_rescale(resize_to_fit(pixels, size), transform.slope, transform.intercept)
        if transform.invert:
            values = -values  # the percentile range below is invariant to the offset
    else:
        values = apply_rescale(pixels, transform.slope, transform.intercept)
        values = apply_window(
            values, transform.window[0], transform.window[1], transform.voi_function
        )
        if transform.invert:
            values = invert(values)
        values = resize_to_fit(values, size)
    return scale_to_unit(values, percentiles)


def to_unit_image(pixels: np.ndarray, transform: PixelTransform, size: int) -> np.ndarray:
    """Stored values to a ``size`` x ``size`` gray image in [0, 1] (steps 2-5 above)."""
    return pad_to_square(presentation_image(pixels, transform, size), size)


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


@dataclass(frozen=True, slots=True)
class ImageStats:
    """Statistics of the resized [0, 1] image before padding and standardisation."""

    mean: float
    std: float
    fraction_at_0: float
    fraction_at_1: float

    @classmethod
    def of(cls, unit: np.ndarray) -> ImageStats:
        x = np.asarray(unit, dtype=np.float32)
        if x.size == 0:
            raise ValueError("an empty image has no statistics")
        return cls(
            float(x.mean()),
            float(x.std()),
            float(np.mean(x <= 0.0)),
            float(np.mean(x >= 1.0)),
        )


@dataclass(frozen=True, slots=True)
class Prepared:
    """What :func:`prepare` returns: the model input, the image before standardisation, its
    statistics and when each stage ended (UTC)."""

    input: np.ndarray  # (3, size, size) float32, ImageNet-standardised
    unit: np.ndarray  # (size, size) float32 in [0, 1], padded
    stats: ImageStats
    started_at: dt.datetime
    decoded_at: dt.datetime
    preprocessed_at: dt.datetime

    @property
    def decode_seconds(self) -> float:
        return (self.decoded_at - self.started_at).total_seconds()

    @property
    def preprocess_seconds(self) -> float:
        return (self.preprocessed_at - self.decoded_at).total_seconds()


Source = Dataset | str | Path | np.ndarray

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def is_image_file(path: str | Path) -> bool:
    """Whether a file starts as a JPEG or PNG (and not as DICOM Part 10)."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    return head[128:132] != b"DICM" and head.startswith(_IMAGE_MAGIC)


def read_image(path: str | Path) -> np.ndarray:
    """A JPEG/PNG as a 2-D array: colour becomes luminance (ITU-R BT.601), 16-bit PNGs keep
    their values.

    Raises
    ------
    ValueError
        The file cannot be read as an image or exceeds Pillow's decompression-bomb limit.
    """
    try:
        with Image.open(path) as image:
            if image.mode in {"L", "I;16", "I", "F"}:
                return np.asarray(image)
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def read_source(source: Source) -> tuple[np.ndarray, PixelTransform]:
    """Decoded pixels and the transform to presentation values, for any source.

    A path is read as JPEG/PNG when it starts like one, else as DICOM.

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    ValueError
        The file or dataset cannot be read, decoded or interpreted.
    """
    if isinstance(source, np.ndarray):
        return source, PixelTransform()
    if isinstance(source, Dataset):
        ds = source
    elif is_image_file(source):
        return read_image(source), PixelTransform()
    else:
        try:
            ds = pydicom.dcmread(source)
        except FileNotFoundError:
            raise
        except Exception as exc:  # pydicom raises many types; one clear error for the caller
            raise ValueError(f"cannot read DICOM file {source}: {type(exc).__name__}") from None
    transform = pixel_transform(ds)
    return decode(ds), transform


def prepare(source: Source, size: int) -> Prepared:
    """The one preprocessing entry point: a DICOM dataset or file, a JPEG/PNG file or a gray
    array to the model's input, with its statistics and stage timestamps.

    Raises
    ------
    FileNotFoundError
        ``source`` is a path that does not exist.
    ValueError
        ``size`` is not positive, or the pixels cannot be read, decoded or interpreted.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    started = dt.datetime.now(dt.UTC)
    pixels, transform = read_source(source)
    decoded = dt.datetime.now(dt.UTC)
    image = presentation_image(pixels, transform, size)
    unit = pad_to_square(image, size)
    return Prepared(
        standardize(unit), unit, ImageStats.of(image), started, decoded, dt.datetime.now(dt.UTC)
    )


def preprocess(source: Source, size: int) -> np.ndarray:
    """``prepare(source, size).input``: the model's (3, size, size) float32 input."""
    return prepare(source, size).input


def code_sha256() -> str:
    """SHA-256 of this module's source: provenance of the preprocessing a model was made with."""
    return hashlib.sha256(inspect.getsource(sys.modules[__name__]).encode()).hexdigest()


def preprocessing_record(input_size: int) -> dict[str, Any]:
    """The preprocessing a model carries: version, parameters and this code's hash."""
    return {
        "version": PREPROCESSING_VERSION,
        "input_size": int(input_size),
        "percentiles": list(PERCENTILES),
        "mean": list(MEAN),
        "std": list(STD),
        "letterbox": "centred on a black square",
        "resize": "bilinear, antialiased (reducing_gap 3), longer side to input_size",
        "window": "VOI window at full resolution, then the percentile range for every source",
        "code_sha256": code_sha256(),
    }


def check_preprocessing(recorded: Mapping[str, Any] | None, input_size: int) -> None:
    """Refuse a model whose recorded preprocessing this code does not implement.

    ``code_sha256`` is provenance only: the version and parameters decide.

    Raises
    ------
    ModelIntegrityError
        One line naming the first difference (or the missing record).
    """
    if not recorded:
        raise ModelIntegrityError(
            "the model carries no preprocessing record (made before preprocessing version "
            f"{PREPROCESSING_VERSION}); retrain or re-export it with this code"
        )
    expected = preprocessing_record(input_size)
    for key, value in expected.items():
        if key == "code_sha256":
            continue
        if recorded.get(key) != value:
            raise ModelIntegrityError(
                f"the model's preprocessing differs from this code's: {key} is "
                f"{recorded.get(key)!r} in the model, {value!r} here; retrain or use a "
                "matching release"
            )


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
