"""A fault-injection harness: our own Redis and PostgreSQL to restart, a small filesystem to
fill, and a ledger that counts studies in and results out.

Used by ``tests/faults`` and ``benchmarks/fault_soak.py``. Every server here is our own,
started on a free port in a temporary folder: the shared Redis (6379) and PostgreSQL (5432)
that other tests use are never stopped, restarted or flushed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from governance.audit import Action
from governance.db import Store
from governance.models import AuditEvent, ImageInference, Instance, ModelVersion, Study
from governance.registry import active_model
from tests.conftest import free_port

TERMINAL = ("triaged", "no_frontal")
#: The fault tests' model: a randomly initialised ResNet-50 exported at this size. They count
#: studies, not scores, so it needs no training.
INPUT_SIZE = 32


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Unavailable(RuntimeError):
    """A fault cannot be staged on this machine (a tool is missing, not root); tests skip."""


# -- the model ------------------------------------------------------------------------------


def export_random_model(folder: Path) -> Path:
    """A random ResNet-50 exported as TorchScript at ``INPUT_SIZE`` px into ``folder``."""
    import torch

    from worker.model import build_model, export_torchscript

    torch.manual_seed(0)
    return export_torchscript(build_model(), INPUT_SIZE, Path(folder) / "resnet50-32px.pt")


def activate_model_file(store: Store, model_file: Path, version: str) -> None:
    """Register ``model_file`` as ``version`` with a balanced policy (tau 0.5) and activate it."""
    from governance.policies import set_policy
    from governance.registry import activate_model, register_model

    def work(session):  # type: ignore[no-untyped-def]
        model = register_model(session, version=version, path=model_file, input_size=INPUT_SIZE)
        set_policy(
            session,
            model,
            operating_point="balanced",
            tau=0.5,
            rationale="fault tests",
            approved_by="fault harness",
        )
        activate_model(session, version, actor="fault harness")

    store.run(work)


# -- Redis ------------------------------------------------------------------------------------


class RedisServer:
    """Our own ``redis-server`` on a free port with an append-only file in ``folder``."""

    def __init__(self, folder: Path, *, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("redis-server") or ""
        if not self.binary:
            raise Unavailable("redis-server is not installed")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if not _wait_port(self.port, 20):
            raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(20)

    def restart(self, *, kill: bool = False, down_s: float = 0.0) -> None:
        self.stop(kill=kill)
        time.sleep(down_s)
        self.start()

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()


# -- PostgreSQL -------------------------------------------------------------------------------


class PgCluster:
    """Our own PostgreSQL cluster (initdb into a temporary folder, run as the postgres user)."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("staging a PostgreSQL outage needs root (to run as postgres)")
        self.bin = self._bin_dir()
        runuser = shutil.which("runuser")
        if runuser is None:
            raise Unavailable("runuser is not installed")
        self.runuser = runuser
        self.folder = Path(tempfile.mkdtemp(prefix="cxr-pg-"))
        shutil.chown(self.folder, user="postgres", group="postgres")
        self.data = self.folder / "data"
        self.port = free_port()
        self._as_postgres(
            [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"],
            timeout=120,
        )

    @staticmethod
    def _bin_dir() -> Path:
        for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
                return candidate
        raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")

    def _as_postgres(self, command: list[str], timeout: float = 60) -> None:
        result = subprocess.run(
            [self.runuser, "-u", "postgres", "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stderr[-2000:]}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.folder / "postgres.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected; ``immediate``: like a crash)."""
        self._as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], timeout=60
        )

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


# -- a small filesystem to fill ---------------------------------------------------------------


class SmallFilesystem:
    """A size-limited tmpfs mounted on ``folder`` (needs root)."""

    def __init__(self, folder: Path, size_mb: int) -> None:
        if os.geteuid() != 0:
            raise Unavailable("mounting a small filesystem needs root")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise Unavailable(f"cannot mount a tmpfs: {result.stderr.strip()}")
        self.mounted = True

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def fill(self, leave_bytes: int) -> Path:
        """Write a ballast file so that about ``leave_bytes`` stay free; returns it."""
        ballast = self.folder / "ballast.bin"
        size = max(0, self.free_bytes() - leave_bytes)
        with open(ballast, "wb") as handle:
            chunk = b"\0" * (1 << 16)
            while size > 0:
                written = handle.write(chunk[: min(size, len(chunk))])
                size -= written
        return ballast

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)
            self.mounted = False


# -- counting ---------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the PACS sent and what it was told, to be checked against the store.

    ``record(sop_uid, study_uid, status)`` for every C-STORE attempt (status None: no answer).
    """

    sent: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> study UID
    acknowledged: set[str] = field(default_factory=set)
    attempts: int = 0
    refusals: Counter[int] = field(default_factory=Counter)
    sent_at: dict[str, float] = field(default_factory=dict)  # study UID -> last Success

    def record(self, sop_uid: str, study_uid: str, status: int | None) -> None:
        self.attempts += 1
        self.sent[sop_uid] = study_uid
        if status == 0:
            self.acknowledged.add(sop_uid)
            self.sent_at[study_uid] = time.time()
        else:
            self.refusals[-1 if status is None else status] += 1

    def unacknowledged(self) -> list[str]:
        return [uid for uid in self.sent if uid not in self.acknowledged]

    @property
    def studies_acknowledged(self) -> set[str]:
        return {self.sent[uid] for uid in self.acknowledged}

    def count(self, store: Store) -> Counts:
        """Count what the store holds for what was acknowledged."""
        with store.read() as session:
            model = active_model(session)
            return _count(session, self, model)


@dataclass(frozen=True)
class Counts:
    sent: int  # studies the PACS sent (at least one instance attempted)
    acknowledged: int  # studies with every sent instance answered Success
    stored: int  # studies with every acknowledged instance recorded in the store
    triaged_once: int  # acknowledged studies triaged, every instance scored, no duplicate
    duplicates: int  # triages that scored nothing new (a task that ran twice)
    lost: int  # acknowledged instances with no row, or never scored by the end
    stuck: int  # acknowledged studies not in a final status
    statuses: dict[str, int]
    latencies_s: list[float]  # last Success of a study -> its first complete triage

    def as_line(self) -> str:
        return (
            f"sent {self.sent}, acknowledged {self.acknowledged}, stored {self.stored}, "
            f"triaged exactly once {self.triaged_once}, duplicates {self.duplicates}, "
            f"lost {self.lost}, stuck {self.stuck}; statuses {self.statuses}"
        )


def _count(session: object, ledger: Ledger, model: ModelVersion | None) -> Counts:
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    acked_studies = ledger.studies_acknowledged
    rows = {
        sop: (study_uid, instance_id)
        for sop, study_uid, instance_id in session.execute(
            select(Instance.sop_instance_uid, Study.study_instance_uid, Instance.id).join(
                Study, Study.id == Instance.study_id
            )
        )
    }
    statuses = {
        uid: status
        for uid, status in session.execute(select(Study.study_instance_uid, Study.status))
    }
    scored: set[int] = set()
    if model is not None:
        scored = set(
            session.scalars(
                select(ImageInference.instance_id).where(
                    ImageInference.model_version_id == model.id
                )
            )
        )
    lost = [uid for uid in ledger.acknowledged if uid not in rows or rows[uid][1] not in scored]
    lost_studies = {ledger.sent[uid] for uid in lost}
    duplicates, first_complete = _triage_history(session, model, _instances_per_study(ledger))
    stored = sum(
        1
        for study in acked_studies
        if all(uid in rows for uid in ledger.acknowledged if ledger.sent[uid] == study)
    )
    fully_acked = {
        study
        for study in acked_studies
        if all(uid in ledger.acknowledged for uid, s in ledger.sent.items() if s == study)
    }
    stuck = {study for study in acked_studies if statuses.get(study) not in TERMINAL}
    triaged_once = {
        study
        for study in acked_studies
        if study not in stuck and study not in lost_studies and not duplicates.get(study)
    }
    latencies = [
        first_complete[study] - ledger.sent_at[study]
        for study in acked_studies
        if study in first_complete and study in ledger.sent_at
    ]
    return Counts(
        sent=len(set(ledger.sent.values())),
        acknowledged=len(fully_acked),
        stored=stored,
        triaged_once=len(triaged_once),
        duplicates=sum(duplicates.values()),
        lost=len(lost),
        stuck=len(stuck),
        statuses=dict(Counter(statuses.get(study, "missing") for study in acked_studies)),
        latencies_s=latencies,
    )


def _instances_per_study(ledger: Ledger) -> dict[str, int]:
    return dict(Counter(ledger.sent[uid] for uid in ledger.acknowledged))


def _triage_history(
    session: object, model: ModelVersion | None, expected: dict[str, int]
) -> tuple[dict[str, int], dict[str, float]]:
    """Per study: triages by the active version that scored nothing new (duplicates), and
    when the first triage that covered every acknowledged instance was recorded."""
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    duplicates: Counter[str] = Counter()
    complete: dict[str, float] = {}
    if model is None:
        return {}, {}
    seen: dict[str, int] = {}
    events: Iterable[AuditEvent] = session.scalars(
        select(AuditEvent).where(AuditEvent.action == Action.STUDY_TRIAGED).order_by(AuditEvent.id)
    )
    for event in events:
        detail = event.detail or {}
        if detail.get("model_version") != model.version or event.object_uid is None:
            continue
        study = event.object_uid
        covered = int(detail.get("images_scored", 0)) + int(detail.get("images_skipped", 0))
        if study in seen and covered <= seen[study]:
            duplicates[study] += 1
        seen[study] = max(covered, seen.get(study, 0))
        if study not in complete and covered >= expected.get(study, 1 << 30):
            complete[study] = event.occurred_at.timestamp()
    return dict(duplicates), complete


def wait_settled(
    ledger: Ledger,
    store: Store,
    *,
    timeout: float,
    poll_s: float = 0.5,
    check: object = None,
) -> Counts:
    """Poll until every acknowledged study is triaged (or ``timeout``); the last counts."""
    deadline = time.monotonic() + timeout
    counts = ledger.count(store)
    while time.monotonic() < deadline:
        if counts.stuck == 0 and counts.lost == 0:
            return counts
        if callable(check):
            check()
        time.sleep(poll_s)
        try:
            counts = ledger.count(store)
        except Exception:  # the store may be the thing that is down
            continue
    return counts


# -- sending ----------------------------------------------------------------------------------


class StallingProxy:
    """A TCP relay to ``127.0.0.1:target_port`` that passes the first ``stall_after`` bytes a
    peer sends and holds the rest back, while the answers flow freely.

    It puts a kill in the middle of an association by bytes instead of by timing: the server
    receives exactly the instances that fit in ``stall_after`` and is left waiting inside the
    next one, however fast or loaded the machine. When the server side closes (the server was
    killed), the peer's connection is closed too. One connection at a time.
    """

    def __init__(self, target_port: int, stall_after: int) -> None:
        self.target_port = target_port
        self.stall_after = stall_after
        self.forwarded = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            peer, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", self.target_port))
            answers = threading.Thread(target=self._answers, args=(server, peer), daemon=True)
            answers.start()
            with peer, server:
                while self.forwarded < self.stall_after:
                    data = peer.recv(min(65536, self.stall_after - self.forwarded))
                    if not data:
                        return
                    server.sendall(data)
                    self.forwarded += len(data)
                answers.join()  # stalled: until the server goes

    @staticmethod
    def _answers(server: socket.socket, peer: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                peer.sendall(data)
        with contextlib.suppress(OSError):
            peer.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def storescu_send(
    host: str,
    port: int,
    paths: list[Path],
    ledger: Ledger,
    uids: dict[Path, tuple[str, str]],
    *,
    called_ae: str = "CXRTRIAGE",
    calling_ae: str = "ORTHANC",
    timeout: float = 600.0,
) -> int:
    """Send files on one association with dcmtk's storescu (``-nh``: go on after a refusal)
    and record each answer in ``ledger``; ``uids`` maps a path to (SOP, study) UIDs. Returns
    storescu's exit status."""
    command = [
        "/usr/bin/storescu",
        "-v",
        "-nh",
        "-to",
        "20",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        host,
        str(port),
        *(str(p) for p in paths),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    current: Path | None = None
    answered: set[Path] = set()
    for line in (result.stdout + result.stderr).splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response" in line and current is not None:
            sop, study = uids[current]
            ledger.record(sop, study, 0 if "(Success)" in line else 0xA700)
            answered.add(current)
            current = None
    for path in paths:  # no answer (association aborted, gateway gone)
        if path not in answered:
            sop, study = uids[path]
            ledger.record(sop, study, None)
    return result.returncode
