"""Errors of result delivery."""

from __future__ import annotations

from governance.errors import TriageError


class DeliveryFailed(TriageError):
    """An export or notification attempt failed; ``transient`` says whether to retry it.

    The message names the destination and the cause, never a patient identifier.
    """

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient
