"""Pixel decoding at model speed: compressed images decoded only as finely as the model needs.

The model sees a ``size`` x ``size`` input; a 2048 x 2048 JPEG 2000 image decoded in full costs
about a second on one core, most of it in the finest wavelet levels that the resize to ``size``
then throws away. JPEG 2000 stores the image as a pyramid, so OpenJPEG can stop at a coarser
resolution level (its *reduce* factor): each level halves both sides and cuts the work about
fourfold. :func:`decode_for_model` picks the coarsest level whose longer side still covers
``margin * size`` pixels (the resize then still antialiases from more pixels than it outputs)
and falls back to the full decode (``worker.preprocess.decode``) whenever the fast path does not
apply or fails: other transfer syntaxes, colour or multi-component images, a sign that differs
from the header, or glymur / libopenjp2 not installed. Lossless JPEG and JPEG-LS are decoded in
full but through imagecodecs (bit-identical to pydicom's plugins and several times faster)
where it is installed.

Where CUDA is present and NVIDIA's nvImageCodec is installed (the ``gpu`` extra), JPEG 2000 is
decoded in full on the GPU instead (nvJPEG2000), at a fraction of a CPU core: lossless
codestreams give exactly the full decode's stored values; lossy ones may round differently
(``benchmarks/gpu_decode.py`` prints the pixel and probability differences). Any failure there
falls back to the CPU paths above.

Which path decoded an image is returned as a short label (``full``, ``j2k-r2``,
``j2k-nvimgcodec``, ``ljpeg-ic``, ``jpegls-ic``), recorded with each image's inference so a
score can be traced to how its pixels were read.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from worker.preprocess import decode, fit_size

logger = logging.getLogger(__name__)

FULL = "full"
NVIMGCODEC = "j2k-nvimgcodec"
J2K_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)
# Lossless JPEG (process 14) and JPEG-LS: imagecodecs decodes them bit-identically to pydicom's
# plugins, several times faster (benchmarks/decode_throughput.py).
LJPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"})
JPEGLS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
# What the GPU path decodes: JPEG 2000 and HTJ2K (nvJPEG2000). nvJPEG also decodes lossless JPEG
# (first-order prediction), but that path has not been checked bit for bit on a GPU yet
# (benchmarks/gpu_decode.py does it), and imagecodecs already decodes it fast on the CPU.
NVIMGCODEC_SYNTAXES = J2K_SYNTAXES
# The reduced image's longer side is at least MARGIN * size: the resize to the model input
# then still reduces (antialiased), and the score stays within 2e-3 of a full decode on the
# encoding corpus (tests/worker/test_decoders.py).
DEFAULT_MARGIN = 1.0
# Bounds the codestream handed to OpenJPEG (a peer controls it).
MAX_CODESTREAM_BYTES = 512 * 1024 * 1024
_SHM = "/dev/shm"


@dataclass(frozen=True, slots=True)
class Decoded:
    """Stored values of the first frame (LUT sequences applied) and how they were decoded.

    A reduced decode is already resized to fit the model input (float32); the full decode is
    at the image's own size.
    """

    pixels: np.ndarray
    path: str


def reduce_factor(rows: int, columns: int, size: int, levels: int, margin: float = 1.0) -> int:
    """The largest reduce factor r <= ``levels`` whose image still covers ``margin * size``.

    A reduce factor r gives ``ceil(rows / 2**r)`` x ``ceil(columns / 2**r)`` pixels.

    Raises
    ------
    ValueError
        An argument is not positive (``levels`` may be 0).
    """
    if rows <= 0 or columns <= 0 or size <= 0 or margin <= 0 or levels < 0:
        raise ValueError(f"invalid arguments {(rows, columns, size, levels, margin)}")
    longer = max(rows, columns)
    target = margin * size
    r = 0
    while r < levels and math.ceil(longer / 2 ** (r + 1)) >= target:
        r += 1
    return r


def glymur_available() -> bool:
    """Whether glymur and a libopenjp2 it can load are installed."""
    try:
        import glymur
    except ImportError:
        return False
    return bool(getattr(glymur.version, "openjpeg_version", ""))


def imagecodecs_available() -> bool:
    """Whether imagecodecs (with its lossless JPEG and JPEG-LS codecs) is installed."""
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.LJPEG.available and imagecodecs.JPEGLS.available)


def _import_nvimgcodec() -> Any | None:
    """The ``nvidia.nvimgcodec`` module, or None where it is not installed or does not load."""
    try:
        from nvidia import nvimgcodec
    except Exception:  # ImportError, or a wheel whose CUDA libraries do not load
        return None
    return nvimgcodec


@functools.cache
def gpu_decoder() -> Any | None:
    """An nvImageCodec decoder on the current CUDA device, or None without CUDA or nvImageCodec.

    Created once per process, on first use (after the worker's fork): never on a machine
    without a CUDA device, where the CPU paths decode.
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None  # nvImageCodec not even imported: its import logs about missing codecs
    nvimgcodec = _import_nvimgcodec()
    if nvimgcodec is None:
        return None
    try:
        return nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY)])
    except Exception as exc:  # a driver or library problem: the CPU paths still decode
        logger.warning("nvImageCodec decoder unavailable (%s); decoding on the CPU", exc)
        return None


