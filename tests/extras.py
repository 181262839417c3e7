"""Tests of what an optional part of the install (cxr_triage.extras) provides skip cleanly,
with the reason, where that extra is not installed: the base-install job of scripts/test runs
the gateway, store, web and CLI tests on Python 3.13 without torch.

Mark a test ``@pytest.mark.worker`` or ``@pytest.mark.train`` (tests/conftest.py skips it), or
call :func:`needs_extra` in a fixture that imports from ``worker``'s model code or ``training``.
"""

from __future__ import annotations

import os

import pytest

from cxr_triage.extras import missing_modules

# Set by scripts/test for the base-install job: there, the extras are meant to be missing.
BASE_INSTALL = os.environ.get("CXR_TEST_BASE_INSTALL") == "1"


def needs_extra(extra: str) -> None:
    """Skip the calling test unless ``extra`` is installed."""
    missing = missing_modules(extra)
    if missing:
        pytest.skip(f"needs the {extra!r} extra ({', '.join(missing)} not installed)")
