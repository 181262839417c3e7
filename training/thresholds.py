"""Operating points: the tau that meets a criterion on validation, then frozen for test.

Every picker returns one of the scores themselves, so ``probability >= tau`` (the worker's
rule) reproduces exactly the validation counts it was chosen on. The policy's operating
points map onto them: ``triage`` = target sensitivity (miss few), ``balanced`` = Youden's J,
``precision`` = target specificity (few false alarms); max F1 is reported beside them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from governance.policies import SOP_CRITERIA
from training.metrics import threshold_metrics

logger = logging.getLogger(__name__)

POLICY_CRITERIA = SOP_CRITERIA


def _curve(
    labels: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Candidate taus (distinct scores, descending) and TP, FP counts when flagging >= tau."""
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError("labels and probs must be non-empty and of equal length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if y.min() == y.max():
        raise ValueError("labels must hold both classes to choose a threshold")
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(p)), y.size - 1]
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(1 - y)[last_of_run]
    return p[last_of_run], tp, fp, int(y.sum()), int((1 - y).sum())


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The tau maximising sensitivity + specificity - 1 (the highest tau among ties).

    Raises
    ------
    ValueError
        Empty or mismatched inputs, or only one class.
    """
    taus, tp, fp, pos, neg = _curve(labels, probs)
    j = tp / pos - fp / neg
    return float(taus[int(np.argmax(j))])


def max_f1_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The tau maximising F1 (the highest tau among ties)."""
    taus, tp, fp, pos, _ = _curve(labels, probs)
    f1 = 2 * tp / (2 * tp + fp + (pos - tp))
    return float(taus[int(np.argmax(f1))])


def _reaching(
    labels: np.ndarray,
    probs: np.ndarray,
    metric: Literal["sensitivity", "specificity"],
    target: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate taus (descending) and the indices of those at which ``metric`` reaches
    ``target``.

    Raises
    ------
    ValueError
        ``target`` is not in (0, 1], or the inputs are unusable.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target {metric} must be in (0, 1], got {target}")
    taus, tp, fp, pos, neg = _curve(labels, probs)
    rate = tp / pos if metric == "sensitivity" else 1.0 - fp / neg
    return taus, np.flatnonzero(rate >= target - 1e-12)


def threshold_for_sensitivity(labels: np.ndarray, probs: np.ndarray, target: float) -> float:
    """The highest tau whose sensitivity reaches ``target`` (the lowest score always does:
    flagging everything finds every positive).

    Raises
    ------
    ValueError
        ``target`` is not in (0, 1], or the inputs are unusable.
    """
    taus, reached = _reaching(labels, probs, "sensitivity", target)
    return float(taus[int(reached[0])])


def threshold_for_specificity(labels: np.ndarray, probs: np.ndarray, target: float) -> float:
    """The lowest tau whose specificity reaches ``target``; where even the highest score lets
    too many negatives through, a tau just above it (nothing is flagged).

    Raises
    ------
    ValueError
        ``target`` is not in (0, 1], or the inputs are unusable.
    """
    taus, reached = _reaching(labels, probs, "specificity", target)
    if reached.size == 0:
        return float(np.nextafter(taus[0], math.inf))
    return float(taus[int(reached[-1])])


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A named tau, how it was chosen, and its metrics on the set it was chosen on."""

    name: str
    criterion: str
    tau: float
    target: float | None
    validation: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def operating_points(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.85,
) -> dict[str, OperatingPoint]:
    """Max F1, Youden's J, target sensitivity and target specificity, chosen on these scores.

    Returns
    -------
    dict
        ``max_f1``, ``youden``, ``target_sensitivity``, ``target_specificity`` ->
        :class:`OperatingPoint` with the metrics at its tau on these same scores.
    """
    chosen = {
        "max_f1": ("maximise F1", max_f1_threshold(labels, probs), None),
        "youden": ("maximise sensitivity + specificity - 1", youden_threshold(labels, probs), None),
        "target_sensitivity": (
            f"sensitivity >= {target_sensitivity:g}",
            threshold_for_sensitivity(labels, probs, target_sensitivity),
            target_sensitivity,
        ),
        "target_specificity": (
            f"specificity >= {target_specificity:g}",
            threshold_for_specificity(labels, probs, target_specificity),
            target_specificity,
        ),
    }
    return {
        name: OperatingPoint(name, criterion, tau, target, threshold_metrics(labels, probs, tau))
        for name, (criterion, tau, target) in chosen.items()
    }
