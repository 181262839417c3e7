"""Group commit: rows of concurrent instances share a transaction; one refused row fails alone."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from cxr_triage.settings import Settings
from dicom_gateway.commit import Committer
from dicom_gateway.scp import Gateway
from dicom_gateway.spool import Spool
from governance.db import Store
from governance.errors import InstanceConflict, StoreUnavailable
from governance.studies import ReceivedInstance
from tests.dicom_gateway.builders import write_study
from tests.dicom_gateway.inspection import stored_instances
from tests.peers import storescu


def _placed(spool: Spool, study_uid: str, sop_uid: str) -> ReceivedInstance:
    """A received file placed in the spool (folder not yet fsynced), as the handler leaves it."""
    source = spool.incoming / f"{sop_uid}.dcm"
    source.write_bytes(b"\0" * 256)
    target, _ = spool.place(source, study_uid, sop_uid, sync_folder=False)
    return ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=None,
        sop_instance_uid=sop_uid,
        sop_class_uid=ComputedRadiographyImageStorage,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        path=str(target),
        size_bytes=256,
        calling_ae="TEST",
    )


@pytest.fixture
def committer(tmp_path: Path, store: Store) -> Iterator[Committer]:
    """A started committer over a fresh store (both backends) and spool."""
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    started = Committer(store, spool)
    started.start()
    yield started
    started.stop()


def _outcome(committer: Committer, item: ReceivedInstance) -> str | None | BaseException:
    try:
        return committer.record(item)
    except Exception as exc:
        return exc


@contextmanager
def _instances_locked(store: Store) -> Iterator[None]:
    """Another connection holds the instances table: the store's writers wait for it."""
    connection = store.engine.raw_connection()
    try:
        cursor = connection.cursor()
        if store.is_sqlite:
            cursor.execute("BEGIN IMMEDIATE")  # the file's write lock
        else:
            cursor.execute("LOCK TABLE instances IN EXCLUSIVE MODE")
        yield
    finally:
        connection.rollback()
        connection.close()


def _wait_for(predicate: Callable[[], bool]) -> None:
    for _ in range(3000):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def test_instances_waiting_together_commit_in_one_transaction_and_a_refused_one_alone(
    committer: Committer, store: Store
) -> None:
    spool = committer.spool
    taken_uid = generate_uid()
    assert committer.record(_placed(spool, "1.2.3.1", taken_uid)) is None
    study_uid = "1.2.3.2"
    first = _placed(spool, study_uid, generate_uid())
    items = [_placed(spool, study_uid, generate_uid()) for _ in range(6)]
    # The SOP Instance UID of the other study's instance: refused, and only it.
    conflicting = dataclasses.replace(items[0], sop_instance_uid=taken_uid)
    later = [*items[:3], conflicting, *items[3:]]

    with ThreadPoolExecutor(len(later) + 1) as pool:
        with _instances_locked(store):
            # The first handler commits at once (it leads) and waits on the lock; the others
            # arrive meanwhile and queue behind it.
            leader = pool.submit(_outcome, committer, first)
            _wait_for(lambda: committer.busy and committer.waiting == 0)
            followers = [pool.submit(_outcome, committer, item) for item in later]
            _wait_for(lambda: committer.waiting == len(later))
        outcomes = [leader.result(timeout=60)] + [f.result(timeout=60) for f in followers]

    # Three transactions: the setup's, the leader's, and one for all seven that queued.
    assert (committer.batches, committer.largest_batch) == (3, 7)
    assert isinstance(outcomes[4], InstanceConflict)
    assert [o for i, o in enumerate(outcomes) if i != 4] == [None] * 7
    rows = stored_instances(store)
    assert sorted(sop for study, sop, _ in rows if study == study_uid) == sorted(
        item.sop_instance_uid for item in [first, *items]
    )
    assert [(study, sop) for study, sop, _ in rows if sop == taken_uid] == [("1.2.3.1", taken_uid)]


def test_a_lone_instance_is_committed_at_once_in_a_batch_of_one(
    committer: Committer, store: Store
) -> None:
    sop_uid = generate_uid()

    assert committer.record(_placed(committer.spool, "1.2.3.4", sop_uid)) is None

    assert (committer.batches, committer.instances, committer.busy) == (1, 1, False)
    assert [sop for _, sop, _ in stored_instances(store)] == [sop_uid]


def test_a_stopped_committer_records_nothing_more(committer: Committer, store: Store) -> None:
    committer.stop()

    with pytest.raises(StoreUnavailable):
        committer.record(_placed(committer.spool, "1.2.3.3", generate_uid()))
    assert stored_instances(store) == []


@pytest.mark.integration
def test_four_concurrent_associations_are_each_answered_after_their_rows_commit(
    tmp_path: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    settings = make_settings(database_url=database_url)
    gateway = start_gateway(settings)
    folders, expected = [], set()
    for index in range(4):
        # A parent each: storescu's profile is written beside the folder it sends.
        folder = tmp_path / f"peer{index}" / "study"
        folder.mkdir(parents=True)
        study_uid, sop_uids = write_study(folder, syntaxes=(ExplicitVRLittleEndian,) * 6)
        folders.append(folder)
        expected |= {(study_uid, sop) for sop in sop_uids}

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda f: storescu("127.0.0.1", settings.dicom_port, [f]), folders))

    # storescu exits non-zero unless every C-STORE was answered Success.
    assert [r.returncode for r in results] == [0] * 4, [r.stderr[-500:] for r in results]
    rows = stored_instances(gateway.store)
    assert {(study, sop) for study, sop, _ in rows} == expected
    assert all(Path(path).is_file() for _, _, path in rows)
    assert gateway.committer.instances == len(expected)
