"""Bounded, printable text: one place cuts what peers and files send to its column."""

from __future__ import annotations

import pytest

from governance.models import ImageInference, Instance, Study
from governance.text import clip, clip_uid, column_limit, printable


def test_column_limits_come_from_the_declared_lengths() -> None:
    assert column_limit(Instance.body_part) == 64
    assert column_limit(Instance.calling_ae) == 16
    assert column_limit(ImageInference.skipped_reason) == 256
    assert column_limit(Study.status_detail) == 1000  # TEXT: the general limit


def test_clip_cuts_to_the_column_and_makes_text_printable() -> None:
    assert clip("A" * 300, Instance.body_part) == "A" * 64
    assert clip("CHEST\r\nFORGED LOG LINE\x1b[31m", Instance.body_part) == (
        "CHEST??FORGED LOG LINE?[31m"
    )
    assert clip(b"\xffCR\x00", Instance.modality) == "\ufffdCR"
    assert clip("   ", Instance.modality) is None
    assert clip(None, Instance.modality) is None
    assert clip("x" * 10, 4) == "xxxx"


def test_printable_bounds_the_work_on_huge_values() -> None:
    assert printable("é" * 10_000_000, 10) == "é" * 10
    assert clip_uid("1.2." + "9" * 500) == ("1.2." + "9" * 500)[:64]
    with pytest.raises(ValueError, match="limit"):
        printable("x", 0)
