"""Performance against labels, overall and per subgroup: pure functions on arrays.

Counts, sensitivity, specificity, PPV and NPV with Wilson 95 % intervals, and the AUC with a
bootstrap interval where both classes exist. A subgroup is flagged when the upper bound of its
sensitivity (or specificity) interval lies below the policy's target: the data then say with
95 % confidence that the SOP's target is missed there. Below a minimum count a subgroup says
"too few" and shows no figure.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from governance.monitoring import stats

TOO_FEW = "too few"

_TARGET = re.compile(r"(sensitivity|specificity)\s*>=\s*([0-9]*\.?[0-9]+)")


def parse_targets(target_metric: str | None) -> dict[str, float]:
    """``{"sensitivity": 0.95}`` from a policy's target such as ``"sensitivity >= 0.95"``."""
    if not target_metric:
        return {}
    return {name: float(value) for name, value in _TARGET.findall(target_metric.lower())}


@dataclass
class Proportion:
    k: int
    n: int
    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, k: int, n: int) -> Proportion:
        if n == 0:
            return cls(k, n, None, None, None)
        low, high = stats.wilson_interval(k, n)
        return cls(k, n, k / n, low, high)


@dataclass
class Performance:
    attribute: str
    value: str
    n: int
    positives: int
    negatives: int
    status: str = "ok"  # or TOO_FEW
    sensitivity: Proportion | None = None
    specificity: Proportion | None = None
    ppv: Proportion | None = None
    npv: Proportion | None = None
    auc: tuple[float, float, float] | None = None
    flagged: bool = False
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Criteria:
    """What a group of studies is judged by.

    Attributes
    ----------
    targets
        The policy's targets (:func:`parse_targets`), e.g. ``{"sensitivity": 0.95}``.
    min_count
        The fewest studies a group needs for any figure (fewer: "too few").
    min_per_class
        The fewest positives and negatives for an AUC, and for a target to be judged.
    bootstrap, seed
        Replicates and seed of the AUC's bootstrap interval.
    """

    targets: dict[str, float]
    min_count: int = 30
    min_per_class: int = 5
    bootstrap: int = 300
    seed: int = 0


def performance(
    attribute: str,
    value: str,
    labels: np.ndarray,
    flags: np.ndarray,
    scores: np.ndarray,
    criteria: Criteria,
) -> Performance:
    """Performance of one group of studies against the policy's targets."""
    min_per_class = criteria.min_per_class
    y = np.asarray(labels, dtype=bool)
    f = np.asarray(flags, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    out = Performance(attribute, value, int(y.size), pos, neg)
    if y.size < criteria.min_count:
        out.status = TOO_FEW
        return out
    tp, fn = int((f & y).sum()), int((~f & y).sum())
    tn, fp = int((~f & ~y).sum()), int((f & ~y).sum())
    out.sensitivity = Proportion.of(tp, tp + fn)
    out.specificity = Proportion.of(tn, tn + fp)
    out.ppv = Proportion.of(tp, tp + fp)
    out.npv = Proportion.of(tn, tn + fn)
    if pos >= min_per_class and neg >= min_per_class:
        out.auc = stats.auc_bootstrap(s, y, replicates=criteria.bootstrap, seed=criteria.seed)
    for name, target in criteria.targets.items():
        measured = out.sensitivity if name == "sensitivity" else out.specificity
        # A class too small for its own figure cannot be judged against the target.
        if measured is None or measured.n < min_per_class or measured.high is None:
            continue
        if measured.high < target:
            out.flagged = True
            out.reasons.append(
                f"{name} {measured.value:.3f} (95% CI {measured.low:.3f}-{measured.high:.3f}) "
                f"below the target {target:g}"
            )
    return out


def by_subgroup(
    labels: np.ndarray,
    flags: np.ndarray,
    scores: np.ndarray,
    attributes: dict[str, np.ndarray],
    criteria: Criteria,
) -> list[Performance]:
    """Overall, then each value of each attribute (None is named ``(absent)``)."""
    rows = [performance("overall", "all", labels, flags, scores, criteria)]
    for attribute, values in attributes.items():
        named = np.array(["(absent)" if v is None else str(v) for v in values], dtype=object)
        for value in sorted(set(named.tolist())):
            mask = named == value
            rows.append(
                performance(attribute, value, labels[mask], flags[mask], scores[mask], criteria)
            )
    return rows
