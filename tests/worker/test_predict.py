"""`cxr-triage predict`: JSON lines for files and folders, scored as the worker would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

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
