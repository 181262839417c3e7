"""Synthetic chest radiograph datasets: DICOM studies, in-memory arrays, a Kaggle-like folder.

* :func:`write_studies` writes real DICOM Part-10 studies (a frontal PA/AP view and a lateral,
  CR or DX, MONOCHROME1/2, 8-16 bits, with and without rescale and window, several transfer
  syntaxes) and a ``labels.csv``; ``cxr-triage synth`` runs it.
* :func:`synthetic_arrays` renders images and takes them through the serving path (stored
  values, header transform, :func:`worker.preprocess.to_unit_image`) for fast training.
* :func:`write_kaggle_layout` writes JPEGs in the folder layout and file naming of the Kaggle
  "Chest X-Ray Images (Pneumonia)" archive, quirks included, for the training pipeline's tests.

Pixel content is reproducible from the seed; UIDs are new on every run, as UIDs must be.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.synthetic.dicom_writer import (
    SOP_CLASSES,
    TRANSFER_SYNTAXES,
    build_dataset,
    encode,
    pixel_transform_of,
    sample_encoding,
    sample_patient,
    to_stored,
)
from training.synthetic.kaggle_layout import write_kaggle_layout
from training.synthetic.phantom import chest_radiograph, frontal_shape, sample_anatomy
from worker.preprocess import to_unit_image

logger = logging.getLogger(__name__)

LABEL_COLUMNS = (
    "study_instance_uid",
    "sop_instance_uid",
    "path",
    "label",
    "view",
    "modality",
    "photometric",
    "bits_stored",
    "sex",
    "age",
    "transfer_syntax",
)


@dataclass(frozen=True, slots=True)
class SyntheticInstance:
    """One written DICOM file and its ground truth (``path`` is absolute)."""

    study_instance_uid: str
    sop_instance_uid: str
    path: Path
    label: int
    view: str
    modality: str
    photometric: str
    bits_stored: int
    sex: str
    age: int
    transfer_syntax: str


def _check_common(n: int, name: str, size: int, positive_fraction: float) -> None:
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")


def balanced_labels(n: int, positive_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(n * positive_fraction)`` ones among ``n`` labels, in random order."""
    labels = np.zeros(n, dtype=np.int64)
    labels[: int(round(n * positive_fraction))] = 1
    return rng.permutation(labels)


