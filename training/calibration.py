"""Calibration of the logit: temperature scaling and prior-shift correction.

Serving computes ``sigmoid(logit / T)`` (:func:`worker.inference.calibrate`), with T fitted
here on validation by minimising the negative log-likelihood (Guo et al. 2017). Dividing by a
positive T never reorders scores, so AUC is unchanged.

Two shifts of the logit are folded into the exported network's final bias, so that what the
worker computes is the calibrated probability without it knowing about them:

* ``BCEWithLogitsLoss(pos_weight=w)`` trains the logit to ``log(w) + logit(p)``;
  :func:`pos_weight_offset` (``-log w``) takes that back.
* :func:`prior_shift_offset` moves probabilities calibrated at one prevalence to another
  (Saerens et al. 2002): ``logit(pi_new) - logit(pi_old)``, added after the temperature.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit

logger = logging.getLogger(__name__)

LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary negative log-likelihood of ``sigmoid(logits / temperature)``.

    Raises
    ------
    ValueError
        ``temperature`` is not positive, or the arrays differ in length.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64).ravel() / temperature
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.shape != y.shape:
        raise ValueError(f"logits and labels differ in length: {z.shape} vs {y.shape}")
    return float(-np.mean(y * log_expit(z) + (1 - y) * log_expit(-z)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises :func:`nll` on these logits and labels.

    Raises
    ------
    ValueError
        Empty or mismatched inputs, or labels of one class only.
    """
    y = np.asarray(labels).ravel()
    if y.size == 0 or y.min() == y.max():
        raise ValueError("labels must hold both classes to fit a temperature")
    result = minimize_scalar(
        lambda log_t: nll(logits, y, math.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = float(math.exp(result.x))
    logger.info(
        "temperature %.4f: NLL %.4f -> %.4f",
        temperature,
        nll(logits, y),
        nll(logits, y, temperature),
    )
    return temperature


def logit(p: float) -> float:
    """log(p / (1 - p)).

    Raises
    ------
    ValueError
        ``p`` is not strictly between 0 and 1.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"a prevalence must be strictly between 0 and 1, got {p}")
    return math.log(p / (1.0 - p))


def prior_shift_offset(source_prevalence: float, target_prevalence: float) -> float:
    """The logit offset that moves calibrated probabilities from one prevalence to another."""
    return logit(target_prevalence) - logit(source_prevalence)


def checked_pos_weight(pos_weight: float) -> float:
    """``pos_weight`` (BCEWithLogitsLoss's weight of the positive class), once it is positive.

    Raises
    ------
    ValueError
        ``pos_weight`` is not positive.
    """
    if not pos_weight > 0:
        raise ValueError(f"pos_weight must be positive, got {pos_weight}")
    return pos_weight


def pos_weight_offset(pos_weight: float) -> float:
    """The logit offset that undoes BCEWithLogitsLoss's ``pos_weight`` (``-log w``); a weight
    that is not positive raises ``ValueError`` (:func:`checked_pos_weight`)."""
    return -math.log(checked_pos_weight(pos_weight))


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``sigmoid(logits / temperature)``, float64: what the worker computes."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return np.asarray(expit(np.asarray(logits, dtype=np.float64) / temperature))
