"""Argument checks: the value back, or a ValueError naming the parameter."""

from __future__ import annotations

import pytest

from governance.checks import at_least, positive


def test_at_least_returns_the_value_or_names_the_parameter() -> None:
    assert at_least("limit", 1) == 1
    assert at_least("size", 32, 32) == 32
    with pytest.raises(ValueError, match="^limit must be at least 1, got 0$"):
        at_least("limit", 0)
    with pytest.raises(ValueError, match="^size must be at least 32, got 31$"):
        at_least("size", 31, 32)


def test_positive_refuses_zero_and_below() -> None:
    assert positive("timeout_s", 0.5) == 0.5
    for bad in (0, 0.0, -1.0):
        with pytest.raises(ValueError, match="^timeout_s must be positive, got "):
            positive("timeout_s", bad)
