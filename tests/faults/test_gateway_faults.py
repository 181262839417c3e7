"""The gateway's own faults: the spool's disk full, and the gateway killed mid-association.

Real gateway and worker processes on the shared PostgreSQL and our own Redis; the spool is a
small tmpfs this test mounts (skipped where it cannot: not root).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance.models import Instance
from tests.faults.conftest import FaultStack
from tests.faults.harness import (
    Ledger,
    RedisServer,
    SmallFilesystem,
    StallingProxy,
    Unavailable,
    storescu_send,
    wait_settled,
)
from tests.faults.steps import make_studies, start_gateway_and_worker, wait_gateway
from tests.peers import peer_missing
from tests.services import Service, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def spool_files(spool: Path) -> list[Path]:
    """Every file under the spool but the test's ballast: placed instances and incoming ones."""
    return [
        Path(folder) / name
        for folder, _, names in os.walk(spool)
        for name in names
        if name != "ballast.bin"
    ]


def resend_until_taken(
    settings: Settings, paths: list[Path], uids: dict[Path, tuple[str, str]], ledger: Ledger
) -> None:
    """What a PACS does with refused instances: send them again until they are taken."""
    deadline = time.monotonic() + 60
    while ledger.unacknowledged() and time.monotonic() < deadline:
        pending = [p for p in paths if uids[p][0] in ledger.unacknowledged()]
        storescu_send("127.0.0.1", settings.dicom_port, pending, ledger, uids)
        if ledger.unacknowledged():
            time.sleep(0.5)


def test_a_full_spool_disk_refuses_with_a700_leaves_nothing_half_written_and_recovers(
    tmp_path: Path,
    own_redis: RedisServer,
    make_database_url: Callable[[str], str],
    fault_stack: Callable[..., FaultStack],
    start_service: Callable[[str, Settings], Service],
) -> None:
    try:
        disk = SmallFilesystem(tmp_path / "spoolfs", size_mb=8)
    except Unavailable as exc:
        peer_missing(str(exc))
    try:
        paths, uids = make_studies(tmp_path / "studies", 4, seed=41)
        largest = max(p.stat().st_size for p in paths)
        stack = fault_stack(
            make_database_url("postgresql"),
            own_redis.url,
            spool_dir=disk.folder,
            spool_min_free_gb=4 * largest / 2**30,  # the high-water mark
        )
        settings = stack.settings
        gateway, worker = start_gateway_and_worker(settings, start_service)
        ledger = Ledger()

        # Under the high-water mark, above full: refused before the disk fills.
        ballast = disk.fill(leave_bytes=3 * largest)
        storescu_send("127.0.0.1", settings.dicom_port, paths[:2], ledger, uids)
        assert ledger.acknowledged == set() and ledger.refusals == {0xA700: 2}
        assert spool_files(disk.folder) == []
        assert "spool free space" in gateway.text()

        # Actually full: the transfer itself cannot be written.
        ballast.unlink()
        ballast = disk.fill(leave_bytes=largest // 3)
        storescu_send("127.0.0.1", settings.dicom_port, paths[2:], ledger, uids)
        assert ledger.acknowledged == set() and ledger.refusals == {0xA700: 4}
        assert "the spool's disk is full" in gateway.text()
        assert spool_files(disk.folder) == [], "a half-written file was left in the spool"
        with stack.store.read() as session:
            assert session.scalars(select(Instance)).all() == []
        assert gateway.proc.poll() is None

        # Space returns: the resent instances are taken and triaged once.
        ballast.unlink()
        resend_until_taken(settings, paths, uids, ledger)
        counts = wait_settled(ledger, stack.store, timeout=60)
        assert (counts.sent, counts.acknowledged, counts.stored) == (4, 4, 4), counts.as_line()
        assert (counts.triaged_once, counts.duplicates, counts.lost, counts.stuck) == (
            4,
            0,
            0,
            0,
        ), counts.as_line() + "\n" + worker.text()[-2000:]
    finally:
        for service in (gateway, worker):
            service.proc.terminate()
            service.proc.wait(30)
        disk.unmount()


def test_a_gateway_killed_mid_association_loses_nothing_it_acknowledged(
    tmp_path: Path,
    own_redis: RedisServer,
    make_database_url: Callable[[str], str],
    fault_stack: Callable[..., FaultStack],
    start_service: Callable[[str, Settings], Service],
) -> None:
    stack = fault_stack(make_database_url("postgresql"), own_redis.url)
    settings = stack.settings
    gateway, worker = start_gateway_and_worker(settings, start_service)
    paths, uids = make_studies(tmp_path / "studies", 10, seed=42, size=1024)
    ledger = Ledger()
    # The gateway gets five whole instances and half of the sixth, then nothing more: it is
    # killed inside an association and inside an instance, whatever the machine's speed.
    sizes = [p.stat().st_size for p in paths]
    proxy = StallingProxy(settings.dicom_port, sum(sizes[:5]) + sizes[5] // 2)

    sender = threading.Thread(
        target=storescu_send, args=("127.0.0.1", proxy.port, paths, ledger, uids)
    )
    sender.start()

    def stored() -> int:
        with stack.store.read() as session:
            return len(session.scalars(select(Instance.id)).all())

    wait_until(lambda: stored() >= 5, 60, "five instances stored", [gateway])
    wait_until(lambda: proxy.forwarded == proxy.stall_after, 30, "the proxy stalled", [gateway])
    gateway.proc.kill()
    gateway.proc.wait(10)
    sender.join(60)
    proxy.close()
    assert not sender.is_alive()
    # storescu sends an instance only once the one before is answered.
    assert 4 <= len(ledger.acknowledged) <= 5, ledger
    assert ledger.acknowledged <= {uids[p][0] for p in paths[:5]}

    # A file placed by the dead gateway whose row never committed (its sender got no Success).
    orphan_study = settings.spool_path / "1.2.826.0.1.3680043.8.498.1"
    orphan_study.mkdir(parents=True)
    orphan = orphan_study / "1.2.826.0.1.3680043.8.498.1.1.dcm"
    shutil.copyfile(paths[0], orphan)

    gateway = start_service("gateway", settings)
    wait_gateway(settings, gateway)
    assert not orphan.exists() and not orphan_study.exists()  # cleaned at start, not adopted
    # Ours, and any the SIGKILL itself left between placing a file and recording it.
    found = re.search(r"removed (\d+) spool files the store has no record of", gateway.text())
    assert found is not None and int(found.group(1)) >= 1
    with stack.store.read() as session:
        known = {i.path for i in session.scalars(select(Instance))}
    assert {str(p) for p in spool_files(settings.spool_path) if ".incoming" not in str(p)} <= known
    with stack.store.read() as session:
        rows = {i.sop_instance_uid: i.path for i in session.scalars(select(Instance))}
    for sop in ledger.acknowledged:  # everything acknowledged is recorded and on disk
        assert sop in rows and Path(rows[sop]).exists()

    resend_until_taken(settings, paths, uids, ledger)
    counts = wait_settled(ledger, stack.store, timeout=90)
    assert (counts.sent, counts.acknowledged, counts.stored) == (10, 10, 10), counts.as_line()
    assert (counts.triaged_once, counts.duplicates, counts.lost, counts.stuck) == (
        10,
        0,
        0,
        0,
    ), counts.as_line() + "\n" + worker.text()[-2000:]
