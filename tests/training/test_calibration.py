"""Temperature scaling, prior shift and the metrics that judge calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training import calibration, metrics


def _calibrated_set(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose sigmoid is the true probability of the label."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < calibration.probabilities(logits)).astype(np.int64)
    return logits, labels


def test_temperature_fixes_an_over_confident_set_and_keeps_auc():
    logits, labels = _calibrated_set()
    over = 4.0 * logits  # deliberately over-confident
    temperature = calibration.fit_temperature(over, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    assert calibration.nll(over, labels, temperature) < calibration.nll(over, labels) - 0.1
    before = metrics.ece(labels, calibration.probabilities(over))
    after = metrics.ece(labels, calibration.probabilities(over, temperature))
    assert after < before / 2
    assert roc_auc_score(labels, calibration.probabilities(over, temperature)) == pytest.approx(
        roc_auc_score(labels, over), abs=1e-12
    )


def test_temperature_of_a_calibrated_set_is_near_one():
    logits, labels = _calibrated_set(seed=1)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_fit_temperature_refuses_one_class():
    with pytest.raises(ValueError, match="both classes"):
        calibration.fit_temperature(np.array([1.0, 2.0]), np.array([1, 1]))


def test_prior_shift_moves_the_mean_probability_to_the_new_prevalence():
    logits, labels = _calibrated_set(40000, seed=2)
    delta = calibration.prior_shift_offset(labels.mean(), 0.1)
    # A deployment with 10% prevalence: same images per class, fewer positives.
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    keep = np.r_[negatives, positives[: len(negatives) // 9]]
    shifted = calibration.probabilities(logits[keep] + delta)
    assert labels[keep].mean() == pytest.approx(0.1, abs=0.001)
    assert shifted.mean() == pytest.approx(0.1, abs=0.01)
    assert metrics.ece(labels[keep], shifted) < 0.02
    assert metrics.ece(labels[keep], calibration.probabilities(logits[keep])) > 0.1
    assert calibration.prior_shift_offset(0.3, 0.3) == 0.0
    with pytest.raises(ValueError, match="prevalence"):
        calibration.prior_shift_offset(0.0, 0.5)


def test_pos_weight_offset_undoes_weighted_training():
    # Weighted BCE's optimum for a constant predictor: logit = log(w * p / (1 - p)).
    p, w = 0.25, 3.0
    trained = math.log(w * p / (1 - p))
    assert calibration.probabilities(np.array([trained + calibration.pos_weight_offset(w)]))[
        0
    ] == pytest.approx(p)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="pos_weight must be positive"):
            calibration.pos_weight_offset(bad)


def test_summary_metrics_on_a_known_confusion_matrix():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.2, 0.1, 0.1, 0.0])
    summary = metrics.summarize(labels, probs, 0.5, n_bootstrap=200, seed=1)
    assert summary["confusion"] == {"tp": 3, "fp": 1, "tn": 5, "fn": 1}
    assert summary["sensitivity"]["value"] == pytest.approx(0.75)
    assert summary["specificity"]["value"] == pytest.approx(5 / 6)
    assert summary["precision"]["value"] == pytest.approx(0.75)
    assert summary["accuracy"]["value"] == pytest.approx(0.8)
    assert summary["f1"]["value"] == pytest.approx(0.75)
    assert summary["auc"]["value"] == pytest.approx(roc_auc_score(labels, probs))
    assert summary["brier"]["value"] == pytest.approx(np.mean((probs - labels) ** 2))
    for name in ("auc", "sensitivity", "brier", "ece"):
        low, high = summary[name]["ci95"]
        assert low <= summary[name]["value"] <= high


def test_ece_is_zero_for_perfect_bins_and_large_for_wrong_ones():
    labels = np.array([0, 0, 1, 1])
    assert metrics.ece(labels, np.array([0.0, 0.0, 1.0, 1.0])) == 0.0
    assert metrics.ece(labels, np.array([1.0, 1.0, 0.0, 0.0])) == 1.0


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.summarize(np.array([0, 2]), np.array([0.1, 0.2]), 0.5)
    with pytest.raises(ValueError, match="length"):
        metrics.brier(np.array([0, 1]), np.array([0.1]))
