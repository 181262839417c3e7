"""`cxr-triage predict`: JSON lines for files and folders, scored as the worker would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from governance.db import Store
from governance.models import ModelVersion
from tests.worker.builders import radiograph, write
from worker.inference import ModelCache
from worker.triage import Candidate, score_images


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_predict_prints_a_json_line_per_file(
    tmp_path: Path, store: Store, database_url: str, activate: Callable[..., ModelVersion]
) -> None:
    model = activate(tau=0.0)
    study = generate_uid()
    folder = tmp_path / "in"
    frontal = write(radiograph(study_uid=study, view="PA", seed=1), folder / "a" / "pa.dcm")
    write(radiograph(study_uid=study, view="LL", seed=2), folder / "a" / "lat.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATABASE_URL=database_url, CXR_DATA_DIR=str(tmp_path), CXR_PRECISION="fp32")
    result = subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", "predict", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(line["path"]).name: line for line in lines}
    assert set(by_name) == {"pa.dcm", "lat.dcm", "notes.txt"}
    scored = by_name["pa.dcm"]
    assert scored["model_version"] == model.version and scored["tau"] == 0.0
    assert scored["flagged"] is True and 0.0 <= scored["probability"] <= 1.0
    assert by_name["lat.dcm"]["skipped_reason"] == "lateral view (LL)"
    assert by_name["notes.txt"]["skipped_reason"] == "unreadable DICOM file"
    # The same probability the worker computes for that file.
    spec_cache = ModelCache(device="cpu", precision="fp32")
    from worker.inference import ModelSpec

    spec = ModelSpec.of(model)
    [worker_result] = score_images(spec_cache, spec, [Candidate(0, "pa", str(frontal))])
    assert scored["probability"] == pytest.approx(worker_result.probability, abs=1e-6)


# (bits, photometric, VOI function, window as fractions of the stored range, rescale, format)
RENDERED_CASES = [
    (8, "MONOCHROME2", "LINEAR", (0.5, 0.8), None, "png"),
    (12, "MONOCHROME1", "LINEAR", (0.45, 0.7), (2.0, -100.0), "png"),
    (16, "MONOCHROME2", "SIGMOID", (0.55, 0.5), None, "png"),
    (10, "MONOCHROME1", "SIGMOID", (0.4, 0.6), None, "png"),
    (12, "MONOCHROME2", "LINEAR", (0.5, 0.9), None, "jpeg"),
]


def _windowed_pair(case: tuple, folder: Path, index: int) -> tuple[Path, Path]:
    """A DICOM file with a VOI window and the 8-bit image a viewer renders from it."""
    from PIL import Image

    from tests.worker.test_encoding_equivalence import make_ds
    from worker.preprocess import apply_rescale, apply_window

    bits, photometric, function, (centre, width), rescale, fmt = case
    rng = np.random.default_rng(index)
    top = 2**bits - 1
    y, x = np.mgrid[0:240, 0:200] / 200.0
    smooth = 0.5 + 0.3 * np.sin(3 * x + 5 * y * y) + 0.15 * rng.standard_normal((240, 200))
    stored = np.clip(np.round(np.clip(smooth, 0, 1) * top), 0, top)
    slope, intercept = rescale or (1.0, 0.0)
    window = (intercept + slope * centre * top, slope * width * top)
    ds = make_ds(
        stored,
        bits=bits,
        photometric=photometric,
        slope=slope,
        intercept=intercept,
        window=window,
    )
    ds.VOILUTFunction = function
    dicom = write(ds, folder / f"case{index}.dcm")
    window = (float(ds.WindowCenter), float(ds.WindowWidth))  # as written (DS precision)
    shown = apply_window(apply_rescale(stored, slope, intercept), *window, function)
    if photometric == "MONOCHROME1":
        shown = 1.0 - shown
    rendered = Image.fromarray(np.round(shown * 255).astype(np.uint8), mode="L")
    image = folder / f"case{index}.{fmt}"
    rendered.save(image, quality=100, subsampling=0) if fmt == "jpeg" else rendered.save(image)
    return dicom, image


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_dicom_and_the_image_rendered_by_its_window_score_alike(
    tmp_path: Path, store: Store, database_url: str, activate: Callable[..., ModelVersion]
) -> None:
    activate(tau=0.5)
    folder = tmp_path / "pairs"
    pairs = [_windowed_pair(case, folder, i) for i, case in enumerate(RENDERED_CASES)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATABASE_URL=database_url, CXR_DATA_DIR=str(tmp_path), CXR_PRECISION="fp32")
    result = subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", "predict", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    by_path = {line["path"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert len(by_path) == 2 * len(pairs)
    probabilities = []
    for dicom, image in pairs:
        from_dicom, from_image = by_path[str(dicom)], by_path[str(image)]
        assert "skipped_reason" not in from_dicom and "skipped_reason" not in from_image
        assert from_image["probability"] == pytest.approx(from_dicom["probability"], abs=1e-3)
        assert set(from_image) == set(from_dicom)  # the same JSON line
        probabilities.append(from_dicom["probability"])
    assert len(set(probabilities)) > 1  # the model does tell the images apart
