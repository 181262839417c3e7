"""One-sided Bernoulli CUSUM on the flag rate, its decision limit chosen from an in-control ARL.

Each triaged study adds the log-likelihood ratio of its flag under the out-of-control rate p1
against the in-control rate p0 (Reynolds & Stoumbos 1999; Steiner et al. 2000):
``S_t = max(0, S_{t-1} + w_t)`` with ``w = ln(p1/p0)`` for a flag and ``ln((1-p1)/(1-p0))``
otherwise; an alarm when ``S_t >= h``. The average run lengths come from the exact Markov chain
of the CUSUM on a fine integer grid (Brook & Evans 1972): ``h`` is the smallest limit whose
in-control ARL reaches the target (one false alarm a year at 100 studies a day is an ARL of
36,500 studies), and the zero-state ARL at p1 is the expected detection delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix, identity
from scipy.sparse.linalg import spsolve


@dataclass(frozen=True, slots=True)
class CusumDesign:
    """A designed CUSUM: the rates, the decision limit ``h`` with its run lengths, and what a
    flagged and a clear study add to the statistic."""

    p0: float
    p1: float
    h: float
    arl0: float  # in-control average run length at h (studies)
    arl1: float  # expected detection delay at p1, from a zero start (studies)
    weight_flag: float
    weight_clear: float

    def as_dict(self) -> dict[str, float]:
        return {
            "p0": self.p0,
            "p1": self.p1,
            "h": self.h,
            "arl0": self.arl0,
            "arl1": self.arl1,
        }


def shifted_rate(p0: float, odds_ratio: float) -> float:
    """The rate whose odds are ``odds_ratio`` times those of ``p0``."""
    odds = odds_ratio * p0 / (1 - p0)
    return odds / (1 + odds)


def _weights(p0: float, p1: float) -> tuple[float, float]:
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


#: Grid resolution: the smaller weight becomes about this many integer steps.
_RESOLUTION = 30
#: Upper bound of grid steps per unit of S, so that a rare flag rate cannot blow up the chain.
_MAX_SCALE = 250.0


def _grid(weight_flag: float, weight_clear: float) -> tuple[float, int, int]:
    """The integer grid of the chain: its steps per unit of S, and each weight in steps."""
    scale = min(_RESOLUTION / min(weight_flag, -weight_clear), _MAX_SCALE)
    return scale, max(1, round(weight_flag * scale)), min(-1, round(weight_clear * scale))


def _arl(p: float, step_flag: int, step_clear: int, limit: int) -> float:
    """Zero-state ARL of the integer CUSUM with the given steps and limit, at flag rate p."""
    states = np.arange(limit)
    up = states + step_flag
    down = np.maximum(0, states + step_clear)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    data: list[np.ndarray] = []
    inside = up < limit
    rows.append(states[inside])
    cols.append(up[inside])
    data.append(np.full(int(inside.sum()), p))
    rows.append(states)
    cols.append(down)
    data.append(np.full(limit, 1 - p))
    transition = csr_matrix(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(limit, limit)
    )
    system = (identity(limit, format="csr") - transition).tocsc()
    lengths = spsolve(system, np.ones(limit))
    return float(lengths[0])


def design(p0: float, *, arl0: float = 36_500.0, odds_ratio: float = 2.0) -> CusumDesign:
    """The CUSUM for in-control rate ``p0`` that detects an ``odds_ratio``-fold rise.

    Raises
    ------
    ValueError
        ``p0`` not in (0, 1), ``arl0`` not above 1, ``odds_ratio`` not above 1.
    """
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"p0 must be a rate in (0, 1), got {p0}")
    if not arl0 > 1:
        raise ValueError(f"arl0 must exceed 1, got {arl0}")
    if not odds_ratio > 1:
        raise ValueError(f"odds_ratio must exceed 1, got {odds_ratio}")
    p1 = shifted_rate(p0, odds_ratio)
    scale, step_flag, step_clear = _grid(*_weights(p0, p1))
    # The smallest integer limit whose in-control ARL reaches arl0 (ARL grows with the limit).
    low, high = step_flag, step_flag
    while _arl(p0, step_flag, step_clear, high) < arl0:
        low, high = high, high * 2
        if high > 200_000:
            raise ValueError(f"arl0 {arl0} is out of reach for p0={p0}")
    while high - low > 1:
        mid = (low + high) // 2
        if _arl(p0, step_flag, step_clear, mid) >= arl0:
            high = mid
        else:
            low = mid
    return CusumDesign(
        p0=p0,
        p1=p1,
        h=high / scale,
        arl0=_arl(p0, step_flag, step_clear, high),
        arl1=_arl(p1, step_flag, step_clear, high),
        weight_flag=step_flag / scale,
        weight_clear=step_clear / scale,
    )


def path(flags: np.ndarray, cusum: CusumDesign, *, start: float = 0.0) -> np.ndarray:
    """The CUSUM statistic after each study of ``flags`` (booleans in time order)."""
    increments = np.where(np.asarray(flags, dtype=bool), cusum.weight_flag, cusum.weight_clear)
    out = np.empty(increments.size)
    s = start
    for i, w in enumerate(increments):  # a recursion: max(0, .) does not vectorise
        s = max(0.0, s + w)
        out[i] = s
    return out


def first_alarm(flags: np.ndarray, cusum: CusumDesign, *, start: float = 0.0) -> int | None:
    """Index of the first study at which the CUSUM reaches h, or None."""
    statistic = path(flags, cusum, start=start)
    hits = np.flatnonzero(statistic >= cusum.h - 1e-12)
    return int(hits[0]) if hits.size else None