# One decoder object per process, shared by the prefetch threads: one decode at a time on it.
_GPU_LOCK = threading.Lock()


def _plain_monochrome(ds: Dataset) -> bool:
    """One unsigned gray sample per pixel and no LUT sequences: what the fast paths handle."""
    return (
        int(ds.get("SamplesPerPixel", 1) or 1) == 1
        and str(ds.get("PhotometricInterpretation", "")).upper().startswith("MONOCHROME")
        and "ModalityLUTSequence" not in ds
        and "VOILUTSequence" not in ds
    )


def _fast_imagecodecs(ds: Dataset, syntax: str) -> Decoded | None:
    """Lossless JPEG or JPEG-LS through imagecodecs, or None where it does not apply."""
    if not _plain_monochrome(ds) or int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return None
    if not imagecodecs_available():
        return None
    import imagecodecs

    codestream = _first_frame(ds)
    if len(codestream) > MAX_CODESTREAM_BYTES:
        return None
    if syntax in LJPEG_SYNTAXES:
        pixels, path = imagecodecs.ljpeg_decode(codestream), "ljpeg-ic"
    else:
        pixels, path = imagecodecs.jpegls_decode(codestream), "jpegls-ic"
    rows, columns = int(ds.Rows), int(ds.Columns)
    if pixels.shape != (rows, columns):
        return None
    return Decoded(np.asarray(pixels), path)


def _fast_nvimgcodec(ds: Dataset, decoder: Any) -> Decoded | None:
    """JPEG 2000 decoded in full by nvImageCodec, or None where it does not apply or fails.

    Returns the stored values as ``worker.preprocess.decode`` does for the same file (same
    shape and dtype); only unsigned gray images whose codestream matches the header (size,
    one component, precision = Bits Stored) take this path, the rest go to the CPU paths.
    """
    if not _plain_monochrome(ds) or int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return None
    nvimgcodec = _import_nvimgcodec()
    if nvimgcodec is None:
        return None
    codestream = _first_frame(ds)
    if len(codestream) > MAX_CODESTREAM_BYTES:
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    bits_allocated = int(ds.BitsAllocated)
    code = nvimgcodec.CodeStream(codestream)
    if (
        int(code.num_channels) != 1
        or (int(code.height), int(code.width)) != (rows, columns)
        or int(code.precision) != int(ds.get("BitsStored", bits_allocated) or bits_allocated)
    ):
        return None  # header and codestream disagree: pydicom's corrections decide
    params = nvimgcodec.DecodeParams(
        color_spec=nvimgcodec.ColorSpec.UNCHANGED, allow_any_depth=True
    )
    with _GPU_LOCK:
        image = decoder.decode(code, params=params)
        if image is None:  # nvImageCodec's answer to any failure on this image
            return None
        pixels = np.asarray(image.cpu())
    expected = np.dtype(f"u{max(bits_allocated // 8, 1)}")  # pydicom's for unsigned data
    if (
        pixels.size != rows * columns
        or pixels.dtype.kind != "u"
        or pixels.dtype.itemsize > expected.itemsize
    ):
        return None
    return Decoded(pixels.reshape(rows, columns).astype(expected, copy=False), NVIMGCODEC)


def _first_frame(ds: Dataset) -> bytes:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    for frame in generate_frames(ds.PixelData, number_of_frames=frames):
        return frame
    raise ValueError("no frame in the encapsulated pixel data")


