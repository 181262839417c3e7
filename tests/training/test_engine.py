"""The training loop's device discipline, patience and checkpoints, on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from training import metrics
from training.checkpoints import FitResult
from training.engine import EpochStats, Evaluation, evaluate, record_epoch, train_one_epoch
from training.optimisation import make_criterion, make_optimizer


def _tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
    )


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, 8, 8, generator=generator), torch.tensor([0.0, 1.0, 0.0, 1.0]))
        for _ in range(3)
    ]


def test_every_loss_is_computed_on_the_training_device() -> None:
    """A GPU run on a CPU: the model, pos_weight and every tensor on the ``meta`` device.

    Any loss or metric that mixes a host tensor with the device's (the validation loss on
    CPU logits with pos_weight on the GPU stopped GPU runs after one epoch) fails here.
    """
    device = torch.device("meta")
    model = _tiny_model().to(device)
    criterion = make_criterion(2.0, device)
    optimizer = make_optimizer(model, 1e-3, 1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=3)
    stats = train_one_epoch(
        model, criterion, optimizer, scheduler, _batches(), device, 0, progress=False
    )
    assert isinstance(stats, EpochStats) and stats.images == 12
    assert stats.loss.device.type == "meta"  # summed where it is computed, never read back
    val = evaluate(model, criterion, _batches(), device)
    assert val.loss.device.type == "meta" and val.logits.device.type == "meta"
    assert val.logits.shape == (12,) and val.labels.shape == (12,)


def test_evaluate_on_cpu_gives_the_mean_weighted_loss_and_auc() -> None:
    torch.manual_seed(0)
    model = _tiny_model().eval()
    criterion = make_criterion(3.0, torch.device("cpu"))
    val = evaluate(model, criterion, _batches(), torch.device("cpu"))
    expected = nn.functional.binary_cross_entropy_with_logits(
        val.logits, val.labels, pos_weight=torch.tensor(3.0)
    )
    torch.testing.assert_close(val.loss, expected)
    assert 0.0 <= val.auc() <= 1.0


def _evaluation(auc_order: list[float]) -> Evaluation:
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0])
    return Evaluation(torch.tensor(0.5), torch.tensor(auc_order), labels)


def test_patience_counts_only_after_the_warm_up() -> None:
    model = _tiny_model()
    result = FitResult()
    stats = EpochStats(torch.tensor(0.7), 4, 1.0, 1e-3)
    good, bad = _evaluation([0.1, 0.9, 0.2, 0.8]), _evaluation([0.9, 0.1, 0.8, 0.2])
    record_epoch(result, model, 0, stats, good, warmup_epochs=3)
    for epoch in (1, 2):  # no better AUC while the rate still rises: patience untouched
        record_epoch(result, model, epoch, stats, bad, warmup_epochs=3)
    assert result.stale_epochs == 0 and result.best_epoch == 0
    record_epoch(result, model, 3, stats, bad, warmup_epochs=3)
    assert result.stale_epochs == 1


def test_a_non_finite_training_loss_stops_at_the_epoch_end() -> None:
    stats = EpochStats(torch.tensor(math.nan), 4, 1.0, 1e-3)
    with pytest.raises(FloatingPointError, match="lower --lr"):
        record_epoch(FitResult(), _tiny_model(), 0, stats, _evaluation([0.1] * 4), 0)


def test_patient_bootstrap_keeps_a_patients_images_together() -> None:
    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3", "p4", "p5"])
    samples = metrics.cluster_bootstrap_indices(groups, 200, seed=1)
    assert len(samples) == 200
    for sample in samples:
        counts = np.bincount(sample, minlength=len(groups))
        assert counts[0] == counts[1]  # two images of p1: always drawn together
        assert counts[3] == counts[4] == counts[5]
        assert len(set(groups[sample])) <= 5
    assert len({len(s) for s in samples}) > 1  # resamples patients, not a fixed image count


def test_patient_bootstrap_widens_intervals_for_correlated_images() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 2, 40), 5)  # 40 patients, 5 images each, one label
    probs = np.clip(np.repeat(rng.random(40), 5) * 0.5 + labels * 0.3, 0, 1)
    groups = np.repeat([f"p{i}" for i in range(40)], 5)
    by_image = metrics.summarize(labels, probs, 0.5, n_bootstrap=300, seed=0)
    by_patient = metrics.summarize(labels, probs, 0.5, n_bootstrap=300, seed=0, groups=groups)
    width = lambda s: s["auc"]["ci95"][1] - s["auc"]["ci95"][0]  # noqa: E731
    assert by_patient["auc"]["value"] == by_image["auc"]["value"]
    assert width(by_patient) > 1.5 * width(by_image)


def test_study_level_takes_the_highest_image_and_any_positive() -> None:
    labels = np.array([0, 1, 0, 0, 1])
    probs = np.array([0.2, 0.7, 0.9, 0.1, 0.4])
    studies = ["s1", "s1", "s2", "s2", "s3"]
    y, p, keys = metrics.study_level(labels, probs, studies)
    assert keys == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(y, [1, 0, 1])
    np.testing.assert_allclose(p, [0.7, 0.9, 0.4])


def test_make_criterion_refuses_a_weight_that_is_not_positive() -> None:
    for bad in (0.0, -2.0, math.nan):
        with pytest.raises(ValueError, match="pos_weight must be positive"):
            make_criterion(bad, torch.device("cpu"))
