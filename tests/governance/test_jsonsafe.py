"""``governance.jsonsafe.json_safe``: what the store's JSON columns are given."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from governance.jsonsafe import json_safe


def test_numpy_values_nan_and_paths_become_plain_json() -> None:
    value = {
        1: [np.int64(3), np.bool_(True), (np.float32(1.5), math.inf)],
        "nan": np.float64("nan"),
        "array": np.array([[0.25, np.nan], [1.0, -np.inf]]),
        "path": Path("/models/m.pt"),
        "text": np.str_("PA"),
        "none": None,
    }
    safe = json_safe(value)
    assert safe == {
        "1": [3, True, [1.5, None]],
        "nan": None,
        "array": [[0.25, None], [1.0, None]],
        "path": "/models/m.pt",
        "text": "PA",
        "none": None,
    }
    assert type(safe["1"][0]) is int and type(safe["1"][1]) is bool
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
