"""Fixtures that make synthetic chest radiographs and DICOM studies for the tests.

All are session-scoped and cheap (small images): generate once, read many times. Tests must
not modify what these fixtures return; copy first. They need the ``train`` extra (the synthetic
data lives in ``training``) and skip the test that asks for them where it is not installed (the
base-install job of scripts/test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.extras import needs_extra

# The Kaggle-like folder the training tests use: enough images for a 64 px ResNet-50 to learn
# the synthetic task in a few CPU epochs, small enough to write in a few seconds.
KAGGLE_COUNTS = {"train": (130, 130), "val": (4, 4), "test": (50, 50)}


@pytest.fixture(scope="session")
def synthetic_study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small synthetic studies (frontal + lateral, CR and DX, every transfer syntax)
    as DICOM under ``<dir>/<StudyInstanceUID>/<n>.dcm`` with ``<dir>/labels.csv``."""
    needs_extra("train")
    from training.synthetic import write_studies

    out = tmp_path_factory.mktemp("synthetic-studies")
    write_studies(out, 8, size=128, seed=11, transfer_syntax="mixed", modalities=("CR", "DX"))
    return out


@pytest.fixture(scope="session")
def synthetic_arrays() -> tuple[np.ndarray, np.ndarray]:
    """64 images (64x64, [0, 1], serving path) and their labels, half positive."""
    needs_extra("train")
    from training.synthetic import synthetic_arrays as make_synthetic_arrays

    return make_synthetic_arrays(64, size=64, seed=5, render_size=128)


@pytest.fixture(scope="session")
def kaggle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout ``chest_xray`` folder of synthetic JPEGs with the archive's quirks
    (``.DS_Store``, ``__MACOSX``, a nested copy, a duplicate, an RGB JPEG)."""
    needs_extra("train")
    from training.synthetic import write_kaggle_layout

    return write_kaggle_layout(tmp_path_factory.mktemp("kaggle"), KAGGLE_COUNTS, size=128, seed=3)
