"""From a trained network to what is registered: calibration, operating points, metrics.

Shared by ``cxr-triage train`` and the demo model. Everything is chosen on validation only and
then frozen for test: the temperature, the prior-shift correction, and every operating
point's tau. The logit shifts are folded into the network's final bias, so the exported file
gives ``sigmoid(output / T)`` = the calibrated probability the report describes.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training import calibration, metrics
from training.engine import predict
from training.export import fold_logit_shift, reference_distribution
from training.thresholds import POLICY_CRITERIA, OperatingPoint, operating_points

logger = logging.getLogger(__name__)


@dataclass
class Scores:
    """One split's labels, raw logits (before any shift) and served probabilities."""

    labels: np.ndarray
    raw_logits: np.ndarray
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def raw_probs(self) -> np.ndarray:
        return calibration.probabilities(self.raw_logits)


@dataclass
class Finalized:
    """The calibrated model's numbers; ``logit_shift`` is already folded into the network."""

    temperature: float
    logit_shift: float
    calibration: dict[str, Any]
    operating_points: dict[str, OperatingPoint]
    val: Scores
    test: Scores | None
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    reference: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The JSON-ready part: temperature, shift, calibration, operating points, metrics."""
        return {
            "temperature": self.temperature,
            "logit_shift": self.logit_shift,
            "calibration": self.calibration,
            "operating_points": {k: v.as_dict() for k, v in self.operating_points.items()},
            "val_metrics": self.val_metrics,
            "test_metrics": self.test_metrics,
            "reference_distribution": self.reference,
        }


def eager_scores(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    **kwargs: Any,
) -> Scores:
    """A split's labels and raw logits from the eager network (the demo; ``cxr-triage
    train`` scores through the exported file instead)."""
    logits, labels = predict(model, loader, device, **kwargs)
    return Scores(labels, logits)


def finalize(
    model: nn.Module,
    val: Scores,
    test: Scores | None,
    *,
    pos_weight: float,
    deployment_prevalence: float | None = None,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.85,
    n_bootstrap: int = 1000,
    seed: int = 0,
    val_groups: list[str] | None = None,
    test_groups: list[str] | None = None,
) -> Finalized:
    """Calibrate on validation, choose the operating points there, report both splits.

    ``val`` and ``test`` hold the raw logits of the network as it will be served (scored
    through the exported file at the serving precision by ``cxr-triage train``); the groups
    (patients) make the bootstrap resample patients.

    Steps: the logit offset of ``pos_weight`` is undone; T is fitted on validation by NLL;
    with ``deployment_prevalence`` the calibrated probabilities are moved from the
    validation prevalence to it; the total shift (``-log w + delta * T``) is folded into the
    network's bias. Operating points are chosen on validation and applied frozen to test.

    Raises
    ------
    ValueError
        ``deployment_prevalence`` is not strictly between 0 and 1, or a split lacks a class.
    """
    offset = calibration.pos_weight_offset(pos_weight)
    temperature = calibration.fit_temperature(val.raw_logits + offset, val.labels)
    delta = 0.0
    val_prevalence = float(val.labels.mean())
    if deployment_prevalence is not None:
        delta = calibration.prior_shift_offset(val_prevalence, deployment_prevalence)
    shift = offset + delta * temperature
    fold_logit_shift(model, shift)
    calib: dict[str, Any] = {
        "method": "temperature scaling (NLL on validation)",
        "temperature": temperature,
        "pos_weight": pos_weight,
        "pos_weight_offset": offset,
        "validation_prevalence": val_prevalence,
        "deployment_prevalence": deployment_prevalence,
        "prior_shift_offset": delta,
    }
    for scores, name in ((val, "val"), (test, "test")):
        if scores is None:
            continue
        scores.probs = calibration.probabilities(scores.raw_logits + shift, temperature)
        at_val_prevalence = calibration.probabilities(scores.raw_logits + offset, temperature)
        calib[name] = {
            "nll_before": calibration.nll(scores.raw_logits, scores.labels),
            "nll_after": calibration.nll(scores.raw_logits + offset, scores.labels, temperature),
            "brier_before": metrics.brier(scores.labels, scores.raw_probs),
            "brier_after": metrics.brier(scores.labels, at_val_prevalence),
            "ece_before": metrics.ece(scores.labels, scores.raw_probs),
            "ece_after": metrics.ece(scores.labels, at_val_prevalence),
        }
    points = operating_points(
        val.labels,
        val.probs,
        target_sensitivity=target_sensitivity,
        target_specificity=target_specificity,
    )
    balanced_tau = points[POLICY_CRITERIA["balanced"]].tau
    val_metrics = _split_metrics(val, points, balanced_tau, n_bootstrap, seed, val_groups)
    test_metrics = (
        _split_metrics(test, points, balanced_tau, n_bootstrap, seed, test_groups)
        if test is not None
        else None
    )
    logger.info(
        "T=%.3f shift=%.3f; val AUC %.4f%s",
        temperature,
        shift,
        val_metrics["overall"]["auc"]["value"],
        "" if test_metrics is None else f", test AUC {test_metrics['overall']['auc']['value']:.4f}",
    )
    return Finalized(
        temperature,
        shift,
        calib,
        points,
        val,
        test,
        val_metrics,
        test_metrics,
        reference_distribution(val.probs),
    )


def _split_metrics(
    scores: Scores,
    points: dict[str, OperatingPoint],
    balanced_tau: float,
    n_bootstrap: int,
    seed: int,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Overall metrics (at the balanced tau) and each frozen operating point's metrics."""
    summarize = functools.partial(
        metrics.summarize, n_bootstrap=n_bootstrap, seed=seed, groups=groups
    )
    return {
        "overall": summarize(scores.labels, scores.probs, balanced_tau),
        "operating_points": {
            name: summarize(scores.labels, scores.probs, point.tau, ranking=False)
            for name, point in points.items()
        },
        "prevalence": float(scores.labels.mean()) if len(scores.labels) else math.nan,
    }
