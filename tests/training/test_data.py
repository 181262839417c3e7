"""Data sources: the Kaggle layout, DICOM folders, CSV manifests; errors in one line."""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

import training.cache
from governance.errors import ConfigError
from training.cache import build_cache, cache_key, quantize, unit_image
from training.data import (
    ImageRecord,
    deduplicate,
    load_dicom_folder,
    load_kaggle,
    load_manifest,
    load_source,
    read_gray,
)
from training.datasets import ServedImageDataset
from training.prepare import load_data
from worker.preprocess import prepare, preprocess, standardize


def _path(record: ImageRecord) -> Path:
    """The file of a record read from disk (only a synthetic record has none)."""
    assert record.path is not None, record.name
    return record.path


def test_kaggle_reads_only_split_folders_and_skips_non_images(kaggle_dir: Path):
    source = load_kaggle(kaggle_dir.parent)  # the folder above chest_xray works too
    assert source.root == kaggle_dir
    names = [r.name for r in source.records]
    assert len(names) == 261 + 100  # train (with one duplicate) + test; val left out
    assert not any("chest_xray/" in n or "__MACOSX" in n or ".DS_Store" in n for n in names)
    assert source.report["skipped_non_images"] == {".DS_Store": 6}
    assert {r.split for r in source.records} == {"train", "test"}
    assert all((r.label == 1) == ("/PNEUMONIA/" in f"/{r.name}") for r in source.records)
    with_val = load_kaggle(kaggle_dir, include_provided_val=True)
    assert len(with_val.records) == len(source.records) + 8


def test_duplicates_are_dropped_and_reported(kaggle_dir: Path):
    records, duplicates = deduplicate(load_kaggle(kaggle_dir).records)
    assert len(records) == 360
    assert len(duplicates) == 1
    pair = {duplicates[0]["name"], duplicates[0]["kept_as"]}
    assert {name.replace("-copy", "") for name in pair} == {pair.pop().replace("-copy", "")}
    assert not duplicates[0]["label_conflict"]
    assert len({r.sha256 for r in records}) == len(records)


def test_rgb_jpeg_becomes_gray_and_cache_equals_serving(kaggle_dir: Path, tmp_path: Path):
    records, _ = deduplicate(load_kaggle(kaggle_dir).records)
    rgb = [r for r in records if Image.open(_path(r)).mode == "RGB"]
    assert len(rgb) == 1
    gray = read_gray(_path(rgb[0]))
    assert gray.ndim == 2
    chosen = [rgb[0], records[0], records[-1]]
    cache = build_cache(chosen, 48, tmp_path, progress=False)
    assert cache.dtype == np.uint8 and cache.shape == (3, 48, 48)  # one byte, one channel
    for row, record in zip(cache, chosen, strict=True):
        np.testing.assert_array_equal(row, quantize(prepare(read_gray(_path(record)), 48).unit))
    again = build_cache(chosen, 48, tmp_path, progress=False)  # reused, not rebuilt
    assert isinstance(again, np.memmap) and len(list(tmp_path.glob("*.npy"))) == 1


def test_served_dataset_gives_serving_input_not_the_cache(kaggle_dir: Path, tmp_path: Path):
    """What the exported model is scored on to set tau: each file through ``prepare`` at full
    precision (not its uint8 cache row); an image with no file is its row / 255."""
    records, _ = deduplicate(load_kaggle(kaggle_dir).records)
    chosen = records[:3]
    cache = build_cache(chosen, 48, tmp_path, progress=False)
    labels = np.array([r.label for r in chosen])
    paths = [chosen[0].path, chosen[1].path, None]
    images, _ = ServedImageDataset(cache, labels, paths, 48).__getitems__([0, 1, 2])
    assert images.dtype == torch.float32 and tuple(images.shape) == (3, 48, 48)
    for i in (0, 1):
        exact = prepare(_path(chosen[i]), 48).unit
        np.testing.assert_array_equal(images[i].numpy(), exact)
        assert np.abs(cache[i] / np.float32(255) - exact).max() > 0  # the cache is not exact
    np.testing.assert_array_equal(images[2].numpy(), cache[2] / np.float32(255))
    with pytest.raises(ValueError, match="paths has 2 entries"):
        ServedImageDataset(cache, labels, paths[:2], 48)


