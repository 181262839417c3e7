"""Image limits before decoding, images without content, and studies that kill their worker."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance import triage_results
from governance.db import Store
from governance.models import ImageInference, Instance, ModelVersion, Study
from tests.worker.builders import radiograph, write
from tests.worker.test_triage import add_image, receive
from worker import tasks
from worker.celery_app import ProcessContext
from worker.inference import ModelCache
from worker.limits import ImageLimits, content_skip_reason, header_skip_reason
from worker.triage import triage_study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _ds(**values: object) -> Dataset:
    ds = radiograph(study_uid=generate_uid(), shape=(12, 10))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"Rows": 12288, "Columns": 12288}, "12288 x 12288 pixels is over the limit of 50"),
        ({"Rows": 0}, "Rows or Columns missing or zero"),
        ({"NumberOfFrames": 9}, "9 frames, over the limit of 4"),
        ({"NumberOfFrames": 0}, "Number of Frames is not a positive integer"),
        ({"BitsStored": 20}, "Bits Stored 20 is not within Bits Allocated"),
        ({"BitsAllocated": 32, "BitsStored": 32}, "Bits Allocated 32 is not 1, 8 or 16"),
        ({"SamplesPerPixel": 4}, "Samples per Pixel 4 is not 1 or 3"),
        ({"Rows": 200}, "Pixel Data holds 240 bytes, Rows x Columns x frames needs 4000"),
    ],
)
def test_the_header_rules_out_what_cannot_be_decoded_safely(
    values: dict[str, object], reason: str
) -> None:
    assert reason in (header_skip_reason(_ds(**values), ImageLimits()) or "")


def test_a_well_formed_header_passes_and_missing_pixel_data_does_not() -> None:
    assert header_skip_reason(_ds(), ImageLimits()) is None
    ds = _ds()
    del ds.PixelData
    assert header_skip_reason(ds, ImageLimits()) == "no Pixel Data"
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=0)


def test_an_image_without_content_is_not_scored() -> None:
    flat = np.full((8, 8), 1000, dtype=np.uint16)
    assert "no content" in (content_skip_reason(flat, np.zeros((4, 4))) or "")
    almost = flat.copy()
    almost[0, 0] = 1002
    assert "no content" in (
        content_skip_reason(almost, np.random.default_rng(0).random((4, 4))) or ""
    )
    label = np.zeros((100, 100), dtype=np.uint16)
    label[0, :3] = 4095  # a burnt-in mark on a black field: constant after preprocessing
    assert "after preprocessing" in (content_skip_reason(label, np.zeros((4, 4))) or "")
    image = np.arange(64, dtype=np.uint16).reshape(8, 8)
    assert content_skip_reason(image, image / 63.0) is None


def _rle_bomb(study_uid: str, size: int = 12288) -> Dataset:
    """A tiny RLE file declaring ``size`` x ``size`` pixels (about 300 MB once decoded)."""
    ds = radiograph(study_uid=study_uid, seed=7)
    ds.Rows = ds.Columns = size
    # One RLE segment header and a few bytes: decoding it would allocate the whole image.
    header = np.zeros(16, dtype="<u4")
    header[0], header[1] = 2, 64
    ds.PixelData = encapsulate([header.tobytes() + b"\x81\x00" * 8])
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def test_pixel_bombs_broken_codestreams_and_blank_images_are_skipped_the_rest_scored(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion]
) -> None:
    study_uid = generate_uid()
    good = [add_image(store, tmp_path, study_uid, seed=s) for s in (1, 2)]
    bomb = _rle_bomb(study_uid)
    write(bomb, tmp_path / study_uid / "bomb.dcm")
    broken = radiograph(study_uid=study_uid, seed=3)
    broken.PixelData = encapsulate([b"\xff" * 64])  # not an RLE stream at all
    broken.file_meta.TransferSyntaxUID = RLELossless
    write(broken, tmp_path / study_uid / "broken.dcm")
    blank = radiograph(study_uid=study_uid, seed=4)
    blank.PixelData = np.zeros((96, 80), dtype=np.uint16).tobytes()
    write(blank, tmp_path / study_uid / "blank.dcm")
    long_body = radiograph(study_uid=study_uid, body_part="X" * 400, seed=5)
    write(long_body, tmp_path / study_uid / "long.dcm")
    for ds, name in ((bomb, "bomb"), (broken, "broken"), (blank, "blank"), (long_body, "long")):
        receive(
            store, tmp_path / study_uid / f"{name}.dcm", study_uid, ds.SOPInstanceUID, "PA", "CHEST"
        )
    activate(tau=0.0)

    tracemalloc.start()
    try:
        outcome = triage_study(store, ModelCache(device="cpu", precision="fp32"), study_uid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 100 << 20  # the bomb would need 300 MB
    assert outcome.status == "triaged" and outcome.images_scored == 2
    skipped = outcome.skipped
    assert "12288 x 12288 pixels is over the limit" in skipped[str(bomb.SOPInstanceUID)]
    assert "decode" in skipped[str(broken.SOPInstanceUID)]
    assert "no content" in skipped[str(blank.SOPInstanceUID)]
    assert len(skipped[str(long_body.SOPInstanceUID)]) <= 256
    with store.read() as session:
        scored = session.scalars(
            select(Instance.sop_instance_uid)
            .join(ImageInference.instance)
            .where(ImageInference.probability.is_not(None))
        ).all()
    assert sorted(scored) == sorted(good)


def test_a_study_delivered_too_often_is_parked_not_looped(
    store: Store,
    tmp_path: Path,
    activate: Callable[..., ModelVersion],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(max_deliveries=3, device="cpu", precision="fp32")
    study_uid = generate_uid()
    add_image(store, tmp_path, study_uid, seed=1)
    activate(tau=0.0)
    context = tasks.make_context(settings, store)
    monkeypatch.setattr(tasks, "_context", ProcessContext(lambda _: context))
    monkeypatch.setattr(tasks.triage_study_task.app, "cxr_settings", settings, raising=False)

    def deliveries() -> tuple[int, str, str | None]:
        with store.read() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            assert study is not None
            return study.deliveries, study.status, study.status_detail

    assert tasks.triage_study_task.run(study_uid)["status"] == "triaged"
    assert deliveries()[:2] == (0, "triaged")  # a finished task does not count

    # A new image, and three deliveries whose worker died scoring it (nothing reset the
    # count), then a fourth.
    add_image(store, tmp_path, study_uid, seed=2)
    store.run(lambda s: setattr(s.scalar(select(Study)), "deliveries", 3))
    assert tasks.triage_study_task.run(study_uid) is None
    count, status, detail = deliveries()
    assert (count, status) == (4, "failed")
    assert detail is not None and "delivered 4 times" in detail


def test_a_run_is_counted_in_the_transaction_that_begins_it(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion]
) -> None:
    study_uid = generate_uid()
    add_image(store, tmp_path, study_uid, seed=1)

    def start() -> triage_results.TriagePlan:
        return store.run(lambda s: triage_results.start(s, study_uid, max_deliveries=2))

    def counted() -> tuple[int, str]:
        with store.read() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            assert study is not None
            return study.deliveries, study.status

    assert start().model is None and counted() == (0, "no_model")  # finished at once
    activate(tau=0.0)
    for runs in (1, 2):  # runs that began scoring and never recorded (their worker died)
        assert start().parked is None and counted() == (runs, "triaging")
    parked = start().parked
    assert parked is not None and "delivered 3 times" in parked
    assert counted() == (3, "failed")  # kept: only a person's retry starts it again
