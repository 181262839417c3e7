"""Binary classification metrics with bootstrap confidence intervals.

A study is flagged when its probability reaches tau (``probability >= tau``), as the worker
does. Calibration error (ECE) is the binary reliability error: bins of predicted probability,
weighted gap between the mean prediction and the fraction of positives in each bin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from governance.policies import flag_mask

logger = logging.getLogger(__name__)

THRESHOLD_METRICS = ("accuracy", "f1", "precision", "sensitivity", "specificity")


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probs differ in length: {y.shape} vs {p.shape}")
    if y.size == 0:
        raise ValueError("labels must not be empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(p).all():
        raise ValueError("probs must be finite")
    return y, p


def confusion(labels: np.ndarray, probs: np.ndarray, tau: float) -> dict[str, int]:
    """TP, FP, TN, FN when flagging ``probs >= tau``."""
    y, p = _check(labels, probs)
    flagged = flag_mask(p, tau)
    return {
        "tp": int((flagged & (y == 1)).sum()),
        "fp": int((flagged & (y == 0)).sum()),
        "tn": int((~flagged & (y == 0)).sum()),
        "fn": int((~flagged & (y == 1)).sum()),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _threshold_metrics(
    tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray
) -> dict[str, np.ndarray]:
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def threshold_metrics(labels: np.ndarray, probs: np.ndarray, tau: float) -> dict[str, float]:
    """Accuracy, F1, precision, sensitivity (recall), specificity at ``tau``; NaN if undefined."""
    c = confusion(labels, probs, tau)
    values = _threshold_metrics(*(np.array(c[k]) for k in ("tp", "fp", "tn", "fn")))
    return {k: float(v) for k, v in values.items()}


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared error of the probabilities."""
    y, p = _check(labels, probs)
    return float(np.mean((p - y) ** 2))


