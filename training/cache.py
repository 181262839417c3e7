"""Decode every image once into a memory-mapped uint8 array of serving's [0, 1] images.

Each row is ``worker.preprocess.prepare(file, size).unit`` (serving's one entry point, before
the final standardisation) quantised to uint8 (:func:`quantize`): one channel of one byte per
pixel, a twelfth of the 3-channel float32 input, so that a loader feeds a GPU and the whole
Kaggle set fits in memory. ``standardize(row / 255)`` is serving's input for that file within
half a grey level (:class:`training.presets.EvalBatchPreset` computes it on the device). The
cache's name hashes :data:`CACHE_FORMAT`, the files' SHA-256, the input size and the
preprocessing source code: a change of any of them builds a new cache, and a cache of another
format (the float32 one before) is never reused.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

import worker.preprocess
from governance.errors import ConfigError
from training.data import ImageRecord
from worker.preprocess import prepare

logger = logging.getLogger(__name__)

_CHUNK = 32
CACHE_FORMAT = "unit-uint8-v2"  # v1: float32 [0, 1] rows
CACHE_DTYPE = np.uint8


def quantize(unit: np.ndarray) -> np.ndarray:
    """[0, 1] images to uint8 grey levels, rounded to the nearest (half a level at most).

    Raises
    ------
    ValueError
        ``unit`` holds NaN.
    """
    x = np.asarray(unit, dtype=np.float32)
    if np.isnan(x).any():
        raise ValueError("unit must not hold NaN")
    return np.rint(np.clip(x, 0.0, 1.0) * np.float32(255)).astype(np.uint8)


def unit_image(kind: str, path: Path, size: int) -> np.ndarray:
    """One file (DICOM, JPEG or PNG) as serving's (size, size) [0, 1] float32 image.

    Raises
    ------
    ConfigError
        The file cannot be read or decoded (one line, no patient attribute).
    """
    try:
        return prepare(path, size).unit
    except (OSError, ValueError) as exc:
        what = "DICOM file" if kind == "dicom" else "image"
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def _decode_chunk(items: list[tuple[str, str]], size: int) -> list[np.ndarray]:
    return [quantize(unit_image(kind, Path(path), size)) for kind, path in items]


def cache_key(records: Sequence[ImageRecord], size: int) -> str:
    """Hash of the cache format, the files' SHA-256 in order, the size and the
    preprocessing code."""
    digest = hashlib.sha256()
    digest.update(f"format={CACHE_FORMAT}".encode())
    digest.update(inspect.getsource(worker.preprocess).encode())
    digest.update(f"size={size}".encode())
    for record in records:
        digest.update(record.sha256.encode())
    return digest.hexdigest()[:20]


def build_cache(
    records: Sequence[ImageRecord],
    size: int,
    cache_dir: Path,
    *,
    workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """The (N, size, size) uint8 memmap of every record's quantised unit image, built if
    needed.

    The array is written under a temporary name and renamed when complete, so an
    interrupted build is never mistaken for a cache.

    Raises
    ------
    ConfigError
        An image cannot be read; or the cache folder cannot be written.
    """
    key = cache_key(records, size)
    path = cache_dir / f"units-u8-{size}px-{len(records)}-{key}.npy"
    if path.is_file():
        logger.info("using the decoded image cache %s", path)
        return np.load(path, mmap_mode="r")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the cache folder {cache_dir}: {exc.strerror}") from None
    partial = path.with_suffix(f".{os.getpid()}.partial")
    array = np.lib.format.open_memmap(
        partial, mode="w+", dtype=CACHE_DTYPE, shape=(len(records), size, size)
    )
    items = [(r.kind, str(r.path)) for r in records]
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    bar = tqdm(total=len(items), desc="decode", unit="img", disable=not progress)
    try:
        if workers > 0:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(_decode_chunk, chunks, [size] * len(chunks))
                for index, rows in enumerate(results):
                    array[index * _CHUNK : index * _CHUNK + len(rows)] = np.stack(rows)
                    bar.update(len(rows))
        else:
            for index, chunk in enumerate(chunks):
                rows = _decode_chunk(chunk, size)
                array[index * _CHUNK : index * _CHUNK + len(rows)] = np.stack(rows)
                bar.update(len(rows))
        array.flush()
    except BaseException:
        del array
        partial.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    del array
    partial.replace(path)
    logger.info("decoded %d images into %s", len(records), path)
    return np.load(path, mmap_mode="r")
