"""Fixtures of the results tests: small synthetic studies (one frontal, one lateral image)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.synthetic.studies import write_studies


@pytest.fixture(scope="session")
def result_studies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three synthetic studies of 64 px images; folders named by Study Instance UID."""
    out = tmp_path_factory.mktemp("result-studies")
    write_studies(out, 3, size=64, seed=7, transfer_syntax="mixed", modalities=("CR", "DX"))
    return sorted(p for p in out.iterdir() if p.is_dir())
