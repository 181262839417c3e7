"""Checks of numeric arguments: the value back, or a ValueError that names the parameter.

Constructors and functions check their arguments first, so that no object exists half-valid:
``self.limit = at_least("limit", limit)``.
"""

from __future__ import annotations


def at_least(name: str, value: int, minimum: int = 1) -> int:
    """``value``, once it is known to be at least ``minimum``.

    Raises
    ------
    ValueError
        ``value`` is below ``minimum``: ``"<name> must be at least <minimum>, got <value>"``.
    """
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def positive(name: str, value: float) -> float:
    """``value``, once it is known to be above zero.

    Raises
    ------
    ValueError
        ``value`` is zero or below: ``"<name> must be positive, got <value>"``.
    """
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value