def _fast_j2k(ds: Dataset, size: int, margin: float) -> Decoded | None:
    """The reduced-resolution decode, or None where it does not apply."""
    if not _plain_monochrome(ds):
        return None  # LUT tables are indexed by stored value: only the full decode applies them
    if not glymur_available():
        return None
    import glymur

    codestream = _first_frame(ds)
    if len(codestream) > MAX_CODESTREAM_BYTES:
        return None
    folder = _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=".j2k", dir=folder) as handle:
        handle.write(codestream)
        handle.flush()
        image = glymur.Jp2k(handle.name)
        markers = {segment.marker_id: segment for segment in image.codestream.segment}
        siz, cod = markers.get("SIZ"), markers.get("COD")
        if siz is None or cod is None:
            return None
        if len(getattr(siz, "bitdepth", ())) != 1:
            return None
        signed = bool(siz.signed[0])
        if signed != (int(ds.get("PixelRepresentation", 0) or 0) == 1):
            return None  # header and codestream disagree: let pydicom's corrections decide
        levels = int(cod.num_res)  # wavelet decomposition levels in the codestream
        rows, columns = int(siz.ysiz - siz.yosiz), int(siz.xsiz - siz.xosiz)
        r = reduce_factor(rows, columns, size, levels, margin)
        step = 2**r
        pixels = np.asarray(image[::step, ::step])
    if pixels.ndim != 2:
        return None
    return Decoded(resize_reduced(pixels, r, rows, columns, size), f"j2k-r{r}")


def resize_reduced(pixels: np.ndarray, r: int, rows: int, columns: int, size: int) -> np.ndarray:
    """A reduce-factor-``r`` image resized to fit ``size``, aligned with the full image's resize.

    Sample k of level r is the wavelet low-pass centred on full-resolution pixel ``2**r * k``,
    not on the middle of its ``2**r`` block as a box reduction would be: the image is shifted by
    ``0.5 - 2**-(r + 1)`` reduced pixels. The resize reads its source box shifted back by that
    much (edge row and column repeated), so the result lines up with ``resize_to_fit`` of the
    full decode (``worker.preprocess``) to a fraction of a pixel.
    """
    height, width = fit_size(rows, columns, size)
    shift = 0.5 - 2.0 ** -(r + 1)
    padded = np.pad(np.asarray(pixels, dtype=np.float32), ((0, 1), (0, 1)), mode="edge")
    box = (shift, shift, shift + columns / 2**r, shift + rows / 2**r)
    box = (
        box[0],
        box[1],
        min(box[2], float(padded.shape[1])),
        min(box[3], float(padded.shape[0])),
    )
    image = Image.fromarray(np.ascontiguousarray(padded), mode="F")
    resized = image.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.float32)


def decode_for_model(ds: Dataset, size: int, *, margin: float = DEFAULT_MARGIN) -> Decoded:
    """Decode the first frame at the coarsest resolution that still covers a ``size`` input.

    JPEG 2000 goes to the GPU (:func:`gpu_decoder`) where there is one, else to the reduced
    decode; the result feeds ``worker.preprocess.to_unit_image`` exactly as ``decode(ds)`` does
    (whose resize leaves an already fitted image as it is).

    Raises
    ------
    ValueError
        The pixel data cannot be decoded (from the full decode; fast-path failures fall back).
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    fast: Decoded | None = None
    if "PixelData" in ds and syntax in NVIMGCODEC_SYNTAXES:
        decoder = gpu_decoder()
        if decoder is not None:
            try:
                fast = _fast_nvimgcodec(ds, decoder)
            except Exception as exc:  # the GPU path is optional: the CPU paths decode
                logger.info("GPU decode failed (%s); decoding on the CPU", type(exc).__name__)
    cpu_syntaxes = J2K_SYNTAXES | LJPEG_SYNTAXES | JPEGLS_SYNTAXES
    if fast is None and "PixelData" in ds and syntax in cpu_syntaxes:
        try:
            if syntax in J2K_SYNTAXES:
                fast = _fast_j2k(ds, size, margin)
            else:
                fast = _fast_imagecodecs(ds, syntax)
        except Exception as exc:  # any decoder failure: the full decode is the reference
            logger.info("fast decode failed (%s); decoding in full", type(exc).__name__)
            fast = None
    if fast is not None:
        return fast
    return Decoded(decode(ds), FULL)


def describe_syntax(ds: Dataset) -> str:
    """The transfer syntax's name, for benchmarks and logs (no patient attribute)."""
    uid: Any = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return UID(str(uid)).name if uid else "unknown"