def reliability(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Equal-width bins of predicted probability: mean prediction, fraction positive, count.

    Raises
    ------
    ValueError
        ``n_bins`` is below 1.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, p = _check(labels, probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    sums = np.bincount(index, weights=p, minlength=n_bins)
    positives = np.bincount(index, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_pred = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        frac_pos = np.where(counts > 0, positives / np.maximum(counts, 1), np.nan)
    return {
        "edges": edges.tolist(),
        "mean_predicted": mean_pred.tolist(),
        "fraction_positive": frac_pos.tolist(),
        "count": counts.astype(int).tolist(),
    }


def ece(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins."""
    bins = reliability(labels, probs, n_bins)
    counts = np.asarray(bins["count"], dtype=np.float64)
    gaps = np.abs(
        np.nan_to_num(np.asarray(bins["mean_predicted"]))
        - np.nan_to_num(np.asarray(bins["fraction_positive"]))
    )
    return float((counts * gaps).sum() / counts.sum())


def _ranking(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if y.min() == y.max():
        return {"auc": float("nan"), "ap": float("nan")}
    return {"auc": float(roc_auc_score(y, p)), "ap": float(average_precision_score(y, p))}


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n) resampling indices, seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def cluster_bootstrap_indices(
    groups: np.ndarray | list[str], n_bootstrap: int, seed: int
) -> list[np.ndarray]:
    """Resampling indices that draw whole groups (patients) with replacement, seeded: the
    images of one patient are always in a resample together, as often as their patient.

    Raises
    ------
    ValueError
        ``groups`` is empty.
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if inverse.size == 0:
        raise ValueError("groups must not be empty")
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        for _ in range(n_bootstrap)
    ]


def study_level(
    labels: np.ndarray, probs: np.ndarray, studies: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per study: the label (positive if any image is) and the probability the worker flags
    on (the highest of its images), with the study keys in first-seen order.

    Raises
    ------
    ValueError
        The lengths differ.
    """
    if not len(labels) == len(probs) == len(studies):
        raise ValueError("labels, probs and studies must have equal lengths")
    order: dict[str, int] = {}
    for study in studies:
        order.setdefault(study, len(order))
    index = np.array([order[s] for s in studies], dtype=np.int64)
    y = np.zeros(len(order), dtype=np.int64)
    p = np.full(len(order), -np.inf)
    np.maximum.at(y, index, np.asarray(labels, dtype=np.int64))
    np.maximum.at(p, index, np.asarray(probs, dtype=np.float64))
    return y, p, list(order)


def summarize(
    labels: np.ndarray,
    probs: np.ndarray,
    tau: float,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    ranking: bool = True,
    groups: np.ndarray | list[str] | None = None,
) -> dict[str, Any]:
    """Every metric at ``tau`` with a percentile bootstrap 95% interval.

    Parameters
    ----------
    groups
        The patient of each image: the bootstrap then resamples patients, not images
        (images of one patient are not independent).
    ranking
        Also the threshold-free metrics (auc, ap, brier, ece); off for a table of operating
        points, where they would repeat.

    Returns
    -------
    dict
        ``{metric: {"value": v, "ci95": [lo, hi]}}`` for accuracy, f1, precision,
        sensitivity, specificity (and auc, ap, brier, ece); plus ``confusion`` (counts at
        ``tau``), ``tau``, ``n``, ``positives``.

    Raises
    ------
    ValueError
        Labels and probabilities are empty, mismatched, non-binary or not finite.
    """
    y, p = _check(labels, probs)
    point: dict[str, float] = dict(threshold_metrics(y, p, tau))
    if ranking:
        point.update(_ranking(y, p), brier=brier(y, p), ece=ece(y, p, n_bins))
    samples: dict[str, list[float]] = {k: [] for k in point}
    if n_bootstrap > 0 and groups is not None:
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries for {len(y)} labels")
        for sample in cluster_bootstrap_indices(groups, n_bootstrap, seed):
            ys1, ps1 = y[sample], p[sample]
            for name, value in threshold_metrics(ys1, ps1, tau).items():
                samples[name].append(value)
            if ranking:
                samples["brier"].append(brier(ys1, ps1))
                samples["ece"].append(ece(ys1, ps1, n_bins))
                for name, value in _ranking(ys1, ps1).items():
                    samples[name].append(value)
    elif n_bootstrap > 0:
        idx = bootstrap_indices(len(y), n_bootstrap, seed)
        ys, ps = y[idx], p[idx]
        flagged = flag_mask(ps, tau)
        tp = (flagged & (ys == 1)).sum(1)
        fp = (flagged & (ys == 0)).sum(1)
        tn = (~flagged & (ys == 0)).sum(1)
        fn = (~flagged & (ys == 1)).sum(1)
        for name, values in _threshold_metrics(tp, fp, tn, fn).items():
            samples[name] = values.tolist()
        if ranking:
            samples["brier"] = np.mean((ps - ys) ** 2, axis=1).tolist()
            for b in range(n_bootstrap):
                scores = _ranking(ys[b], ps[b])
                samples["auc"].append(scores["auc"])
                samples["ap"].append(scores["ap"])
                samples["ece"].append(ece(ys[b], ps[b], n_bins))
    out: dict[str, Any] = {}
    for name, value in point.items():
        values = np.asarray(samples[name], dtype=np.float64)
        values = values[np.isfinite(values)]
        ci = (
            [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
            if values.size
            else [float("nan"), float("nan")]
        )
        out[name] = {"value": value, "ci95": ci}
    out["confusion"] = confusion(y, p, tau)
    out["tau"] = float(tau)
    out["n"] = int(len(y))
    out["positives"] = int(y.sum())
    return out


def metric_values(summary: dict[str, Any]) -> dict[str, float]:
    """The point values of a :func:`summarize` result, flat."""
    return {k: v["value"] for k, v in summary.items() if isinstance(v, dict) and "value" in v}


def subgroup_auc(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], dict[str, float]] = _ranking,
) -> dict[str, dict[str, float]]:
    """AUC and AP per subgroup value (e.g. sex, view, site), with counts."""
    y, p = _check(labels, probs)
    g = np.asarray(groups).astype(str)
    out = {}
    for value in sorted(set(g.tolist())):
        mask = g == value
        out[value] = {
            **metric(y[mask], p[mask]),
            "n": int(mask.sum()),
            "positives": int(y[mask].sum()),
        }
    return out
