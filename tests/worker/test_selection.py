"""Selection from the store's Instance columns: laterals are never opened, and a file whose header
disagrees with its row is skipped with a reason."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from governance.db import Store
from governance.models import ModelVersion
from governance.triage_results import PendingImage
from tests.worker.builders import radiograph, write
from tests.worker.test_triage import receive
from worker.inference import ModelCache
from worker.selection import header_mismatch, row_skip_reason
from worker.triage import select_images, triage_study

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def row(**changes: object) -> PendingImage:
    values: dict[str, object] = dict(
        instance_id=1,
        sop_instance_uid="1.2.3.4",
        path="/nonexistent/1.2.3.4.dcm",
        study_instance_uid="1.2.3",
        series_instance_uid=None,
        sop_class_uid=ComputedRadiographyImageStorage,
        modality="CR",
        view_position="PA",
        body_part="CHEST",
    )
    values.update(changes)
    return PendingImage(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"view_position": None, "body_part": None}, None),
        ({"view_position": "ll"}, "lateral view (LL)"),
        ({"view_position": "LATERAL"}, "lateral view (LATERAL)"),
        ({"view_position": "OBL"}, "view OBL is not PA or AP"),
        ({"body_part": "KNEE"}, "body part KNEE is not chest"),
        ({"modality": "CT"}, "modality CT is not CR or DX"),
        ({"modality": None}, "modality missing is not CR or DX"),
        ({"sop_class_uid": SecondaryCaptureImageStorage}, "secondary capture, not a radiograph"),
        (
            {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"},
            "SOP class 1.2.840.10008.5.1.4.1.1.2 is not a CR or DX image",
        ),
    ],
)
def test_row_skip_reason(changes: dict[str, object], reason: str | None) -> None:
    assert row_skip_reason(row(**changes)) == reason


def test_a_lateral_row_is_skipped_without_opening_its_file() -> None:
    lateral = row(view_position="LL", path="/does/not/exist.dcm")
    frontal = row(instance_id=2, sop_instance_uid="1.2.3.5")
    candidates, skipped = select_images([lateral, frontal], T0)
    assert [c.sop_instance_uid for c in candidates] == ["1.2.3.5"]
    assert [(s.sop_instance_uid, s.skipped_reason) for s in skipped] == [
        ("1.2.3.4", "lateral view (LL)")
    ]


def test_header_mismatch_names_what_differs() -> None:
    ds = radiograph(study_uid="1.2.3")
    agreeing = row(sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID)
    assert header_mismatch(ds, agreeing) is None
    assert header_mismatch(ds, row(sop_instance_uid=ds.SOPInstanceUID)) is None  # no series kept
    assert header_mismatch(ds, row(sop_instance_uid="9.9")) == (
        f"header disagrees with the store on SOP Instance UID ({ds.SOPInstanceUID})"
    )
    cases = {
        "view_position": ("AP", "view position (PA)"),
        "body_part": ("THORAX", "body part (CHEST)"),
        "modality": ("DX", "modality (CR)"),
        "sop_class_uid": (DigitalXRayImageStorageForPresentation, "SOP Class UID"),
        "study_instance_uid": ("1.2.4", "Study Instance UID (1.2.3)"),
    }
    for column, (value, named) in cases.items():
        reason = header_mismatch(ds, row(sop_instance_uid=ds.SOPInstanceUID, **{column: value}))
        assert reason is not None and named in reason, column


def test_triage_skips_a_lateral_row_unopened_and_a_file_that_disagrees_with_its_row(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion]
) -> None:
    study_uid = generate_uid()
    frontal = radiograph(study_uid=study_uid, seed=1)
    path = write(frontal, tmp_path / "frontal.dcm")
    receive(store, path, study_uid, frontal.SOPInstanceUID, "PA", "CHEST")
    lateral_uid = generate_uid()
    receive(store, path, study_uid, lateral_uid, "LL", "CHEST")
    path.unlink()  # both rows now point at a file that does not exist
    # The row says PA chest; the file it points at is a lateral.
    liar = radiograph(study_uid=study_uid, view="LL", seed=2)
    liar_path = write(liar, tmp_path / "liar.dcm")
    receive(store, liar_path, study_uid, liar.SOPInstanceUID, "PA", "CHEST")
    good = radiograph(study_uid=study_uid, view="AP", seed=3)
    good_path = write(good, tmp_path / "good.dcm")
    receive(store, good_path, study_uid, good.SOPInstanceUID, "AP", "CHEST")

    activate(tau=0.0)
    outcome = triage_study(store, ModelCache(device="cpu", precision="fp32"), study_uid)

    assert outcome.status == "triaged" and outcome.images_scored == 1
    assert outcome.skipped[lateral_uid] == "lateral view (LL)"  # not "file missing from spool"
    assert outcome.skipped[frontal.SOPInstanceUID] == "file missing from spool"
    assert outcome.skipped[liar.SOPInstanceUID] == (
        "header disagrees with the store on view position (LL)"
    )
