"""Patient IDs from file names, grouped stratified splits, reproducible manifests."""

from __future__ import annotations

import numpy as np
import pytest

from training.splits import (
    assign_splits,
    group_stratified_split,
    parse_patient_id,
    patient_overlap,
    read_manifest_splits,
    split_counts,
    write_manifest,
)


@pytest.mark.parametrize(("name", "patient"), [
    ("person123_bacteria_456.jpeg", "person123"),
    ("person7_virus_12.jpeg", "person7"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("train/NORMAL/IM-0003-0002.jpeg", "IM-0003"),
    ("scan_17.png", None),
    ("person_bacteria.jpeg", None),
])  # fmt: skip
def test_patient_id_from_kaggle_file_names(name, patient):
    assert parse_patient_id(name) == patient


def _cohort(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for patient in range(400):
        label = int(rng.random() < 0.72)
        for _ in range(int(rng.integers(1, 5))):
            labels.append(label)
            groups.append(f"p{patient}")
    return np.array(labels), groups


def test_no_patient_on_both_sides_and_classes_balanced():
    labels, groups = _cohort()
    chosen = group_stratified_split(labels, groups, 0.15, seed=3)
    inside = {g for g, c in zip(groups, chosen, strict=True) if c}
    outside = {g for g, c in zip(groups, chosen, strict=True) if not c}
    assert not inside & outside
    assert abs(chosen.mean() - 0.15) < 0.02
    assert abs(labels[chosen].mean() - labels[~chosen].mean()) < 0.03


def test_split_is_seeded_and_independent_of_input_order():
    labels, groups = _cohort()
    a = group_stratified_split(labels, groups, 0.2, seed=1)
    b = group_stratified_split(labels, groups, 0.2, seed=1)
    c = group_stratified_split(labels, groups, 0.2, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    order = np.random.default_rng(0).permutation(len(labels))
    shuffled = group_stratified_split(labels[order], [groups[i] for i in order], 0.2, seed=1)
    np.testing.assert_array_equal(shuffled, a[order])


def test_kaggle_sized_split_gives_the_published_counts():
    """Kaggle's train folder (1,341 normal, 3,875 pneumonia) at 15%: 1,140 / 3,294 train."""
    labels = np.array([0] * 1341 + [1] * 3875)
    groups = [f"p{i}" for i in range(len(labels))]  # one image per patient: exact targets
    splits = assign_splits(
        ["train"] * len(labels) + ["test"] * 2,
        [*labels, 0, 1],
        [*groups, "t0", "t1"],
        val_fraction=0.15,
        test_fraction=0.2,
        seed=0,
    )
    counts = split_counts(splits, [*labels, 0, 1])
    assert counts["train"] == {"total": 4434, "normal": 1140, "pneumonia": 3294}
    assert counts["val"]["total"] == 782
    assert counts["test"]["total"] == 2


def test_test_split_is_carved_only_when_none_is_provided():
    labels, groups = _cohort(1)
    splits = assign_splits(
        [None] * len(labels), labels.tolist(), groups, val_fraction=0.15, test_fraction=0.2, seed=0
    )
    assert set(splits) == {"train", "val", "test"}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not patient_overlap(splits, groups, a, b)


def test_manifest_round_trip_and_hash(tmp_path):
    rows = [
        {"name": "a.jpeg", "sha256": "x", "label": 1, "patient": "p1", "split": "val", "sex": "F"}
    ]
    first = write_manifest(tmp_path / "m.csv", rows, ["sex"])
    assert write_manifest(tmp_path / "n.csv", rows, ["sex"]) == first
    assert read_manifest_splits(tmp_path / "m.csv") == {"a.jpeg": "val"}


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match="fraction"):
        group_stratified_split([0, 1], ["a", "b"], 1.0, seed=0)
