"""Where training images come from: the Kaggle layout, a DICOM folder, a CSV manifest.

Every source becomes a list of :class:`ImageRecord` (path, label, patient, provided split,
subgroup columns, SHA-256 of the file). Exact duplicates (same SHA-256) are dropped and
reported. Errors a person can fix are one-line :class:`~governance.errors.ConfigError`\\ s.

Patient identifiers from DICOM headers or manifests are kept only as a hash (for grouping);
the IDs the Kaggle file names carry (``person123``) are not patient identifiers.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from governance.errors import ConfigError
from training.splits import parse_patient_id
from worker.preprocess import read_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
KAGGLE_SPLITS = ("train", "val", "test")
KAGGLE_CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}
FRONTAL_VIEWS = {"PA", "AP"}
_POSITIVE = {"1", "true", "yes", "positive", "pneumonia", "abnormal"}
_NEGATIVE = {"0", "false", "no", "negative", "normal"}
DEFAULT_SUBGROUPS = ("sex", "age", "view", "site")


@dataclass
class ImageRecord:
    """One image: ``name`` is its path relative to the data root (stable across machines)."""

    name: str
    path: Path | None
    label: int
    patient: str
    kind: str  # "image" (JPEG/PNG), "dicom", "synthetic"
    split: str | None = None  # "train", "val", "test" when the source says so
    sha256: str = ""
    subgroups: dict[str, str] = field(default_factory=dict)
    study: str | None = None  # Study Instance UID where the source has studies


@dataclass
class SourceData:
    """The records of one source and what was found on the way (for the data report)."""

    source: str
    root: Path | None
    records: list[ImageRecord]
    report: dict[str, Any] = field(default_factory=dict)


def sha256_bytes(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hash_identifier(value: str) -> str:
    """A stable, non-reversible key for a patient identifier (never stored in clear)."""
    return "h:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def parse_label(value: str, *, where: str) -> int:
    """0 or 1 from 0/1, true/false, NORMAL/PNEUMONIA and the like.

    Raises
    ------
    ConfigError
        The value is not one of those.
    """
    text = str(value).strip().lower()
    if text in _POSITIVE:
        return 1
    if text in _NEGATIVE:
        return 0
    raise ConfigError(f"{where}: label {value!r} is not binary (use 0/1 or NORMAL/PNEUMONIA)")


def kaggle_root(folder: Path) -> Path | None:
    """The folder holding train/ and test/ (``folder`` itself or its ``chest_xray``)."""
    for candidate in (folder, folder / "chest_xray"):
        if (candidate / "train").is_dir() or (candidate / "test").is_dir():
            return candidate
    return None


def load_kaggle(folder: Path, *, include_provided_val: bool = False) -> SourceData:
    """``{train,val,test}/{NORMAL,PNEUMONIA}/*`` under ``folder`` (or ``folder/chest_xray``).

    Only those split folders are read (the archive also holds a nested copy and a
    ``__MACOSX`` folder); files that are not JPEG/PNG (``.DS_Store``) are skipped and counted.
    The provided ``val`` folder (16 images in the archive) is left out unless
    ``include_provided_val``, which adds it to the training pool.

    Raises
    ------
    ConfigError
        No such layout under ``folder``, or no image in it.
    """
    root = kaggle_root(folder)
    if root is None:
        raise ConfigError(
            f"{folder} has no train/ or test/ folder (Kaggle layout "
            "chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg)"
        )
    records: list[ImageRecord] = []
    skipped: Counter[str] = Counter()
    unparsed = 0
    provided_val = 0
    for split in KAGGLE_SPLITS:
        for klass, label in KAGGLE_CLASSES.items():
            directory = root / split / klass
            if not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                if not path.is_file():
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                    skipped[path.name if path.name.startswith(".") else path.suffix] += 1
                    continue
                if split == "val":
                    provided_val += 1
                    if not include_provided_val:
                        continue
                patient = parse_patient_id(path.name)
                if patient is None:
                    unparsed += 1
                    patient = f"image:{split}/{klass}/{path.name}"
                records.append(
                    ImageRecord(
                        name=path.relative_to(root).as_posix(),
                        path=path,
                        label=label,
                        patient=patient,
                        kind="image",
                        split="test" if split == "test" else "train",
                    )
                )
    if not records:
        raise ConfigError(f"no images under {root}/{{train,test}}/{{NORMAL,PNEUMONIA}}/")
    report = {
        "skipped_non_images": dict(skipped),
        "unparsed_patient_ids": unparsed,
        "provided_val_images": provided_val,
        "provided_val_used": include_provided_val,
    }
    if unparsed:
        logger.warning(
            "%d file names carry no patient ID; each counts as its own patient", unparsed
        )
    return SourceData("kaggle", root, records, report)


def _open_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError(f"manifest {path} has no rows")
    for column in ("path", "label"):
        if column not in rows[0]:
            raise ConfigError(f"manifest {path} has no {column!r} column")
    return rows


def _check_binary(rows: list[dict[str, str]], path: Path) -> list[int]:
    values = sorted({row["label"].strip() for row in rows})
    labels = []
    for row in rows:
        try:
            labels.append(parse_label(row["label"], where=str(path)))
        except ConfigError:
            raise ConfigError(
                f"column 'label' of {path} is not binary: values {values[:6]}"
            ) from None
    return labels


def _split_value(row: dict[str, str], path: Path) -> str | None:
    value = (row.get("split") or "").strip().lower()
    if not value:
        return None
    if value not in KAGGLE_SPLITS:
        raise ConfigError(f"{path}: split {value!r} is not train, val or test")
    return value


def load_manifest(path: Path, *, subgroups: tuple[str, ...] = DEFAULT_SUBGROUPS) -> SourceData:
    """A CSV with ``path`` (relative to the CSV's folder or absolute), ``label``, and
    optionally ``patient_id``, ``split`` and subgroup columns (sex, age, view, site, ...).

    Files ending in .jpeg/.jpg/.png are read as images, anything else as DICOM.

    Raises
    ------
    ConfigError
        The file is missing or empty, lacks a column, has a non-binary label, or names a
        file that does not exist.
    """
    rows = _open_csv(path)
    labels = _check_binary(rows, path)
    records = []
    for row, label in zip(rows, labels, strict=True):
        file = Path(row["path"])
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise ConfigError(f"{path}: {row['path']} does not exist")
        patient = (row.get("patient_id") or "").strip()
        records.append(
            ImageRecord(
                name=row["path"],
                path=file,
                label=label,
                patient=hash_identifier(patient) if patient else f"image:{row['path']}",
                kind="image" if file.suffix.lower() in IMAGE_SUFFIXES else "dicom",
                split=_split_value(row, path),
                subgroups={k: row[k].strip() for k in subgroups if (row.get(k) or "").strip()},
            )
        )
    return SourceData(
        "manifest",
        path.parent,
        records,
        {
            "rows": len(rows),
            "without_patient_id": sum(not (r.get("patient_id") or "").strip() for r in rows),
        },
    )


def load_dicom_folder(folder: Path, *, frontal_only: bool = True) -> SourceData:
    """A folder of DICOM files with a ``labels.csv`` (as ``cxr-triage synth`` writes it).

    Patients are grouped by a hash of PatientID from each header (else the study UID);
    lateral views are left out when ``frontal_only``, as the worker scores frontal images.

    Raises
    ------
    ConfigError
        No ``labels.csv``, a non-binary label, or a missing file.
    """
    labels_csv = folder / "labels.csv"
    if not labels_csv.is_file():
        raise ConfigError(f"{folder} has no labels.csv (path,label,... per DICOM file)")
    rows = _open_csv(labels_csv)
    labels = _check_binary(rows, labels_csv)
    records, laterals = [], 0
    for row, label in zip(rows, labels, strict=True):
        view = (row.get("view") or "").strip().upper()
        if frontal_only and view and view not in FRONTAL_VIEWS:
            laterals += 1
            continue
        file = folder / row["path"]
        if not file.is_file():
            raise ConfigError(f"{labels_csv}: {row['path']} does not exist")
        try:
            ds = pydicom.dcmread(
                file, stop_before_pixels=True, specific_tags=["PatientID", "StudyInstanceUID"]
            )
        except Exception as exc:  # pydicom raises several types for a bad file
            raise ConfigError(f"cannot read DICOM file {file}: {type(exc).__name__}") from None
        patient_id = str(ds.get("PatientID", "") or "")
        patient = (
            hash_identifier(patient_id)
            if patient_id
            else f"study:{row.get('study_instance_uid') or ds.get('StudyInstanceUID')}"
        )
        records.append(
            ImageRecord(
                name=row["path"],
                path=file,
                label=label,
                patient=patient,
                kind="dicom",
                study=str(row.get("study_instance_uid") or ds.get("StudyInstanceUID") or "")
                or None,
                split=_split_value(row, labels_csv),
                subgroups={
                    k: row[k].strip() for k in DEFAULT_SUBGROUPS if (row.get(k) or "").strip()
                },
            )
        )
    if not records:
        raise ConfigError(f"no frontal images listed in {labels_csv}")
    return SourceData("dicom", folder, records, {"laterals_left_out": laterals})


def load_source(data: Path | None, manifest: Path | None, **kwargs: Any) -> SourceData:
    """The source that ``--data DIR`` (Kaggle layout or DICOM folder) or ``--manifest`` names.

    Raises
    ------
    ConfigError
        The folder does not exist or holds neither layout.
    """
    if manifest is not None:
        return load_manifest(manifest)
    if data is None:
        raise ConfigError("give --data DIR, --manifest CSV or --synthetic N")
    if not data.is_dir():
        raise ConfigError(f"data folder {data} does not exist")
    if (data / "labels.csv").is_file():
        return load_dicom_folder(data)
    if kaggle_root(data) is not None:
        return load_kaggle(data, **kwargs)
    raise ConfigError(
        f"{data} holds neither the Kaggle layout ({{train,test}}/{{NORMAL,"
        "PNEUMONIA}/) nor DICOM files with a labels.csv; use --manifest CSV"
    )


def deduplicate(records: list[ImageRecord]) -> tuple[list[ImageRecord], list[dict[str, Any]]]:
    """Hash every file and drop exact duplicates; test images win over training images.

    Returns
    -------
    kept, duplicates
        The kept records and one entry per dropped file (name, kept_as, label_conflict).
    """
    for record in records:
        if record.path is not None and not record.sha256:
            record.sha256 = sha256_bytes(record.path)
    order = sorted(range(len(records)), key=lambda i: (records[i].split != "test", i))
    first: dict[str, ImageRecord] = {}
    kept_ids, dropped = set(), []
    for i in order:
        record = records[i]
        seen = first.get(record.sha256)
        if seen is None:
            first[record.sha256] = record
            kept_ids.add(i)
        else:
            dropped.append(
                {
                    "name": record.name,
                    "kept_as": seen.name,
                    "label_conflict": seen.label != record.label,
                }
            )
    if dropped:
        logger.warning("dropped %d exact duplicate files (same SHA-256)", len(dropped))
    return [r for i, r in enumerate(records) if i in kept_ids], dropped


def read_gray(path: Path) -> np.ndarray:
    """A JPEG/PNG as a 2-D array (:func:`worker.preprocess.read_image`).

    Raises
    ------
    ConfigError
        The file cannot be read as an image.
    """
    try:
        return read_image(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
