"""Values as the store's JSON columns take them: plain Python, no NaN.

PostgreSQL's JSON refuses NaN and infinities and the driver does not know numpy types, so
figures computed with numpy (drift statistics, training metrics) pass through :func:`json_safe`
before they are stored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` in plain JSON types: dicts (string keys), lists, and numbers where NaN and
    infinities become None; numpy arrays and scalars become Python ones, paths text."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
