"""`cxr-triage model register|list|show` on a TorchScript FILE (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cxr_triage.test_model_cli_actor import run


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_register_a_file_then_list_and_show_it(
    tmp_path: Path, make_database_url: Callable[[str], str], backend: str
) -> None:
    url = make_database_url(backend)
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"not really torchscript")
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()

    empty = run(url, tmp_path, "list")
    assert empty.returncode == 0 and empty.stdout.strip() == "no model versions registered"
    refused = run(url, tmp_path, "register", str(model_file))
    assert refused.returncode == 2
    assert "registering a FILE needs --version and --input-size" in refused.stderr
    done = run(
        url, tmp_path, "register", str(model_file), "--version", "v-file", "--input-size", "64",
        "--temperature", "1.5", "--sha256", sha,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"registered v-file (sha256 {sha[:12]}...)"

    listed = run(url, tmp_path, "list").stdout.splitlines()
    assert len(listed) == 1
    assert listed[0].split()[:5] == ["v-file", "registered", "resnet50", "64px", "T=1.500"]
    assert "NON-CLINICAL" in listed[0] and listed[0].endswith("no policy")

    shown = json.loads(run(url, tmp_path, "show", "v-file").stdout)
    assert (shown["version"], shown["sha256"], shown["input_size"]) == ("v-file", sha, 64)
    assert (shown["temperature"], shown["clinical"], shown["policies"]) == (1.5, False, [])
