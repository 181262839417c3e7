"""Durable placement of received files in the spool."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dicom_gateway.spool import Spool
from governance.errors import ConfigError


def test_place_renames_into_the_study_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    source = spool.incoming / "tmp123.dcm"
    source.write_bytes(b"first")

    target, existed = spool.place(source, "1.2.3", "1.2.3.4")

    assert target == spool.root / "1.2.3" / "1.2.3.4.dcm"
    assert target.read_bytes() == b"first"
    assert not existed and not source.exists()

    again = spool.incoming / "tmp456.dcm"
    again.write_bytes(b"second")
    target, existed = spool.place(again, "1.2.3", "1.2.3.4")
    assert existed and target.read_bytes() == b"second"


def test_a_failed_placement_leaves_the_source_and_no_target(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    (spool.root / "1.2.3").write_bytes(b"a file where the study folder goes")
    source = spool.incoming / "tmp.dcm"
    source.write_bytes(b"data")

    with pytest.raises(OSError):
        spool.place(source, "1.2.3", "1.2.3.4")

    assert source.exists()


def test_path_for_refuses_unsafe_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="study_uid"):
        spool.path_for("../1.2", "1.2.3")
    with pytest.raises(ValueError, match="sop_instance_uid"):
        spool.path_for("1.2", "1.2.3/x")


def test_prepare_removes_stale_incoming_files_and_refuses_a_bad_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.incoming.mkdir(parents=True)
    (spool.incoming / "left-by-a-crash.dcm").write_bytes(b"partial")
    spool.prepare()
    assert list(spool.incoming.iterdir()) == []

    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"")
    with pytest.raises(ConfigError, match="CXR_SPOOL_DIR"):
        Spool(not_a_folder).prepare()


def test_sweep_removes_only_files_nobody_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    old = spool.incoming / "abandoned.dcm"
    old.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    fresh = spool.incoming / "receiving.dcm"
    fresh.write_bytes(b"x")

    assert spool.sweep_incoming(older_than_s=600) == 1
    assert not old.exists() and fresh.exists()


def test_remove_replaced_stays_inside_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"x")
    inside = spool.root / "1.2" / "1.2.3.dcm"
    inside.parent.mkdir()
    inside.write_bytes(b"x")

    spool.remove_replaced(str(outside))
    spool.remove_replaced(str(inside))

    assert outside.exists() and not inside.exists()
