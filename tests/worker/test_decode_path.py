"""Each scored image records which decoder read its pixels (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid
from sqlalchemy import select

from governance.db import Store
from governance.models import ImageInference, Instance, ModelVersion
from tests.worker.builders import radiograph, write
from tests.worker.test_triage import receive
from worker.decoders import NVIMGCODEC, glymur_available
from worker.inference import ModelCache
from worker.triage import triage_study


@pytest.mark.skipif(not glymur_available(), reason="glymur/libopenjp2 missing")
def test_decode_path_is_recorded_per_image(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion]
) -> None:
    study_uid = generate_uid()
    plain = radiograph(study_uid=study_uid, view="PA", seed=1)
    j2k = radiograph(study_uid=study_uid, view="AP", seed=2)
    j2k.compress(JPEG2000Lossless)
    for ds, view in ((plain, "PA"), (j2k, "AP")):
        path = write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
        receive(store, path, study_uid, ds.SOPInstanceUID, view, "CHEST")
    activate(tau=0.5)

    outcome = triage_study(store, ModelCache(device="cpu", precision="fp32"), study_uid)

    assert outcome.status == "triaged" and outcome.images_scored == 2
    with store.read() as session:
        paths = dict(
            session.execute(
                select(Instance.sop_instance_uid, ImageInference.decode_path).join(
                    ImageInference.instance
                )
            ).all()
        )
    # 96x80 for a 32 px input: one level down (48x40) still covers it.
    assert paths == {plain.SOPInstanceUID: "full", j2k.SOPInstanceUID: "j2k-r1"}


def test_gpu_decode_path_is_recorded(
    store: Store,
    tmp_path: Path,
    activate: Callable[..., ModelVersion],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in for nvImageCodec on CUDA (tests/worker/test_decoders.py): the label fits the
    # column on both stores.
    import torch

    from tests.worker.test_decoders import FakeNvimgcodec
    from worker.decoders import gpu_decoder
    from worker.preprocess import decode

    study_uid = generate_uid()
    ds = radiograph(study_uid=study_uid, view="PA", seed=3)
    ds.compress(JPEG2000Lossless)
    path = write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    receive(store, path, study_uid, ds.SOPInstanceUID, "PA", "CHEST")
    activate(tau=0.5)
    full = decode(pydicom.dcmread(path))
    fake = FakeNvimgcodec(lambda data: full[..., None])
    fake.shape = full.shape
    monkeypatch.setattr("worker.decoders._import_nvimgcodec", lambda: fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu_decoder.cache_clear()
    try:
        outcome = triage_study(store, ModelCache(device="cpu", precision="fp32"), study_uid)
    finally:
        gpu_decoder.cache_clear()

    assert outcome.status == "triaged" and outcome.images_scored == 1
    with store.read() as session:
        recorded = session.scalars(select(ImageInference.decode_path)).all()
    assert recorded == [NVIMGCODEC]
