"""Every setting is documented: its attribute docstring is its description."""

from __future__ import annotations

from cxr_triage.settings import Settings


def test_every_setting_has_a_description() -> None:
    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not undocumented


def test_a_description_is_the_attribute_docstring() -> None:
    assert Settings.model_fields["dicom_port"].description == "DICOM port."
    assert Settings.model_fields["dicom_port"].default == 11112
