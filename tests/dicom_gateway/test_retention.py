"""Spool retention and the high-water mark against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from sqlalchemy import select

from dicom_gateway.retention import prune_spool
from dicom_gateway.spool import Spool
from governance.audit import Action
from governance.db import Store
from governance.models import (
    AuditEvent,
    ImageInference,
    Instance,
    StudyStatus,
    utcnow,
)
from tests.governance.builders import DAY_AGO, model, receive, triage


def pruned(store: Store) -> dict[str, dt.datetime | None]:
    with store.read() as session:
        return {i.sop_instance_uid: i.pruned_at for i in session.scalars(select(Instance))}


def prune_events(store: Store) -> list[dict[str, object]]:
    """The details of the retention audit events (one per run that removed anything)."""
    with store.read() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == Action.SPOOL_PRUNED))
        return [dict(row.detail, object_uid=row.object_uid) for row in rows]


def test_a_triaged_studys_files_go_after_retention_and_their_rows_stay(
    store: Store, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    active = model(store, tmp_path, "v1")
    a = receive(store, spool, "1.2.3.1", "1.2.3.1.1")
    b = receive(store, spool, "1.2.3.1", "1.2.3.1.2")
    triage(store, "1.2.3.1", active)

    report = prune_spool(store, spool, retention_h=1)

    assert (report.files, report.bytes, len(report.studies)) == (2, 2000, 1)
    assert not a.exists() and not b.exists() and not a.parent.exists()
    marks = pruned(store)
    assert all(marks.values()) and set(marks) == {"1.2.3.1.1", "1.2.3.1.2"}
    with store.read() as session:  # what monitoring needs is still there
        instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == "1.2.3.1.1"))
        assert instance is not None
        assert (instance.size_bytes, instance.view_position, instance.body_part) == (
            1000,
            "PA",
            "CHEST",
        )
        assert session.scalar(
            select(ImageInference).where(ImageInference.instance_id == instance.id)
        )
    [event] = prune_events(store)
    assert event["files"] == 2 and event["studies"] == 1
    assert event["bytes"] == 2000 and event["object_uid"] is None

    # A second run finds nothing and writes no event.
    assert prune_spool(store, spool, retention_h=1).files == 0
    assert len(prune_events(store)) == 1


def test_retention_keeps_every_file_a_triage_by_the_active_version_still_needs(
    store: Store, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    old = model(store, tmp_path, "v0")
    active = model(store, tmp_path, "v1")
    keep: list[Path] = []
    # Waiting for the worker.
    keep.append(receive(store, spool, "1.2.4.1", "1.2.4.1.1"))
    # Triaged, then a new instance arrived that is not scored yet.
    keep.append(receive(store, spool, "1.2.4.2", "1.2.4.2.1"))
    keep.append(receive(store, spool, "1.2.4.2", "1.2.4.2.2"))
    triage(store, "1.2.4.2", active, skip={"1.2.4.2.2"})
    # Triaged only by a version that is no longer active.
    keep.append(receive(store, spool, "1.2.4.3", "1.2.4.3.1"))
    triage(store, "1.2.4.3", old)
    # Triaged by the active version, but within the retention period.
    keep.append(receive(store, spool, "1.2.4.4", "1.2.4.4.1", at=utcnow()))
    triage(store, "1.2.4.4", active, at=utcnow())
    # Failed: a person may retry it.
    keep.append(receive(store, spool, "1.2.4.5", "1.2.4.5.1"))
    triage(store, "1.2.4.5", active, status=StudyStatus.FAILED)

    report = prune_spool(store, spool, retention_h=1)

    assert report.files == 0 and all(path.exists() for path in keep)
    assert not any(pruned(store).values())
    assert prune_events(store) == []
    # Retention 0 keeps nothing once triaged: the recent study goes, the others stay.
    assert prune_spool(store, spool, retention_h=0).files == 1
    assert not keep[4].exists() and all(p.exists() for p in keep[:4] + keep[5:])


def test_nothing_is_pruned_without_an_active_model(store: Store, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    registered = model(store, tmp_path, "v1", active=False)
    path = receive(store, spool, "1.2.5.1", "1.2.5.1.1")
    triage(store, "1.2.5.1", registered)
    assert prune_spool(store, spool, retention_h=0).files == 0 and path.exists()


def test_a_resent_instance_is_never_pruned_before_it_is_triaged_again(
    store: Store, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    active = model(store, tmp_path, "v1")
    path = receive(store, spool, "1.2.6.1", "1.2.6.1.1")
    triage(store, "1.2.6.1", active)
    # The file was replaced (resent) after the selection began: kept, row not marked.
    os.utime(path, (time.time() + 60, time.time() + 60))
    report = prune_spool(store, spool, retention_h=0)
    assert report.files == 0 and report.kept_resent == 1 and path.exists()
    assert not any(pruned(store).values())
    # Pruned; then the PACS sends it again: the row forgets it was pruned.
    os.utime(path, (DAY_AGO.timestamp(), DAY_AGO.timestamp()))
    assert prune_spool(store, spool, retention_h=0).files == 1
    receive(store, spool, "1.2.6.1", "1.2.6.1.1", at=utcnow())
    assert pruned(store) == {"1.2.6.1.1": None}


def test_the_high_water_mark_refuses_before_the_disk_is_full(tmp_path: Path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    assert Spool(tmp_path, min_free_bytes=1).refusal(10) is None
    reason = Spool(tmp_path, min_free_bytes=free + 2**30).refusal(10)
    assert reason is not None and "floor" in reason

    capped = Spool(tmp_path / "c", max_bytes=2500)
    capped.prepare()
    source = capped.incoming / "x.dcm"
    for n in (1, 2):
        source.write_bytes(b"\0" * 1000)
        capped.place(source, "1.2.7", f"1.2.7.{n}")
    assert capped.used_bytes == 2000
    assert capped.refusal(400) is None
    assert "cap" in (capped.refusal(600) or "")
    capped.discard(capped.path_for("1.2.7", "1.2.7.1"))
    assert capped.used_bytes == 1000 and capped.refusal(600) is None
    # A fresh process measures what is there.
    again = Spool(tmp_path / "c", max_bytes=2500)
    again.prepare()
    assert again.used_bytes == 1000
