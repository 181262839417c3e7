"""Reading and checking a received instance's header without its pixel data."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, generate_uid

from dicom_gateway import status
from dicom_gateway.header import InstanceRejected, age_in_years, is_valid_uid, read_header
from tests.dicom_gateway.builders import TEST_SYNTAXES, make_dataset, write_instance

# Some tests write values pydicom rightly calls invalid: that is what they are about.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")


def _read(path: Path, sop_instance_uid: str | None = None, sop_class_uid: str | None = None):
    meta = dcmread(path, stop_before_pixels=True).file_meta
    return read_header(
        path,
        affected_sop_class_uid=sop_class_uid or str(meta.MediaStorageSOPClassUID),
        affected_sop_instance_uid=sop_instance_uid or str(meta.MediaStorageSOPInstanceUID),
    )


@pytest.mark.parametrize("syntax", [*TEST_SYNTAXES, ExplicitVRBigEndian])
def test_reads_the_header_in_every_syntax(tmp_path: Path, syntax: str) -> None:
    study_uid = generate_uid()
    ds = make_dataset(study_uid)
    path = write_instance(ds, tmp_path / "im.dcm", syntax)

    header = _read(path)

    assert header.study_instance_uid == study_uid
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.series_instance_uid == ds.SeriesInstanceUID
    assert header.transfer_syntax_uid == syntax
    assert header.size_bytes == path.stat().st_size
    assert (header.modality, header.view_position, header.body_part) == ("CR", "PA", "CHEST")
    assert (header.patient_sex, header.patient_age_years) == ("F", 54)


def test_keeps_no_patient_identifier(tmp_path: Path) -> None:
    path = write_instance(make_dataset(generate_uid()), tmp_path / "im.dcm")
    text = repr(_read(path))
    for identifier in ("Doe", "Jane", "SYN-0001", "19700101", "ACC0001"):
        assert identifier not in text


@pytest.mark.parametrize("syntax", TEST_SYNTAXES)
def test_truncated_pixel_data_cannot_be_understood(tmp_path: Path, syntax: str) -> None:
    path = write_instance(make_dataset(generate_uid()), tmp_path / "im.dcm", syntax)
    path.write_bytes(path.read_bytes()[:-20])

    with pytest.raises(InstanceRejected) as raised:
        _read(path)

    assert raised.value.status == status.CANNOT_UNDERSTAND
    assert "truncated" in raised.value.reason


def test_pixel_data_inside_an_icon_sequence_is_not_taken_for_the_image(tmp_path: Path) -> None:
    ds = make_dataset(generate_uid())
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 4, 4, 8
    icon.PixelData = b"\0" * 16
    ds.IconImageSequence = Sequence([icon])
    path = write_instance(ds, tmp_path / "im.dcm")
    assert _read(path).sop_instance_uid == ds.SOPInstanceUID

    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InstanceRejected, match="truncated"):
        _read(path)


def test_garbage_cannot_be_understood(tmp_path: Path) -> None:
    ds = make_dataset(generate_uid())
    path = write_instance(ds, tmp_path / "im.dcm")
    meta_end = len(path.read_bytes()) - len(ds.PixelData) - 400
    path.write_bytes(path.read_bytes()[:meta_end] + bytes(range(256)) * 8)

    with pytest.raises(InstanceRejected) as raised:
        _read(path)

    assert raised.value.status in {status.CANNOT_UNDERSTAND, status.DATASET_MISMATCH}


def test_uids_that_differ_from_the_request_do_not_match(tmp_path: Path) -> None:
    path = write_instance(make_dataset(generate_uid()), tmp_path / "im.dcm")

    with pytest.raises(InstanceRejected) as raised:
        _read(path, sop_instance_uid=generate_uid())
    assert raised.value.status == status.DATASET_MISMATCH
    assert "SOP Instance UID" in raised.value.reason

    with pytest.raises(InstanceRejected) as raised:
        _read(path, sop_class_uid="1.2.840.10008.5.1.4.1.1.7")
    assert raised.value.status == status.DATASET_MISMATCH
    assert "SOP Class UID" in raised.value.reason


@pytest.mark.parametrize(
    ("study_uid", "reason"),
    [(None, "Study Instance UID is missing"), ("1.2.3/../../etc", "not a valid UID")],
)
def test_a_study_uid_that_cannot_name_a_folder_is_refused(
    tmp_path: Path, study_uid: str | None, reason: str
) -> None:
    ds = make_dataset("1.2.3")
    if study_uid is None:
        del ds.StudyInstanceUID
    else:
        ds.StudyInstanceUID = study_uid
    path = write_instance(ds, tmp_path / "im.dcm")

    with pytest.raises(InstanceRejected, match=reason) as raised:
        _read(path)
    assert raised.value.status == status.DATASET_MISMATCH


def test_an_image_without_pixel_data_is_refused(tmp_path: Path) -> None:
    ds = make_dataset(generate_uid())
    del ds.PixelData
    path = write_instance(ds, tmp_path / "im.dcm")

    with pytest.raises(InstanceRejected, match="no Pixel Data") as raised:
        _read(path)
    assert raised.value.status == status.DATASET_MISMATCH


def test_odd_attribute_values_are_cleaned_for_the_store(tmp_path: Path) -> None:
    ds = make_dataset(generate_uid())
    ds.PatientSex = "Other"
    ds.PatientAge = "12"
    ds.Modality = "CR\\DX"
    ds.Manufacturer = "A" * 300 + "\x00"
    ds.ViewPosition = ""
    ds.SeriesInstanceUID = "not-a-uid"
    ds.add_new(0x00111010, "LO", "private-ish value")
    path = write_instance(ds, tmp_path / "im.dcm")

    header = _read(path)

    assert header.patient_sex is None
    assert header.patient_age_years == 12
    assert header.modality == "CR"
    assert header.manufacturer == "A" * 64
    assert header.view_position is None
    assert header.series_instance_uid is None


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("045Y", 45),
        ("018M", 1),
        ("011M", 0),
        ("052W", 0),
        ("400D", 1),
        ("7", 7),
        ("", None),
        ("abc", None),
        ("999Y", None),
        (None, None),
    ],
)
def test_age_in_years(value: str | None, years: int | None) -> None:
    assert age_in_years(value) == years


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.1", True),
        ("1.2.3.04", True),
        ("1" * 64, True),
        ("1" * 65, False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.2/3", False),
        ("", False),
        (None, False),
    ],
)
def test_is_valid_uid(value: str | None, valid: bool) -> None:
    assert is_valid_uid(value) is valid