def write_studies(
    out_dir: str | Path,
    n_studies: int,
    *,
    size: int = 512,
    seed: int = 0,
    positive_fraction: float = 0.5,
    lateral: bool = True,
    transfer_syntax: str = "explicit",
    modalities: Sequence[str] = ("CR", "DX"),
    progress: bool = False,
) -> list[SyntheticInstance]:
    """Write ``n_studies`` synthetic chest studies as DICOM and a ``labels.csv`` beside them.

    Each study is ``out_dir/<StudyInstanceUID>/<n>.dcm``: a frontal view (PA, or AP for about
    one in five) and, with ``lateral``, a lateral (LL) of the same patient; the study's label
    (1 = consolidation) applies to both. ``labels.csv`` holds one row per file with ``path``
    relative to ``out_dir``.

    Parameters
    ----------
    out_dir
        Folder to write into (created; existing studies are kept).
    n_studies
        Number of studies, at least 1.
    size
        Rows of each image (at least 32); portrait images are 0.85 as wide.
    seed
        Seed of the pixel content, labels and encodings.
    positive_fraction
        Fraction of positive studies (rounded to a count).
    lateral
        Also write a lateral view per study.
    transfer_syntax
        A key of :data:`training.synthetic.dicom_writer.TRANSFER_SYNTAXES`, or ``mixed`` to cycle
        through all of them.
    modalities
        Which of CR, DX, DX-PROCESSING to draw from.
    progress
        Show a progress bar on stderr.

    Raises
    ------
    ValueError
        A count, size, fraction, transfer syntax or modality is out of range.
    """
    _check_common(n_studies, "n_studies", size, positive_fraction)
    syntaxes = list(TRANSFER_SYNTAXES) if transfer_syntax == "mixed" else [transfer_syntax]
    if any(s not in TRANSFER_SYNTAXES for s in syntaxes):
        raise ValueError(
            f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)} or "
            f"mixed, got {transfer_syntax!r}"
        )
    if not modalities or any(m not in SOP_CLASSES for m in modalities):
        raise ValueError(
            f"modalities must be drawn from {', '.join(SOP_CLASSES)}, got {list(modalities)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = balanced_labels(n_studies, positive_fraction, rng)
    streams = np.random.SeedSequence(seed).spawn(n_studies)
    records: list[SyntheticInstance] = []
    counter = 0
    for index in tqdm(range(n_studies), desc="synth", unit="study", disable=not progress):
        study_rng = np.random.default_rng(streams[index])
        patient = sample_patient(study_rng, index)
        anatomy = sample_anatomy(study_rng)
        modality = modalities[int(study_rng.integers(len(modalities)))]
        views = ["AP" if study_rng.random() < 0.2 else "PA"] + (["LL"] if lateral else [])
        study_dir = out / patient.study_instance_uid
        study_dir.mkdir(exist_ok=True)
        for number, view in enumerate(views, start=1):
            shape = frontal_shape(study_rng, size) if view != "LL" else (size, size)
            image = chest_radiograph(
                study_rng, shape, positive=bool(labels[index]), view=view, anatomy=anatomy
            )
            encoding = sample_encoding(study_rng, modality)
            stored, window = to_stored(image, encoding, study_rng)
            ds = build_dataset(
                stored,
                encoding,
                window,
                patient,
                modality=modality,
                view=view,
                series_number=number,
                instance_number=1,
            )
            syntax = syntaxes[counter % len(syntaxes)]
            counter += 1
            encode(ds, syntax)
            path = study_dir / f"{number}.dcm"
            ds.save_as(path, enforce_file_format=True)
            records.append(
                SyntheticInstance(
                    study_instance_uid=patient.study_instance_uid,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    path=path.absolute(),
                    label=int(labels[index]),
                    view=view,
                    modality=str(ds.Modality),
                    photometric=encoding.photometric,
                    bits_stored=encoding.bits_stored,
                    sex=patient.sex,
                    age=patient.age_years,
                    transfer_syntax=syntax,
                )
            )
    write_labels(out / "labels.csv", records, root=out)
    logger.info("wrote %d synthetic studies (%d files) to %s", n_studies, len(records), out)
    return records


def write_labels(path: Path, records: Sequence[SyntheticInstance], *, root: Path) -> None:
    """Write ``labels.csv`` (appending rows to an existing one) with paths relative to root."""
    exists = path.is_file()
    with open(path, "a" if exists else "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
        if not exists:
            writer.writeheader()
        for record in records:
            row = asdict(record)
            row["path"] = record.path.relative_to(root.absolute()).as_posix()
            writer.writerow(row)


def read_labels(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``labels.csv`` written by :func:`write_studies`."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def render_unit_image(
    rng: np.random.Generator,
    positive: bool,
    size: int,
    render_size: int,
    modalities: Sequence[str] = ("CR", "DX"),
) -> np.ndarray:
    """One frontal image rendered at ``render_size``, stored like a detector would, and
    brought to a ``size`` x ``size`` [0, 1] image by the serving path."""
    view = "AP" if rng.random() < 0.2 else "PA"
    image = chest_radiograph(rng, frontal_shape(rng, render_size), positive=positive, view=view)
    encoding = sample_encoding(rng, modalities[int(rng.integers(len(modalities)))])
    stored, window = to_stored(image, encoding, rng)
    return to_unit_image(stored, pixel_transform_of(encoding, window), size)


def synthetic_arrays(
    n: int,
    size: int = 64,
    seed: int = 0,
    positive_fraction: float = 0.5,
    *,
    render_size: int = 256,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frontal images as the model sees them before standardisation, with labels.

    Each image is rendered at ``render_size``, encoded as a detector would store it (random
    bit depth, photometric interpretation, rescale, window) and reduced to ``size`` by
    :func:`worker.preprocess.to_unit_image` with the header's transform, exactly as serving
    reduces a DICOM file. Image ``i`` depends only on ``seed`` and ``i``.

    Returns
    -------
    images
        float32 (n, size, size) in [0, 1].
    labels
        int64 (n,), exactly ``round(n * positive_fraction)`` ones.

    Raises
    ------
    ValueError
        ``n`` is below 1, ``render_size`` below 32, or ``positive_fraction`` outside [0, 1].
    """
    _check_common(n, "n", render_size, positive_fraction)
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    labels = balanced_labels(n, positive_fraction, np.random.default_rng(seed))
    streams = np.random.SeedSequence([seed, 1]).spawn(n)
    images = np.empty((n, size, size), dtype=np.float32)
    for i in tqdm(range(n), desc="render", unit="img", disable=not progress):
        images[i] = render_unit_image(
            np.random.default_rng(streams[i]), bool(labels[i]), size, render_size
        )
    return images, labels


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage synth",
        description="Write synthetic chest radiograph studies as DICOM Part-10 files (a frontal "
        "PA/AP view and a lateral per study; CR and DX; MONOCHROME1/2; 8-16 bits) and a "
        "labels.csv; or, with --kaggle, JPEGs in the Kaggle chest_xray folder layout. The "
        "images and patients are synthetic: NON-CLINICAL test data.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--studies", type=int, default=20, help="number of studies (default 20)")
    parser.add_argument("--size", type=int, default=512, help="image rows in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel content")
    parser.add_argument(
        "--positive-fraction",
        type=float,
        default=0.5,
        help="fraction of studies with consolidation (default 0.5)",
    )
    parser.add_argument(
        "--transfer-syntax",
        default="explicit",
        choices=[*TRANSFER_SYNTAXES, "mixed"],
        help="transfer syntax of the files; mixed cycles through all",
    )
    parser.add_argument(
        "--modality",
        default="mixed",
        choices=["CR", "DX", "mixed"],
        help="CR Image Storage, DX For Presentation, or both (default)",
    )
    parser.add_argument("--no-lateral", action="store_true", help="frontal views only")
    parser.add_argument(
        "--kaggle",
        type=int,
        metavar="N",
        default=None,
        help="instead: a Kaggle-layout JPEG folder with N images per class and split",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # one INFO line per tile
    if args.kaggle is not None:
        root = write_kaggle_layout(args.out, args.kaggle, size=args.size, seed=args.seed)
        print(f"wrote a Kaggle-layout folder at {root}")
        return 0
    modalities = ("CR", "DX") if args.modality == "mixed" else (args.modality,)
    try:
        records = write_studies(
            args.out,
            args.studies,
            size=args.size,
            seed=args.seed,
            positive_fraction=args.positive_fraction,
            lateral=not args.no_lateral,
            transfer_syntax=args.transfer_syntax,
            modalities=modalities,
            progress=True,
        )
    except ValueError as exc:
        print(f"cxr-triage synth: {exc}", file=sys.stderr)
        return 2
    positives = len({r.study_instance_uid for r in records if r.label})
    print(
        f"wrote {args.studies} studies ({len(records)} files, {positives} positive) to "
        f"{args.out}; labels in {args.out / 'labels.csv'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
