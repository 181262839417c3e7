"""Soak under faults: N studies through worker kills, a Redis restart and a PostgreSQL outage.

Pushes N synthetic one-image studies (default 1,000) from 4 concurrent associations at a time
(dcmtk's storescu, 10 studies per association, refused instances sent again as a PACS does)
to a real ``cxr-triage gateway``, triaged by real ``cxr-triage worker`` processes (two, so
one works while the other restarts) and checked through a real ``cxr-triage web``. Meanwhile:

- a worker is killed with SIGKILL every ``--kill-every`` seconds (20; the older of the two),
  and a new one started in its place, until every study is acknowledged and the other faults
  are over; a worker that exits by itself (one started while PostgreSQL is down refuses to
  start) is started again, as a restart policy would;
- Redis (our own redis-server, append-only file) is killed and restarted once;
- PostgreSQL (our own cluster, initdb into a temporary folder; needs root) is stopped for
  ``--pg-outage`` seconds (30).

Then it waits for every acknowledged study to be triaged and prints: studies sent,
acknowledged, stored, triaged exactly once, duplicates (triages that scored nothing new),
lost, stuck, and p50/p95 time from a study's last C-STORE Success to its complete triage.
The shared Redis and PostgreSQL of the machine are never touched. The model is a random
ResNet-50 exported at 32 px: this counts studies, not scores.

    python benchmarks/fault_soak.py [--studies 1000] [--senders 4] [--kill-every 20]
        [--pg-outage 30] [--size 256] [--settle-timeout 900]
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the harness lives with the tests
    sys.path.insert(0, str(ROOT))

from cxr_triage.settings import Settings  # noqa: E402
from governance.db import Store  # noqa: E402
from tests.faults.harness import (  # noqa: E402
    Counts,
    Ledger,
    PgCluster,
    RedisServer,
    Unavailable,
    free_port,
    storescu_send,
    wait_settled,
)
from tests.services import settings_env  # noqa: E402

STUDIES_PER_ASSOCIATION = 10
WORKERS = 2


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000, help="studies to send (1000)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent associations (4)")
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between kills")
    parser.add_argument("--pg-outage", type=float, default=30.0, help="seconds PostgreSQL is down")
    parser.add_argument("--size", type=int, default=256, help="image rows (256)")
    parser.add_argument("--settle-timeout", type=float, default=900.0, help="seconds to wait")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Services:
    """gateway, workers and web as real processes with one settings object."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.count = 0
        self.running: list[Proc] = []

    def start(self, name: str) -> Proc:
        self.count += 1
        log = open(self.logs / f"{name}-{self.count}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage.cli", "--log-level", "INFO", name],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        item = Proc(name, proc)
        self.running.append(item)
        return item

    def workers(self) -> list[Proc]:
        return [p for p in self.running if p.name == "worker" and p.proc.poll() is None]

    def stop_all(self) -> None:
        for item in self.running:
            if item.proc.poll() is None:
                item.proc.terminate()
        for item in self.running:
            try:
                item.proc.wait(30)
            except subprocess.TimeoutExpired:
                item.proc.kill()


def make_model(folder: Path) -> Path:
    import torch

    from worker.model import build_model, export_torchscript

    torch.manual_seed(0)
    return export_torchscript(build_model(), 32, folder / "resnet50-32px.pt")


def prepare_store(url: str, model_path: Path) -> None:
    from governance.policies import set_policy
    from governance.registry import activate_model, register_model
    from migrations import upgrade

    upgrade(url)
    store = Store.from_url(url)

    def work(session):  # type: ignore[no-untyped-def]
        model = register_model(session, version="soak-v1", path=model_path, input_size=32)
        set_policy(
            session,
            model,
            operating_point="balanced",
            tau=0.5,
            rationale="soak",
            approved_by="soak",
        )
        activate_model(session, "soak-v1", actor="soak")

    store.run(work)
    store.dispose()


def sender(
    port: int,
    work: queue.Queue[list[Path]],
    uids: dict[Path, tuple[str, str]],
    ledger: Ledger,
    lock: threading.Lock,
    stop: threading.Event,
) -> None:
    """One PACS association at a time: send a batch, put refused instances back for later."""
    while not stop.is_set():
        try:
            batch = work.get(timeout=0.5)
        except queue.Empty:
            continue
        local = Ledger()
        storescu_send("127.0.0.1", port, batch, local, uids, timeout=300)
        with lock:
            for sop in local.sent:
                ledger.record(sop, local.sent[sop], 0 if sop in local.acknowledged else 0xA700)
                if sop in local.acknowledged:
                    ledger.sent_at[local.sent[sop]] = local.sent_at[local.sent[sop]]
        refused = [p for p in batch if uids[p][0] not in local.acknowledged]
        if refused:
            time.sleep(2.0)  # a PACS retries after a while
            work.put(refused)
        work.task_done()


