"""A synthetic dataset in the layout of the Kaggle "Chest X-Ray Images (Pneumonia)" archive.

``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` with the archive's file naming and
its quirks, so the training pipeline's tests read exactly what an engineer downloads.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from training.synthetic.phantom import chest_radiograph, frontal_shape, sample_anatomy

logger = logging.getLogger(__name__)

KAGGLE_CLASSES = ("NORMAL", "PNEUMONIA")


def write_kaggle_layout(
    out_dir: str | Path,
    n_per_class: int | Mapping[str, tuple[int, int]] = 8,
    *,
    size: int = 128,
    seed: int = 0,
    quirks: bool = True,
) -> Path:
    """Write ``out_dir/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` like Kaggle's.

    File names follow the archive: ``IM-0115-0001.jpeg`` and ``NORMAL2-IM-1427-0001.jpeg`` for
    normal images, ``person12_bacteria_45.jpeg`` / ``person12_virus_46.jpeg`` for pneumonia;
    a patient has one to three images, all in one split. With ``quirks`` the archive's
    oddities are reproduced: ``.DS_Store`` files, a ``__MACOSX`` folder, a nested copy
    ``chest_xray/chest_xray/...``, one exact duplicate under another name and one RGB JPEG.

    Parameters
    ----------
    n_per_class
        Images per class in every split, or ``{split: (n_normal, n_pneumonia)}``.

    Returns
    -------
    Path
        The ``chest_xray`` folder.

    Raises
    ------
    ValueError
        A count is negative, a split name is unknown, or ``size`` is below 32.
    """
    counts = (
        {s: (n_per_class, n_per_class) for s in ("train", "val", "test")}
        if isinstance(n_per_class, int)
        else dict(n_per_class)
    )
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    for split, pair in counts.items():
        if split not in {"train", "val", "test"} or min(pair) < 0:
            raise ValueError(f"n_per_class has a bad entry {split!r}: {pair}")
    root = Path(out_dir) / "chest_xray"
    rng = np.random.default_rng(seed)
    patient = 0
    written: list[Path] = []
    for split, pair in counts.items():
        for label, (klass, count) in enumerate(zip(KAGGLE_CLASSES, pair, strict=True)):
            folder = root / split / klass
            folder.mkdir(parents=True, exist_ok=True)
            done = 0
            while done < count:
                patient += 1
                images = min(count - done, int(rng.integers(1, 4)))
                anatomy = sample_anatomy(rng)
                kind = "bacteria" if rng.random() < 0.65 else "virus"
                normal2 = rng.random() < 0.5
                for k in range(images):
                    name = _kaggle_name(label, patient, k, kind=kind, normal2=normal2)
                    image = chest_radiograph(
                        rng,
                        frontal_shape(rng, size),
                        positive=bool(label),
                        view="PA",
                        anatomy=anatomy,
                    )
                    pixels = (image * 255.0 + 0.5).astype(np.uint8)
                    Image.fromarray(pixels, mode="L").save(folder / name, quality=95)
                    written.append(folder / name)
                done += images
    if quirks and written:
        _add_quirks(root, written, rng)
    logger.info("wrote a Kaggle-layout dataset of %d images to %s", len(written), root)
    return root


def _kaggle_name(label: int, patient: int, k: int, *, kind: str, normal2: bool) -> str:
    if label:
        return f"person{patient}_{kind}_{patient * 3 + k}.jpeg"
    if normal2:
        return f"NORMAL2-IM-{patient:04d}-{k + 1:04d}.jpeg"
    return f"IM-{patient:04d}-{k + 1:04d}.jpeg"


def _add_quirks(root: Path, written: list[Path], rng: np.random.Generator) -> None:
    for folder in {p.parent for p in written}:
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    first = written[0]
    duplicate = first.with_name(first.stem + "-copy" + first.suffix)
    shutil.copyfile(first, duplicate)  # same bytes: an exact duplicate under another name
    rgb = written[len(written) // 2]
    Image.open(rgb).convert("RGB").save(rgb, quality=95)  # a few of Kaggle's JPEGs are RGB
    nested = root / "chest_xray" / first.parent.relative_to(root)
    nested.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(first, nested / first.name)
    macosx = root / "__MACOSX" / first.parent.relative_to(root)
    macosx.mkdir(parents=True, exist_ok=True)
    (macosx / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
