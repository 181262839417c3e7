"""Safe defaults: DICOM on this machine only unless a site says otherwise, and it is said."""

from __future__ import annotations

from cxr_triage.settings import Settings
from cxr_triage.up import dicom_reach


def test_dicom_listens_on_this_machine_by_default() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.dicom_host == "127.0.0.1"
    assert "this machine only" in dicom_reach(settings.dicom_host, settings.allowed_calling_aes)


def test_an_open_port_is_named_open() -> None:
    assert "any calling AE title" in dicom_reach("0.0.0.0", [])
    assert dicom_reach("0.0.0.0", ["ORTHANC"]) == " (open to the network for ORTHANC)"
