"""C-STORE outcomes over real associations: what is refused, what survives a fault."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select
from sqlalchemy.engine import make_url

from cxr_triage.settings import Settings
from dicom_gateway import incoming, status
from dicom_gateway.scp import Gateway
from governance.models import Study
from tests.conftest import PG_ADMIN_URL, _pg_conninfo
from tests.dicom_gateway.builders import make_dataset, write_instance
from tests.dicom_gateway.inspection import stored_instances
from tests.peers import echoscu, pynetdicom_store

# Malformed data sets make pydicom warn as it reads them; that is what the tests send.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning:pydicom")]


def _instance(folder: Path, name: str, study_uid: str | None = None, **kwargs: object) -> Path:
    ds = make_dataset(study_uid or generate_uid(), **kwargs)  # type: ignore[arg-type]
    return write_instance(ds, folder / name)


def _spooled_files(gateway: Gateway) -> list[Path]:
    return [p for p in gateway.spool.root.rglob("*.dcm") if gateway.spool.incoming not in p.parents]


def test_sop_instance_uid_that_differs_from_the_request_is_refused(
    tmp_path: Path, make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    path = _instance(tmp_path, "im.dcm")
    # The request's UIDs come from the meta header; the data set keeps its own SOP Instance UID.
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    crafted = tmp_path / "crafted.dcm"
    ds.save_as(crafted, enforce_file_format=False)  # True would make the meta match again

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [crafted]) == [
        status.DATASET_MISMATCH
    ]
    assert stored_instances(gateway.store) == []
    assert _spooled_files(gateway) == []


def test_malformed_data_sets_are_refused_and_the_server_keeps_serving(
    tmp_path: Path, make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    good = _instance(tmp_path, "good.dcm")
    _, offset = split_dataset(good)
    data = good.read_bytes()
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:offset] + bytes(range(256)) * 64)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 1000])
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(data[:offset] + b"\x08\x00\x16\x00")

    statuses = pynetdicom_store("127.0.0.1", settings.dicom_port, [garbage, truncated, empty, good])

    assert statuses[0] in {status.CANNOT_UNDERSTAND, status.DATASET_MISMATCH}
    assert statuses[1] == status.CANNOT_UNDERSTAND
    assert statuses[2] in {status.CANNOT_UNDERSTAND, status.DATASET_MISMATCH}
    assert statuses[3] == status.SUCCESS
    assert [sop for _, sop, _ in stored_instances(gateway.store)] == [
        str(read_file_meta_info(good).MediaStorageSOPInstanceUID)
    ]
    # A later association is served as well.
    assert echoscu("127.0.0.1", settings.dicom_port).returncode == 0


def test_huge_and_odd_attributes_are_stored(
    tmp_path: Path, make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    ds = make_dataset(generate_uid())
    ds.add_new(0x00091010, "OB", b"\x01" * (8 << 20))  # 8 MiB private element before the pixels
    ds.Manufacturer = "M" * 200
    ds.PatientSex = "unknown"
    ds.PatientAge = "forty"
    path = write_instance(ds, tmp_path / "odd.dcm")

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [path]) == [status.SUCCESS]
    [(_, sop_uid, spooled)] = stored_instances(gateway.store)
    assert sop_uid == ds.SOPInstanceUID
    assert Path(spooled).read_bytes()[-len(ds.PixelData) :] == ds.PixelData


def test_a_resent_instance_replaces_the_older_copy_of_the_same_study(
    tmp_path: Path, make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    sop_uid = generate_uid()
    first = _instance(tmp_path, "first.dcm", "1.2.3.4", sop_instance_uid=sop_uid, seed=1)
    again = _instance(tmp_path, "again.dcm", "1.2.3.4", sop_instance_uid=sop_uid, seed=2)

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [first]) == [status.SUCCESS]
    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [again]) == [status.SUCCESS]

    [(study_uid, _, path)] = stored_instances(gateway.store)
    assert study_uid == "1.2.3.4"
    assert _spooled_files(gateway) == [Path(path)]
    assert Path(path).read_bytes()[-100:] == again.read_bytes()[-100:]


def test_a_sop_instance_uid_of_another_study_is_refused_and_moves_nothing(
    tmp_path: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    settings = make_settings(database_url=database_url)
    gateway = start_gateway(settings)
    sop_uid = generate_uid()
    first = _instance(tmp_path, "first.dcm", "1.2.3.4", sop_instance_uid=sop_uid, seed=1)
    other = _instance(tmp_path, "other.dcm", "1.2.3.5", sop_instance_uid=sop_uid, seed=2)

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [first]) == [status.SUCCESS]
    [(_, _, kept_path)] = stored_instances(gateway.store)
    kept = Path(kept_path).read_bytes()

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [other, first]) == [
        status.DATASET_MISMATCH,
        status.SUCCESS,
    ]

    assert stored_instances(gateway.store) == [("1.2.3.4", sop_uid, kept_path)]
    assert Path(kept_path).read_bytes() == kept
    assert _spooled_files(gateway) == [Path(kept_path)]
    with gateway.store.read() as session:
        assert session.scalar(select(Study.id).where(Study.study_instance_uid == "1.2.3.5")) is None


def test_a_full_spool_answers_out_of_resources_and_keeps_serving(
    tmp_path: Path, make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    study_uid = generate_uid()
    path = _instance(tmp_path, "im.dcm", study_uid)
    # A file where the study folder must go: mkdir fails with an OSError, like a full disk.
    blocker = settings.spool_path / study_uid
    blocker.write_bytes(b"")

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [path]) == [status.OUT_OF_RESOURCES]
    assert stored_instances(gateway.store) == []

    blocker.unlink()
    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [path]) == [status.SUCCESS]
    assert len(stored_instances(gateway.store)) == 1


def test_a_background_fdatasync_that_fails_answers_out_of_resources_and_records_nothing(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    path = _instance(tmp_path, "im.dcm", size=512)  # 0.5 MB of pixels
    # The file's fdatasync while it streams in fails (a failing disk): its error must reach
    # the peer, though the fdatasync before Success opens the file anew and might not see it.
    monkeypatch.setattr(incoming, "SYNC_BYTES", 64 * 1024)
    monkeypatch.setattr(incoming, "_fdatasync", _failing_fdatasync)

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [path]) == [status.OUT_OF_RESOURCES]
    assert stored_instances(gateway.store) == []
    assert _spooled_files(gateway) == []

    monkeypatch.undo()
    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [path]) == [status.SUCCESS]
    assert len(stored_instances(gateway.store)) == 1


def _failing_fdatasync(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


@pytest.fixture
def own_pg_database() -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own (the shared one cannot be closed)."""
    from migrations import upgrade

    name = f"cxr_gw_{uuid.uuid4().hex[:10]}"
    admin = _pg_conninfo(PG_ADMIN_URL)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    database_url = url.render_as_string(hide_password=False)
    try:
        upgrade(database_url)
        yield database_url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _allow_connections(database_url: str, allow: bool) -> None:
    """Close a database to new connections and end the open ones, or open it again."""
    name = make_url(database_url).database
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [name],
            )


def test_store_down_answers_out_of_resources_leaves_no_orphan_and_recovers(
    tmp_path: Path,
    own_pg_database: str,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    settings = make_settings(database_url=own_pg_database)
    gateway = start_gateway(settings, migrate=False)
    path = _instance(tmp_path, "im.dcm")

    _allow_connections(own_pg_database, False)
    try:
        assert pynetdicom_store("127.0.0.1", settings.dicom_port, [path]) == [
            status.OUT_OF_RESOURCES
        ]
        assert _spooled_files(gateway) == []
        assert echoscu("127.0.0.1", settings.dicom_port).returncode == 0
    finally:
        _allow_connections(own_pg_database, True)

    assert pynetdicom_store("127.0.0.1", settings.dicom_port, [path]) == [status.SUCCESS]
    assert len(stored_instances(gateway.store)) == 1
    assert len(_spooled_files(gateway)) == 1
