"""A model carries its preprocessing; serving refuses one made with another recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from governance.errors import ModelIntegrityError
from governance.registry import sha256_file
from tests.worker.conftest import INPUT_SIZE
from worker.model import load_scripted, preprocessing_of
from worker.preprocess import PREPROCESSING_FILE, PREPROCESSING_VERSION, preprocessing_record


def _resave(model_file: Path, out: Path, record: dict | None) -> Path:
    module = torch.jit.load(str(model_file), map_location="cpu")
    extra = {} if record is None else {PREPROCESSING_FILE: json.dumps(record)}
    module.save(str(out), _extra_files=extra)
    return out


def test_an_exported_model_carries_this_codes_preprocessing(model_file: Path) -> None:
    record = preprocessing_of(model_file)
    assert record == preprocessing_record(INPUT_SIZE)
    assert record["version"] == PREPROCESSING_VERSION and len(record["code_sha256"]) == 64
    loaded = load_scripted(model_file, sha256_file(model_file), torch.device("cpu"), INPUT_SIZE)
    assert loaded is not None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"percentiles": [1.0, 99.0]}, "percentiles is [1.0, 99.0] in the model, [0.5, 99.5] here"),
        ({"version": 1}, f"version is 1 in the model, {PREPROCESSING_VERSION} here"),
        ({"mean": [0.5, 0.5, 0.5]}, "mean is [0.5, 0.5, 0.5] in the model"),
    ],
)
def test_a_model_with_other_preprocessing_is_refused_with_one_line(
    model_file: Path, tmp_path: Path, change: dict, named: str
) -> None:
    record = {**preprocessing_record(INPUT_SIZE), **change}
    path = _resave(model_file, tmp_path / "other.pt", record)
    with pytest.raises(ModelIntegrityError) as info:
        load_scripted(path, sha256_file(path), torch.device("cpu"), INPUT_SIZE)
    message = str(info.value)
    assert named in message and "\n" not in message and message.startswith("other.pt: ")


def test_a_model_without_a_preprocessing_record_is_refused(
    model_file: Path, tmp_path: Path
) -> None:
    path = _resave(model_file, tmp_path / "old.pt", None)
    with pytest.raises(ModelIntegrityError, match="carries no preprocessing record"):
        load_scripted(path, sha256_file(path), torch.device("cpu"), INPUT_SIZE)


def test_only_the_code_hash_may_differ(model_file: Path, tmp_path: Path) -> None:
    record = {**preprocessing_record(INPUT_SIZE), "code_sha256": "0" * 64}
    path = _resave(model_file, tmp_path / "edited.pt", record)
    load_scripted(path, sha256_file(path), torch.device("cpu"), INPUT_SIZE)
