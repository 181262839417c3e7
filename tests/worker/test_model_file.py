"""The model file is read once, hashed, and loaded from the bytes that were hashed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from governance.errors import ModelIntegrityError
from worker.model import load_scripted
from worker.preprocess import PREPROCESSING_FILE, preprocessing_record

SIZE = 32


def _tiny(path: Path) -> str:
    # Carries the preprocessing record the worker checks (worker.preprocess).
    record = json.dumps(preprocessing_record(SIZE))
    torch.jit.script(torch.nn.Linear(2, 1)).save(
        str(path), _extra_files={PREPROCESSING_FILE: record}
    )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_loads_from_the_bytes_it_hashed(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    sha = _tiny(path)
    module = load_scripted(path, sha, torch.device("cpu"), SIZE)
    assert module(torch.zeros(1, 2)).shape == (1, 1)


def test_a_changed_or_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    sha = _tiny(path)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="refusing to load it"):
        load_scripted(path, sha, torch.device("cpu"), SIZE)
    with pytest.raises(ModelIntegrityError, match="cannot be read"):
        load_scripted(tmp_path / "gone.pt", sha, torch.device("cpu"), SIZE)
