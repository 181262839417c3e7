"""Threshold pickers on hand-made scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import threshold_metrics
from training.thresholds import (
    max_f1_threshold,
    operating_points,
    threshold_for_sensitivity,
    threshold_for_specificity,
    youden_threshold,
)

# Ten images, sorted by score. Flagging score >= tau:
#   tau 0.9 -> TP 1 FP 0; 0.8 -> TP 2 FP 0; 0.7 -> TP 2 FP 1; 0.6 -> TP 3 FP 1;
#   0.5 -> TP 4 FP 1; 0.4 -> TP 4 FP 2; 0.3 -> TP 4 FP 3; 0.2 -> TP 5 FP 3; 0.1 -> 5/4;
#   0.05 -> 5/5. Five positives, five negatives.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
LABELS = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0])


def test_youden_picks_the_largest_tpr_minus_fpr():
    # J at 0.5: 4/5 - 1/5 = 0.6 (the maximum); at 0.2: 1 - 3/5 = 0.4.
    assert youden_threshold(LABELS, SCORES) == 0.5


def test_max_f1():
    # F1 at 0.5: 8 / (8 + 1 + 1) = 0.8; at 0.2: 10 / (10 + 3) = 0.77; at 0.8: 4 / 7.
    assert max_f1_threshold(LABELS, SCORES) == 0.5


@pytest.mark.parametrize(
    ("target", "tau"), [(1.0, 0.2), (0.8, 0.5), (0.6, 0.6), (0.4, 0.8), (0.95, 0.2), (0.2, 0.9)]
)
def test_target_sensitivity_is_the_highest_tau_that_reaches_it(target, tau):
    assert threshold_for_sensitivity(LABELS, SCORES, target) == tau
    assert threshold_metrics(LABELS, SCORES, tau)["sensitivity"] >= target


@pytest.mark.parametrize(
    ("target", "tau"), [(1.0, 0.8), (0.8, 0.5), (0.6, 0.4), (0.4, 0.2), (0.85, 0.8), (0.2, 0.1)]
)
def test_target_specificity_is_the_lowest_tau_that_reaches_it(target, tau):
    assert threshold_for_specificity(LABELS, SCORES, target) == tau
    assert threshold_metrics(LABELS, SCORES, tau)["specificity"] >= target


def test_ties_are_one_candidate():
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.7, 0.7, 0.3, 0.3])
    assert youden_threshold(labels, scores) == 0.7
    assert threshold_for_sensitivity(labels, scores, 1.0) == 0.3


def test_specificity_unreachable_gives_a_tau_above_every_score():
    labels = np.array([0, 1, 1])
    scores = np.array([0.9, 0.5, 0.4])
    tau = threshold_for_specificity(labels, scores, 1.0)
    assert tau > 0.9
    assert threshold_metrics(labels, scores, tau)["specificity"] == 1.0


def test_operating_points_report_their_validation_metrics():
    points = operating_points(LABELS, SCORES, target_sensitivity=0.95, target_specificity=0.85)
    assert set(points) == {"max_f1", "youden", "target_sensitivity", "target_specificity"}
    assert points["target_sensitivity"].tau == 0.2
    assert points["target_sensitivity"].validation["sensitivity"] == 1.0
    assert points["target_specificity"].tau == 0.8
    assert points["target_specificity"].validation["specificity"] == 1.0
    assert points["youden"].validation["f1"] == pytest.approx(0.8)


@pytest.mark.parametrize("bad", [np.array([1, 1, 1]), np.array([0, 0, 0])])
def test_one_class_is_refused(bad):
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold(bad, np.array([0.1, 0.2, 0.3]))


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="sensitivity"):
        threshold_for_sensitivity(LABELS, SCORES, 0.0)
    with pytest.raises(ValueError, match="specificity"):
        threshold_for_specificity(LABELS, SCORES, 1.5)
