"""Attacks on the gateway from the network, each against a real gateway over real sockets.

The deflate bomb runs against ``cxr-triage gateway`` as its own process so that its peak RSS
is its own; the other attacks run against an in-process gateway.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select as sql_select

from cxr_triage.settings import Settings
from dicom_gateway import status
from dicom_gateway.limits import REJECT_LOCAL_LIMIT
from dicom_gateway.scp import Gateway
from governance.audit import Action
from governance.models import Study
from tests.conftest import free_port
from tests.dicom_gateway.builders import CR_IMAGE_STORAGE, make_dataset, write_instance
from tests.dicom_gateway.inspection import stored_instances, wait_until
from tests.dicom_gateway.rawsend import RawInstance, dataset_bytes, raw_instance, send_raw
from tests.inspect_store import audit_events
from tests.peers import echoscu, storescu

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a short (16-bit) length."""
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def deflate_bomb(sop_uid: str, study_uid: str, inflated_mb: int = 1024) -> bytes:
    """A data set that declares itself Deflated and inflates to ``inflated_mb`` MB of zeros.

    It starts with a (0002,0010) Transfer Syntax UID of its own, as a File Meta group would.
    """
    head = (
        _element(0x0008, 0x0016, b"UI", CR_IMAGE_STORAGE.encode())
        + _element(0x0008, 0x0018, b"UI", sop_uid.encode())
        + _element(0x0020, 0x000D, b"UI", study_uid.encode())
        + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, inflated_mb << 20)
    )
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [compressor.compress(head)]
    zeros = bytes(1 << 20)
    parts += [compressor.compress(zeros) for _ in range(inflated_mb)]
    parts.append(compressor.flush())
    return _element(0x0002, 0x0010, b"UI", DEFLATED.encode()) + b"".join(parts)


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture
def gateway_process(
    tmp_path: Path, make_database_url: Callable[[str], str]
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``cxr-triage gateway`` as its own process; yields it and its port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(tmp_path / "data"),
        CXR_DATABASE_URL=make_database_url("sqlite"),
        CXR_DICOM_HOST="127.0.0.1",
        CXR_DICOM_PORT=str(port),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage.cli", "gateway"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("cxr-triage gateway: "), banner
        yield process, port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_deflate_bomb_is_refused_without_inflating_it(
    tmp_path: Path, gateway_process: tuple[subprocess.Popen[str], int]
) -> None:
    process, port = gateway_process
    sop_uid, study_uid = generate_uid(), generate_uid()
    bomb = deflate_bomb(sop_uid, study_uid)
    assert len(bomb) < 2 << 20  # about 1 MB on the wire, 1 GB inflated

    statuses = send_raw("127.0.0.1", port, [RawInstance(CR_IMAGE_STORAGE, sop_uid, bomb)])

    assert statuses == [status.CANNOT_UNDERSTAND]
    good = write_instance(make_dataset(generate_uid()), tmp_path / "good.dcm")
    result = storescu("127.0.0.1", port, [good], calling_ae="PACS")
    assert result.returncode == 0, result.stderr
    assert _vm_hwm_mb(process.pid) < 300


def test_a_file_meta_group_inside_the_data_set_is_refused(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    ds = make_dataset(generate_uid())
    # Explicit VR little endian, as negotiated, but claiming to be implicit VR.
    steering = _element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2")
    item = RawInstance(CR_IMAGE_STORAGE, str(ds.SOPInstanceUID), steering + dataset_bytes(ds))

    assert send_raw("127.0.0.1", settings.dicom_port, [item, raw_instance(ds)]) == [
        status.CANNOT_UNDERSTAND,
        status.SUCCESS,
    ]
    assert len(stored_instances(gateway.store)) == 1


def test_an_instance_over_the_size_limit_is_refused_as_it_streams(
    tmp_path: Path, make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings(max_instance_mb=0.5)
    gateway = start_gateway(settings)
    big = make_dataset(generate_uid(), size=1024)  # 2 MB of pixels
    small = make_dataset(generate_uid())

    statuses = send_raw("127.0.0.1", settings.dicom_port, [raw_instance(big), raw_instance(small)])

    assert statuses == [status.OUT_OF_RESOURCES, status.SUCCESS]
    assert [sop for _, sop, _ in stored_instances(gateway.store)] == [str(small.SOPInstanceUID)]
    leftovers = [p for p in gateway.spool.incoming.iterdir() if p.suffix == ".dcm"]
    assert leftovers == []


def test_sop_classes_outside_the_accepted_ones_are_refused_whatever_the_context(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    ct = make_dataset(generate_uid(), sop_class_uid=CT_IMAGE_STORAGE)
    cr_on_dx = make_dataset(generate_uid())

    statuses = send_raw(
        "127.0.0.1",
        settings.dicom_port,
        [
            raw_instance(ct, context_sop_class_uid=CR_IMAGE_STORAGE),
            raw_instance(cr_on_dx, context_sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1"),
        ],
    )

    assert statuses == [status.SOP_CLASS_NOT_SUPPORTED, status.DATASET_MISMATCH]
    assert stored_instances(gateway.store) == []


def _idle_sockets(count: int, port: int, source: str) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def test_idle_sockets_from_one_host_do_not_lock_out_the_pacs(
    tmp_path: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    settings = make_settings(database_url=database_url, acse_timeout_s=30)
    gateway = start_gateway(settings, refusal_window_s=600)
    good = write_instance(make_dataset(generate_uid()), tmp_path / "good.dcm")
    idle = _idle_sockets(50, settings.dicom_port, "127.0.0.2")
    try:
        result = storescu("127.0.0.1", settings.dicom_port, [good], calling_ae="PACS")
        assert result.returncode == 0, result.stderr
        assert len(stored_instances(gateway.store)) == 1
        # The ones over the per-peer limit were told so: A-ASSOCIATE-RJ, local limit exceeded.
        # A refused connection is read from for 0.5 s, then gets the rejection.
        answers: dict[int, bytes] = {}
        deadline = time.monotonic() + 15
        while len(answers) < 50 - settings.max_associations_per_peer:
            assert time.monotonic() < deadline, f"{len(answers)} rejections"
            readable, _, _ = select.select(
                [s for s in idle if s.fileno() not in answers], [], [], 1
            )
            for sock in readable:
                answers[sock.fileno()] = sock.recv(16)
        assert set(answers.values()) == {REJECT_LOCAL_LIMIT}
        assert gateway.limiter.count("127.0.0.2") == settings.max_associations_per_peer
    finally:
        for sock in idle:
            sock.close()
    # Slots are free as soon as the sockets close, long before the ACSE timeout would end them.
    wait_until(lambda: gateway.limiter.count("127.0.0.2") == 0, timeout=2.0, what="free slots")
    gateway.stop()
    # Audited in aggregate: the first refusal at once, the other 41 in one event at the end of
    # the window (here: at shutdown), not 42 rows.
    events = [
        e
        for e in audit_events(gateway.store, Action.ASSOCIATION_REFUSED)
        if e.actor_address == "127.0.0.2"
    ]
    assert [e.detail["count"] for e in events] == [1, 50 - settings.max_associations_per_peer - 1]
    assert all("per peer" in e.detail["reason"] for e in events)


def test_a_peer_that_says_nothing_is_disconnected_after_the_acse_timeout(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings(acse_timeout_s=0.5)
    gateway = start_gateway(settings)
    [sock] = _idle_sockets(1, settings.dicom_port, "127.0.0.1")
    sock.settimeout(5)
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(16) == b""
    assert time.monotonic() - started < 3
    sock.close()
    wait_until(lambda: gateway.limiter.count() == 0, timeout=2.0, what="a free slot")
    assert echoscu("127.0.0.1", settings.dicom_port).returncode == 0


def test_a_pdu_announcing_gigabytes_is_not_read(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    settings = make_settings()
    start_gateway(settings)
    with socket.create_connection(("127.0.0.1", settings.dicom_port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
        sock.settimeout(5)
        # The gateway closes the connection instead of buffering what follows.
        with pytest.raises(OSError):
            for _ in range(64):
                sock.sendall(bytes(1 << 20))
                time.sleep(0.01)
    assert echoscu("127.0.0.1", settings.dicom_port).returncode == 0


def test_an_attribute_with_an_unknown_vr_costs_that_attribute_not_the_instance(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Gateway]
) -> None:
    # Found by benchmarks/fuzz.py: a Patient ID whose VR bytes are not a VR answered 0x0110.
    settings = make_settings()
    gateway = start_gateway(settings)
    ds = make_dataset(generate_uid())
    data = dataset_bytes(ds)
    index = data.find(b"\x10\x00\x20\x00LO")
    broken = data[: index + 4] + b"L\xff" + data[index + 6 :]

    statuses = send_raw(
        "127.0.0.1",
        settings.dicom_port,
        [RawInstance(CR_IMAGE_STORAGE, str(ds.SOPInstanceUID), broken)],
    )

    assert statuses == [status.SUCCESS]
    with gateway.store.read() as session:
        assert session.scalar(sql_select(Study.patient_pseudonym)) is None
