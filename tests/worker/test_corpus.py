"""The malformed instances the gateway accepts: the worker records why it cannot score them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, generate_uid

from governance.db import Store
from governance.models import ModelVersion
from tests.fuzzing import Case, fuzz_cases, malformed_corpus
from tests.worker.test_triage import receive
from worker.inference import ModelCache
from worker.limits import ImageLimits
from worker.triage import Candidate, _prepare_image, triage_study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def spool_file(case: Case, path: Path) -> Path:
    """The file the gateway would have spooled for ``case``: preamble, File Meta, data set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(case.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(case.sop_instance_uid)
    meta.TransferSyntaxUID = UID(case.transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fp:
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta)  # type: ignore[arg-type]
        fp.write(case.data)
    return path


def test_accepted_malformed_instances_are_recorded_as_unprocessable_with_the_reason(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion]
) -> None:
    study_uid = generate_uid()
    accepted = [c for c in malformed_corpus(study_uid) if c.expected == {0}]
    for case in accepted:
        path = spool_file(case, tmp_path / study_uid / f"{case.sop_instance_uid}.dcm")
        receive(store, path, study_uid, case.sop_instance_uid, "PA", "CHEST")
    activate(tau=0.0)

    outcome = triage_study(store, ModelCache(device="cpu", precision="fp32"), study_uid)

    for case in accepted:
        if case.worker_reason is None:
            assert case.sop_instance_uid not in outcome.skipped, case.name
        else:
            assert case.worker_reason in outcome.skipped[case.sop_instance_uid], case.name
    assert outcome.images_scored == sum(1 for c in accepted if c.worker_reason is None)


def test_mutated_files_become_a_score_or_a_skip_reason_never_an_error(tmp_path: Path) -> None:
    limits = ImageLimits()
    outcomes = {"scored": 0, "skipped": 0}
    for index, case in enumerate(fuzz_cases(150, seed=4)):
        path = spool_file(case, tmp_path / f"{index}.dcm")
        result, tensor = _prepare_image(
            Candidate(index, case.sop_instance_uid, str(path)), 32, limits
        )
        if tensor is None:
            assert result.skipped_reason, case.name
            assert len(result.skipped_reason) <= 256
            outcomes["skipped"] += 1
        else:
            assert tensor.shape == (3, 32, 32) and np.isfinite(tensor).all(), case.name
            outcomes["scored"] += 1
    assert outcomes["scored"] and outcomes["skipped"]