def test_cache_name_changes_with_its_format(kaggle_dir: Path, tmp_path: Path, monkeypatch):
    """A cache of another format (the float32 one before) is never taken for this one."""
    records, _ = deduplicate(load_kaggle(kaggle_dir).records)
    key = cache_key(records[:3], 48)
    monkeypatch.setattr(training.cache, "CACHE_FORMAT", "unit-float32-v1")
    assert cache_key(records[:3], 48) != key


def test_quantize_rounds_to_the_nearest_grey_level():
    unit = np.array([[0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 1.0, 1.2, -0.1]], np.float32)
    np.testing.assert_array_equal(quantize(unit), [[0, 0, 1, 255, 255, 0]])
    grid = np.linspace(0, 1, 10001, dtype=np.float32)
    assert np.abs(quantize(grid) / np.float32(255) - grid).max() <= 0.5 / 255 + 1e-7
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([np.nan]))


def test_dicom_folder_source_keeps_frontal_hashes_patients(
    synthetic_study_dir: Path, tmp_path: Path
):
    source = load_dicom_folder(synthetic_study_dir)
    assert len(source.records) == 8 and source.report["laterals_left_out"] == 8
    assert all(r.kind == "dicom" and r.patient.startswith("h:") for r in source.records)
    first = source.records[0]
    ds = pydicom.dcmread(_path(first))
    assert ds.PatientID not in first.patient
    np.testing.assert_allclose(
        standardize(unit_image("dicom", _path(first), 64)), preprocess(ds, 64), atol=0
    )
    args = argparse.Namespace(
        synthetic=None,
        data=synthetic_study_dir,
        manifest=None,
        include_kaggle_val=False,
        split_manifest=None,
        val_fraction=0.25,
        test_fraction=0.25,
        seed=0,
        input_size=32,
        cache_dir=tmp_path,
    )
    data = load_data(args, tmp_path / "run", None, workers=0, progress=False)  # type: ignore[arg-type]
    text = (tmp_path / "run" / "split_manifest.csv").read_text()
    for record in data.records:
        patient_id = pydicom.dcmread(_path(record), stop_before_pixels=True).PatientID
        assert patient_id not in text
    assert set(data.splits.tolist()) == {"train", "val", "test"}
    assert {"sex", "age", "view"} <= set(text.splitlines()[0].split(","))


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_manifest_source_with_subgroups_and_splits(kaggle_dir: Path, tmp_path: Path):
    files = (
        sorted((kaggle_dir / "test" / "NORMAL").glob("*.jpeg"))[:3]
        + sorted((kaggle_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    )
    rows = [
        {
            "path": str(p),
            "label": "PNEUMONIA" if "person" in p.name else "0",
            "patient_id": f"P{i // 2}",
            "split": "test" if i % 3 == 0 else "",
            "sex": "F" if i % 2 else "M",
            "site": "A",
        }
        for i, p in enumerate(files)
    ]
    source = load_manifest(_write_manifest(tmp_path / "m.csv", rows))
    assert [r.label for r in source.records] == [0, 0, 0, 1, 1, 1]
    assert source.records[0].patient == source.records[1].patient
    assert "P0" not in source.records[0].patient
    assert source.records[0].split == "test" and source.records[1].split is None
    assert source.records[1].subgroups == {"sex": "F", "site": "A"}


def test_one_line_errors(kaggle_dir: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_source(tmp_path / "missing", None)
    (tmp_path / "empty" / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images under"):
        load_source(tmp_path / "empty", None)
    (tmp_path / "other").mkdir()
    with pytest.raises(ConfigError, match="neither the Kaggle layout"):
        load_source(tmp_path / "other", None)
    bad = _write_manifest(
        tmp_path / "bad.csv",
        [
            {"path": str(next(kaggle_dir.glob("test/NORMAL/*.jpeg"))), "label": "0"},
            {"path": str(next(kaggle_dir.glob("test/NORMAL/*.jpeg"))), "label": "maybe"},
        ],
    )
    with pytest.raises(ConfigError, match="is not binary") as info:
        load_manifest(bad)
    assert "\n" not in str(info.value)
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ConfigError, match="cannot read image"):
        read_gray(broken)
    copy = tmp_path / "k" / "chest_xray"
    shutil.copytree(kaggle_dir / "test", copy / "test")
    shutil.copyfile(broken, copy / "test" / "NORMAL" / "IM-9999-0001.jpeg")
    records, _ = deduplicate(load_kaggle(copy).records)
    with pytest.raises(ConfigError, match="IM-9999-0001.jpeg"):
        build_cache(records, 32, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*"))  # no half-built cache left behind
