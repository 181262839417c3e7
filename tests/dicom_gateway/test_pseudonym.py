"""The Patient ID becomes a keyed pseudonym at the gateway and is stored nowhere itself."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from cxr_triage.settings import Settings
from dicom_gateway.scp import Gateway
from governance.audit import pseudonym
from governance.errors import ConfigError
from governance.models import Study
from governance.pseudonyms import KEY_FILE, load_key
from tests.dicom_gateway.builders import make_dataset, write_instance
from tests.peers import storescu

KEY = "a-site-secret-of-enough-length"


@pytest.mark.integration
def test_gateway_keeps_a_keyed_pseudonym_and_never_the_patient_id(
    tmp_path: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    settings = make_settings(database_url=database_url, pseudonym_key=KEY)
    gateway = start_gateway(settings)
    ds = make_dataset("1.2.826.0.1.3680043.10.1", seed=1)
    ds.PatientID = "MRN-778899"
    write_instance(ds, tmp_path / "in" / "a.dcm")

    assert storescu("127.0.0.1", settings.dicom_port, [tmp_path / "in"]).returncode == 0

    with gateway.store.read() as session:
        study = session.scalar(select(Study))
        assert study is not None
        assert study.patient_pseudonym == pseudonym("MRN-778899", KEY.encode())
        # No text anywhere in the store holds the Patient ID itself.
        metadata = MetaData()
        metadata.reflect(bind=session.connection())
        for table in metadata.tables.values():
            for row in session.execute(select(table)):
                assert not any("MRN-778899" in str(value) for value in row), table.name


def test_generated_key_is_made_once_and_private(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    first = load_key(settings)
    again = load_key(settings)
    path = settings.data_dir / KEY_FILE
    assert first == again and len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_configured_key_wins_and_a_short_one_is_refused(
    make_settings: Callable[..., Settings],
) -> None:
    assert load_key(make_settings(pseudonym_key=KEY)) == KEY.encode()
    with pytest.raises(ConfigError, match="CXR_PSEUDONYM_KEY"):
        load_key(make_settings(pseudonym_key="short"))
