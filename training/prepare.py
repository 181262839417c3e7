"""``load_data``: a source's records, deduplicated, split, written to a manifest, decoded.

The split manifest (``split_manifest.csv`` in the run folder) lists every image with its
SHA-256, label, patient key and split; ``--split-manifest`` reuses one so a run is
reproduced exactly, and its SHA-256 goes to the registry.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.settings import Settings
from governance.errors import ConfigError
from training import metrics
from training.cache import CACHE_FORMAT, build_cache, quantize
from training.data import ImageRecord, SourceData, deduplicate, load_source
from training.splits import (
    assign_splits,
    patient_overlap,
    read_manifest_splits,
    split_counts,
    write_manifest,
)
from training.synthetic.studies import render_unit_image

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Decoded images (rows of ``images``) with labels, names and splits, in one order."""

    records: list[ImageRecord]
    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    manifest_sha256: str
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def patients_of(self, indices: np.ndarray) -> list[str]:
        """The patient of each image at ``indices`` (the bootstrap's resampling unit)."""
        return [self.records[i].patient for i in indices]


def synthetic_source(n: int, size: int, seed: int) -> tuple[SourceData, np.ndarray]:
    """``n`` synthetic frontal images (half positive) rendered at 4x ``size`` (at least
    256 px), reduced by serving's path and quantised as the cache is; one patient per image,
    no split provided."""
    from training.synthetic.studies import balanced_labels

    if n < 20:
        raise ConfigError(f"--synthetic needs at least 20 images, got {n}")
    labels = balanced_labels(n, 0.5, np.random.default_rng(seed))
    streams = np.random.SeedSequence([seed, 2]).spawn(n)
    render = max(256, 4 * size)
    images = np.stack(
        [
            quantize(
                render_unit_image(np.random.default_rng(streams[i]), bool(labels[i]), size, render)
            )
            for i in range(n)
        ]
    )
    records = [
        ImageRecord(
            name=f"synthetic/{seed}/{i:06d}",
            path=None,
            label=int(labels[i]),
            patient=f"synthetic:{i}",
            kind="synthetic",
            sha256=f"synthetic-{seed}-{render}-{i}",
        )
        for i in range(n)
    ]
    return SourceData("synthetic", None, records, {"render_size": render}), images


def load_data(
    args: argparse.Namespace, run_dir: Path, settings: Settings, *, workers: int, progress: bool
) -> PreparedData:
    """Records -> deduplicated -> split (or the given manifest's splits) -> decoded cache.

    Raises
    ------
    ConfigError
        A data problem (see :mod:`training.data`), or a split manifest that does not match.
    """
    images = None
    if args.synthetic is not None:
        source, images = synthetic_source(args.synthetic, args.input_size, args.seed)
        duplicates: list[dict[str, Any]] = []
        records = source.records
    else:
        source = load_source(args.data, args.manifest, include_provided_val=args.include_kaggle_val)
        records, duplicates = deduplicate(source.records)
    labels = np.array([r.label for r in records], dtype=np.int64)
    patients = [r.patient for r in records]
    if args.split_manifest is not None:
        given = read_manifest_splits(args.split_manifest)
        missing = [r.name for r in records if r.name not in given]
        if missing or len(given) != len(records):
            raise ConfigError(
                f"split manifest {args.split_manifest} lists {len(given)} images, "
                f"the data has {len(records)} ({len(missing)} not in it)"
            )
        splits = [given[r.name] for r in records]
    else:
        splits = assign_splits(
            [r.split for r in records],
            labels.tolist(),
            patients,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
        )
    subgroup_keys = sorted({k for r in records for k in r.subgroups})
    rows = [
        {
            "name": r.name,
            "sha256": r.sha256,
            "label": r.label,
            "patient": r.patient,
            "split": s,
            **r.subgroups,
        }
        for r, s in zip(records, splits, strict=True)
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_sha = write_manifest(run_dir / "split_manifest.csv", rows, subgroup_keys)
    counts = split_counts(splits, labels.tolist())
    leaks = patient_overlap(splits, patients, "train", "val")
    report = {
        "source": source.source,
        "root": str(source.root) if source.root else None,
        **source.report,
        "images": len(records),
        "duplicates_dropped": len(duplicates),
        "duplicates": duplicates[:200],
        "counts": counts,
        "patients": len(set(patients)),
        "train_val_patient_overlap": len(leaks),
        "train_test_patient_overlap": len(patient_overlap(splits, patients, "train", "test")),
        "cache_format": CACHE_FORMAT,
    }
    for split, c in counts.items():
        logger.info(
            "%5s: %6d images = %5d normal / %5d pneumonia",
            split,
            c["total"],
            c["normal"],
            c["pneumonia"],
        )
    if duplicates:
        logger.info(
            "dropped %d exact duplicate files (same SHA-256); see data_report in "
            "report_summary.json",
            len(duplicates),
        )
    if images is None:
        cache_dir = args.cache_dir or settings.data_dir / "cache"
        images = build_cache(
            records, args.input_size, cache_dir, workers=workers, progress=progress
        )
    return PreparedData(records, images, labels, np.array(splits), manifest_sha, report)


def _age_band(value: str) -> str:
    try:
        age = float(value.rstrip("Yy"))
    except ValueError:
        return "unknown"
    return "<40" if age < 40 else ("40-64" if age < 65 else ">=65")


def subgroup_metrics(
    data: PreparedData, test_idx: np.ndarray, final: Any
) -> dict[str, dict[str, dict[str, float]]]:
    """Test AUC per subgroup value (sex, age band, view, site, ...) where the data has them."""
    if final.test is None or len(test_idx) == 0:
        return {}
    keys = sorted({k for i in test_idx for k in data.records[i].subgroups})
    out = {}
    for key in keys:
        values = [data.records[i].subgroups.get(key, "unknown") for i in test_idx]
        if key == "age":
            values = [_age_band(v) for v in values]
        out[key] = metrics.subgroup_auc(final.test.labels, final.test.probs, np.array(values))
    return out
