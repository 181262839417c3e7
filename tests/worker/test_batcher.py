"""Batcher: images of concurrent studies share forward passes; a lone study never waits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from governance.db import Store
from governance.models import ImageInference, Instance, ModelVersion
from tests.worker.test_triage import add_image
from worker.batcher import Batcher
from worker.inference import ModelCache, predict_logits
from worker.triage import triage_study

LONG = 120.0  # a wait the tests would notice: they join with a much shorter timeout


class Recorder:
    """A forward pass that returns each image's pixel sum and remembers its batch sizes."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[int] = []
        self.fail_on = fail_on

    def __call__(self, model: Any, images: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        if self.fail_on is not None and self.fail_on in images[:, 0, 0, 0]:
            raise RuntimeError("forward failed")
        return images.reshape(len(images), -1).sum(axis=1).astype(np.float64)


def images(*values: float) -> np.ndarray:
    return np.stack([np.full((1, 2, 2), v, dtype=np.float32) for v in values])


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_lone_study_is_scored_without_waiting_for_a_batch() -> None:
    forward = Recorder()
    batcher = Batcher(forward, batch_size=8, max_wait_s=LONG)
    with batcher.session():
        thread, out = in_thread(lambda: batcher.score("m", images(1, 2)))
        thread.join(30)
    assert not thread.is_alive(), "a lone study waited for a batch to fill"
    assert out[0].tolist() == [4.0, 8.0] and forward.batches == [2]


def test_images_of_studies_still_preparing_are_waited_for_and_scored_together() -> None:
    forward = Recorder()
    batcher = Batcher(forward, batch_size=8, max_wait_s=LONG)
    both_in = threading.Barrier(2)
    first_handed_in = threading.Event()

    def study(values: tuple[float, ...], first: bool) -> np.ndarray:
        with batcher.session():
            both_in.wait(30)
            if first:
                first_handed_in.set()
            else:  # still preparing while the first study's images wait
                first_handed_in.wait(30)
            return batcher.score("m", images(*values))

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(study, (1, 2), True)
        b = pool.submit(study, (3,), False)
        assert a.result(30).tolist() == [4.0, 8.0]
        assert b.result(30).tolist() == [12.0]
    assert forward.batches == [3]
    assert batcher.stats.batches == 1 and batcher.stats.requests == 2


def score_beside_a_preparing_study(batcher: Batcher, batch: np.ndarray) -> list[Any]:
    """Score ``batch`` while another study is in its session and never hands anything in."""
    entered, release = threading.Event(), threading.Event()

    def preparing() -> None:
        with batcher.session():
            entered.set()
            release.wait(30)

    other = threading.Thread(target=preparing, daemon=True)
    other.start()
    assert entered.wait(30)
    with batcher.session():
        thread, out = in_thread(lambda: batcher.score("m", batch))
        thread.join(30)
    release.set()
    other.join(30)
    assert not thread.is_alive(), "the images waited for the study that hands in nothing"
    return out


def test_a_full_batch_goes_without_waiting_for_studies_still_preparing() -> None:
    batcher = Batcher(Recorder(), batch_size=2, max_wait_s=LONG)
    assert score_beside_a_preparing_study(batcher, images(1, 2))[0].tolist() == [4.0, 8.0]


def test_an_image_waits_at_most_the_wait_for_a_study_that_hands_in_nothing() -> None:
    batcher = Batcher(Recorder(), batch_size=8, max_wait_s=0.05)
    assert score_beside_a_preparing_study(batcher, images(5))[0].tolist() == [20.0]


def test_a_failed_forward_fails_its_batch_only_and_the_batcher_goes_on() -> None:
    forward = Recorder(fail_on=9)
    batcher = Batcher(forward, batch_size=4, max_wait_s=0)
    with pytest.raises(RuntimeError, match="forward failed"):
        batcher.score("m", images(9))
    assert batcher.score("m", images(1)).tolist() == [4.0]


def test_images_for_different_models_are_never_mixed() -> None:
    forward = Recorder()
    batcher = Batcher(forward, batch_size=8, max_wait_s=LONG)
    gate = threading.Barrier(2)

    def study(model: str, value: float) -> np.ndarray:
        with batcher.session():
            gate.wait(30)
            return batcher.score(model, images(value))

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(study, "old", 1), pool.submit(study, "new", 2)
        assert a.result(30).tolist() == [4.0] and b.result(30).tolist() == [8.0]
    assert forward.batches == [1, 1]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Batcher(Recorder(), batch_size=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        Batcher(Recorder(), max_wait_s=-1)
    with pytest.raises(ValueError, match="images"):
        Batcher(Recorder(), batch_size=2).score("m", images(1, 2, 3))


def test_studies_triaged_together_record_the_scores_they_get_alone(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion]
) -> None:
    studies = [generate_uid() for _ in range(3)]
    for n, study_uid in enumerate(studies):
        add_image(store, tmp_path, study_uid, view="PA", seed=10 + n)
        add_image(store, tmp_path, study_uid, view="AP", seed=20 + n)
    cache = ModelCache(device="cpu", precision="fp32")
    activate("alone")
    for study_uid in studies:
        triage_study(store, cache, study_uid, batch_size=2)
    alone = probabilities(store, "alone")

    activate("together")
    batcher = Batcher(predict_logits, batch_size=8, max_wait_s=0.5)
    with ThreadPoolExecutor(len(studies)) as pool:
        outcomes = list(
            pool.map(
                lambda uid: triage_study(store, cache, uid, batch_size=2, batcher=batcher),
                studies,
            )
        )
    assert [o.status for o in outcomes] == ["triaged"] * 3
    together = probabilities(store, "together")
    assert together.keys() == alone.keys() and len(together) == 6
    for uid, p in alone.items():
        assert together[uid] == pytest.approx(p, abs=1e-5)
    assert batcher.stats.images == 6


def probabilities(store: Store, version: str) -> dict[str, float]:
    with store.read() as session:
        model_id = session.scalar(select(ModelVersion.id).where(ModelVersion.version == version))
        rows = session.execute(
            select(Instance.sop_instance_uid, ImageInference.probability)
            .join(ImageInference.instance)
            .where(ImageInference.model_version_id == model_id)
        )
        scored: dict[str, float] = {}
        for uid, p in rows:
            assert p is not None, f"{uid} was not scored"
            scored[uid] = p
        return scored
