"""Patient-grouped, label-stratified splits, and the manifest that reproduces them.

A patient's images all land on one side of a split (no leakage between train and
validation), and each side keeps the class balance. Splits are seeded and written to a
split manifest (CSV) whose SHA-256 the registry keeps, so a run can be reproduced exactly.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Kaggle "Chest X-Ray Images (Pneumonia)" file names and the patient they name.
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),
    re.compile(r"^(NORMAL2-IM-\d+)-\d+", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-\d+", re.IGNORECASE),
)
MANIFEST_COLUMNS = ("name", "sha256", "label", "patient", "split")


def parse_patient_id(filename: str) -> str | None:
    """The patient a Kaggle file name names, or None.

    ``person123_bacteria_456.jpeg`` -> ``person123``; ``IM-0115-0001.jpeg`` -> ``IM-0115``;
    ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``.
    """
    name = Path(filename).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return None


def group_stratified_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str],
    fraction: float,
    seed: int,
) -> np.ndarray:
    """Choose whole groups (patients) holding about ``fraction`` of each class's images.

    Each group is assigned the majority label of its images; within each label the groups
    are shuffled (seeded; independent of input order) and taken while that brings the
    chosen image count closer to ``fraction`` of the class.

    Returns
    -------
    numpy.ndarray
        Boolean mask over the images: True = chosen (e.g. validation).

    Raises
    ------
    ValueError
        ``fraction`` is not in (0, 1), or the lengths differ.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    y = np.asarray(labels).astype(np.int64)
    g = np.asarray(groups, dtype=object)
    if y.shape != g.shape:
        raise ValueError(f"labels and groups differ in length: {y.shape} vs {g.shape}")
    members: dict[str, list[int]] = {}
    for i, group in enumerate(g.tolist()):
        members.setdefault(str(group), []).append(i)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(y), dtype=bool)
    names = sorted(members)
    group_label = {n: int(round(float(y[members[n]].mean()) + 1e-9)) for n in names}
    for label in sorted(set(group_label.values())):
        stratum = [n for n in names if group_label[n] == label]
        target = fraction * sum(len(members[n]) for n in stratum)
        taken = 0
        for index in rng.permutation(len(stratum)):
            size = len(members[stratum[index]])
            if abs(taken + size - target) < abs(taken - target):
                chosen[members[stratum[index]]] = True
                taken += size
    return chosen


def assign_splits(
    provided: Sequence[str | None],
    labels: Sequence[int],
    patients: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> list[str]:
    """Final split per image: a provided test split is kept as is; test is carved (grouped,
    stratified) only where none is provided; validation is carved out of train.

    Raises
    ------
    ValueError
        A fraction is out of range.
    """
    splits = [s if s in {"train", "val", "test"} else "train" for s in provided]
    has_test = any(s == "test" for s in splits)
    has_val = any(s == "val" for s in splits)
    y = np.asarray(labels)
    if not has_test:
        pool = np.array([i for i, s in enumerate(splits) if s == "train"])
        mask = group_stratified_split(y[pool], [patients[i] for i in pool], test_fraction, seed + 1)
        for i in pool[mask]:
            splits[i] = "test"
    if not has_val:
        pool = np.array([i for i, s in enumerate(splits) if s == "train"])
        mask = group_stratified_split(y[pool], [patients[i] for i in pool], val_fraction, seed)
        for i in pool[mask]:
            splits[i] = "val"
    return splits


def split_counts(splits: Sequence[str], labels: Sequence[int]) -> dict[str, dict[str, int]]:
    """``{split: {"total", "normal", "pneumonia"}}``."""
    out: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        chosen = [label for s, label in zip(splits, labels, strict=True) if s == split]
        out[split] = {"total": len(chosen), "normal": chosen.count(0), "pneumonia": chosen.count(1)}
    return out


def patient_overlap(splits: Sequence[str], patients: Sequence[str], a: str, b: str) -> set[str]:
    """Patients with images in both split ``a`` and split ``b``."""
    side_a = {p for s, p in zip(splits, patients, strict=True) if s == a}
    side_b = {p for s, p in zip(splits, patients, strict=True) if s == b}
    return side_a & side_b


def write_manifest(path: Path, rows: Sequence[dict[str, Any]], extra: Sequence[str] = ()) -> str:
    """Write the split manifest CSV and return its SHA-256."""
    columns = [*MANIFEST_COLUMNS, *extra]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest_splits(path: Path) -> dict[str, str]:
    """``{name: split}`` from a split manifest written by :func:`write_manifest`."""
    with open(path, newline="") as fh:
        return {row["name"]: row["split"] for row in csv.DictReader(fh)}