def faults(
    services: Services,
    redis: RedisServer,
    pg: PgCluster,
    args: argparse.Namespace,
    stop: threading.Event,
    log: list[str],
    done: threading.Event,
    killing: threading.Event,
) -> None:
    """Kill the older worker every --kill-every s; restart Redis once; stop PostgreSQL once."""
    began = time.monotonic()
    redis_done = pg_done = False
    next_kill = began + args.kill_every
    while not stop.wait(0.5):
        now = time.monotonic()
        alive = services.workers()
        for _ in range(WORKERS - len(alive)):
            # A restart policy (compose's `unless-stopped`): a worker that could not start
            # while the store was down exits with one line and is started again.
            services.start("worker")
        if done.is_set() and not killing.is_set():
            continue  # faults over; only the restart policy runs until the end
        if now >= next_kill:
            next_kill = now + args.kill_every
            workers = sorted(services.workers(), key=lambda p: p.started)
            if workers:
                workers[0].proc.send_signal(signal.SIGKILL)
                workers[0].proc.wait()
                log.append(f"{now - began:6.1f} s  worker {workers[0].proc.pid} killed")
            services.start("worker")
        if not redis_done and now - began >= 1.5 * args.kill_every:
            redis.restart(kill=True, down_s=2.0)
            redis_done = True
            log.append(f"{now - began:6.1f} s  redis killed and restarted")
        if not pg_done and now - began >= 2.5 * args.kill_every:
            pg.stop("fast")
            log.append(f"{now - began:6.1f} s  postgresql stopped")
            stop.wait(args.pg_outage)
            pg.start()
            pg_done = True
            log.append(f"{time.monotonic() - began:6.1f} s  postgresql started")
        if redis_done and pg_done:
            done.set()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def report(counts: Counts, n: int, elapsed: float, log: list[str]) -> None:
    print("\nfaults:")
    for line in log:
        print(f"  {line}")
    print(f"\n{'studies':<24}{'count':>8}   target")
    rows = [
        ("sent", counts.sent, n),
        ("acknowledged", counts.acknowledged, n),
        ("stored", counts.stored, n),
        ("triaged exactly once", counts.triaged_once, n),
        ("duplicates", counts.duplicates, 0),
        ("lost", counts.lost, 0),
        ("stuck", counts.stuck, 0),
    ]
    for name, value, target in rows:
        print(f"{name:<24}{value:>8}   {target}")
    lat = counts.latencies_s
    print(
        f"\ntime to triaged (last Success -> complete triage), {len(lat)} studies: "
        f"p50 {percentile(lat, 0.5):.2f} s, p95 {percentile(lat, 0.95):.2f} s, "
        f"max {max(lat) if lat else float('nan'):.2f} s"
    )
    print(f"statuses: {counts.statuses}; wall time {elapsed:.0f} s")


def run(args: argparse.Namespace) -> Counts:
    from training.synthetic.studies import write_studies

    base = Path(tempfile.mkdtemp(prefix="cxr-soak-"))
    logs = base / "logs"
    logs.mkdir()
    print(f"work folder {base}", flush=True)
    try:
        redis = RedisServer(base / "redis")
        pg = PgCluster()
    except Unavailable as exc:
        raise SystemExit(f"fault_soak: {exc}") from None
    redis.start()
    pg.start()
    services: Services | None = None
    try:
        model = make_model(base)
        prepare_store(pg.url, model)
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=base / "data",
            database_url=pg.url,
            broker_url=redis.url,
            queue="cxr-soak",
            dicom_host="127.0.0.1",
            dicom_port=free_port(),
            web_port=free_port(),
            allowed_calling_aes=["ORTHANC"],
            precision="fp32",
            stable_age_s=1.0,
            requeue_after_s=30.0,
            sweep_interval_s=2.0,
            network_timeout_s=20.0,
            spool_min_free_gb=0.0,
        )
        print(f"writing {args.studies} studies ({args.size} px)", flush=True)
        records = write_studies(
            base / "studies", args.studies, size=args.size, seed=5, lateral=False
        )
        uids = {Path(str(r.path)): (r.sop_instance_uid, r.study_instance_uid) for r in records}
        paths = list(uids)

        services = Services(settings, logs)
        services.start("gateway")
        services.start("web")
        services.start("worker")
        services.start("worker")
        from tests.peers import echoscu

        deadline = time.monotonic() + 120
        while echoscu("127.0.0.1", settings.dicom_port, calling_ae="ORTHANC").returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("fault_soak: the gateway did not answer C-ECHO")
            time.sleep(0.5)

        ledger = Ledger()
        lock = threading.Lock()
        work: queue.Queue[list[Path]] = queue.Queue()
        for start in range(0, len(paths), STUDIES_PER_ASSOCIATION):
            work.put(paths[start : start + STUDIES_PER_ASSOCIATION])
        stop_senders = threading.Event()
        stop_faults = threading.Event()
        fault_log: list[str] = []
        faults_done = threading.Event()
        killing = threading.Event()
        killing.set()
        began = time.monotonic()
        threads = [
            threading.Thread(
                target=sender,
                args=(settings.dicom_port, work, uids, ledger, lock, stop_senders),
                daemon=True,
            )
            for _ in range(args.senders)
        ]
        fault_thread = threading.Thread(
            target=faults,
            args=(services, redis, pg, args, stop_faults, fault_log, faults_done, killing),
            daemon=True,
        )
        for thread in threads:
            thread.start()
        fault_thread.start()
        work.join()  # every study acknowledged (refused ones were sent again)
        stop_senders.set()
        print(f"all {args.studies} studies acknowledged after {time.monotonic() - began:.0f} s")
        faults_done.wait(max(0.0, args.settle_timeout - (time.monotonic() - began)))
        killing.clear()  # the kills stop with the sending and the other faults
        fault_log.append(f"{time.monotonic() - began:6.1f} s  kills stop; settling")
        store = Store.from_url(pg.url)
        counts = wait_settled(ledger, store, timeout=args.settle_timeout, poll_s=2.0)
        store.dispose()
        stop_faults.set()
        fault_thread.join(30)
        report(counts, args.studies, time.monotonic() - began, fault_log)
        return counts
    finally:
        if services is not None:
            services.stop_all()
        redis.stop(kill=True)
        pg.destroy()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.studies < 1 or args.senders < 1:
        raise SystemExit("fault_soak: --studies and --senders must be at least 1")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    counts = run(args)
    ok = (
        counts.triaged_once == args.studies
        and counts.lost == 0
        and counts.stuck == 0
        and counts.duplicates == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
