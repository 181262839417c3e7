"""Time from the last instance stored to the study's flag in the API, per broker, side by side.

Runs gateway + worker + web (``cxr-triage up``'s supervisor) with the NON-CLINICAL demo model
(64 px; or, with ``--model-size N``, an untrained ResNet-50 at N px, for timings only), warms
the worker up with one study, then:

- idle: sends synthetic studies one at a time over DICOM (one association each, like a
  modality) and polls ``/api/studies/{uid}`` until it is triaged; the clock starts when the
  association is released;
- with ``--burst N``: N studies on one association (a PACS forwarding its backlog), and, once
  the first of them is triaged, one *late* positive study on its own association. Prints the
  burst's time to notification from each study's last instance stored (p50/p95/max), the late
  study's, the burst's rate in images/s from its first file sent to its last study triaged
  next to the same model's bare forward pass at the worker's batch size (measured in this
  process), and per-stage timings from the study pages (gateway: last instance to queued;
  queue: queued to scoring started; scoring: started to triaged);
- with ``--drain`` (and ``--burst N``): first, before anything else, N other studies are sent on
  one association while no worker runs (gateway, web and beat only), and the benchmark waits
  until the gateway has queued every one of them; then it starts the worker process and times
  the drain from the moment the worker is *ready* (Celery's ``ready.`` line, logged after the
  worker has preloaded the active model on ``worker_ready`` and before its consumer takes the
  first message; seen by polling the worker's log every 10 ms) to the last study triaged. It
  prints the worker's start-up time (process start to ready) separately, and the drain rate in
  scored images/s next to the model alone and the in-process pipeline capacity (below), with
  their ratios (target >= 0.8x the model alone). This is the rate the worker empties a backlog
  at: the live burst above is fed by the gateway, more slowly than the worker scores, so its
  rate is the arrival rate.

The model alone is the active model's forward pass on random tensors at the worker's batch and
precision, measured in this process after the services have stopped. The pipeline capacity
(with ``--drain``) follows benchmarks/worker_pipeline.py: the drained studies are scored again
in this process under a new active version (same weights), ``triage_study`` in
``CXR_WORKER_STUDIES`` threads sharing one model and one batcher, as the worker runs it, without
the broker or the worker's process.

The embedded filesystem broker (the one-machine default) and Redis run in the same invocation.

    python benchmarks/triage_latency.py [--studies 20] [--size 1024] [--brokers filesystem,redis]
        [--burst 200] [--drain] [--model-size 224]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import load_line
from sqlalchemy import select

from cxr_triage.settings import Settings
from cxr_triage.up import SERVICES, Supervisor, prepare_store
from dicom_gateway.scu import send_files, wait_for_echo
from governance.db import Store
from governance.models import Role, Study
from governance.policies import policy_in_force, set_policy
from governance.registry import activate_model, active_model, register_model
from governance.tokens import create_token
from training.synthetic.studies import write_studies

REDIS_URL = os.environ.get("CXR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20, help="timed studies per broker")
    parser.add_argument("--size", type=int, default=1024, help="image rows of the studies")
    parser.add_argument(
        "--brokers", default="filesystem,redis", help="comma-separated: filesystem, redis"
    )
    parser.add_argument(
        "--burst", type=int, default=0, help="then a burst of N studies and a late one (0: off)"
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="with --burst N: first N other studies queued with no worker running, then the "
        "worker started and the drain timed from its ready line to the last study triaged",
    )
    parser.add_argument(
        "--model-size",
        type=int,
        default=0,
        help="0: the 64 px demo model (trained once, kept in --workdir); N: an untrained "
        "ResNet-50 at N px (timings only)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the demo model and studies here between runs",
    )
    return parser


def env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        {
            "CXR_DATA_DIR": str(settings.data_dir),
            "CXR_DATABASE_URL": settings.database_url,
            "CXR_BROKER_URL": settings.broker_url,
            "CXR_QUEUE": settings.queue,
            "CXR_DICOM_HOST": "127.0.0.1",
            "CXR_DICOM_PORT": str(settings.dicom_port),
            "CXR_WEB_PORT": str(settings.web_port),
            "CXR_LOG_LEVEL": "WARNING",
        }
    )
    return env


def api(settings: Settings, token: str, path: str) -> dict[str, object] | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.web_port}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)  # type: ignore[no-any-return]
    except OSError:
        return None


def wait_triaged(settings: Settings, token: str, uid: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = api(settings, token, f"/api/studies/{uid}")
        if study and study.get("status") in {"triaged", "no_frontal", "failed"}:
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(f"study {uid} not triaged in {timeout} s")


def copy_model(source: Store, target: Store) -> None:
    with source.read() as session:
        model = active_model(session)
        assert model is not None
        policy = policy_in_force(session, model.id)
        assert policy is not None
        spec = (model.version, model.path, model.input_size, model.temperature, policy.tau)

    def work(session):  # type: ignore[no-untyped-def]
        version, path, size, temperature, tau = spec
        copy = register_model(
            session, version=version, path=path, input_size=size, temperature=temperature
        )
        set_policy(
            session,
            copy,
            operating_point="balanced",
            tau=tau,
            rationale="benchmark",
            approved_by="benchmark",
        )
        activate_model(session, version)

    target.run(work)


@dataclass
class Plan:
    """What to send: the warm-up study, the idle studies, and the burst with its late study."""

    warmup: Path
    idle: list[Path]
    burst: list[Path]
    late: Path | None
    model_size: int
    drain: list[Path] = field(default_factory=list)


@dataclass
class BrokerRun:
    idle: list[float] = field(default_factory=list)  # release -> visible in the API, s
    idle_stages: list[dict[str, float]] = field(default_factory=list)
    burst: list[float] = field(default_factory=list)  # last instance stored -> triaged, s
    burst_stages: list[dict[str, float]] = field(default_factory=list)
    burst_drain_s: float = 0.0  # first file sent -> last study triaged
    burst_send_s: float = 0.0  # first file sent -> association released
    burst_sent: float = 0.0
    burst_images: int = 0
    late: float | None = None  # late study's release -> visible in the API, s
    late_flagged: bool | None = None
    late_stages: dict[str, float] = field(default_factory=dict)
    drain_queued_s: float = 0.0  # first file sent -> every study queued (no worker)
    drain_startup_s: float = 0.0  # worker process started -> ready
    drain_first_s: float = 0.0  # worker ready -> first study triaged
    drain_s: float = 0.0  # worker ready -> last study triaged
    drain_images: int = 0
    drain: list[float] = field(default_factory=list)  # worker ready -> each study triaged, s
    drain_stages: list[dict[str, float]] = field(default_factory=list)


def parse_time(value: object) -> float:
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def stages(study: dict[str, Any]) -> dict[str, float]:
    """Seconds in each stage, from a study page's stage timestamps."""
    stamps = study.get("timestamps") or {}
    at = {k: parse_time(v) for k, v in stamps.items() if v is not None}
    out = {}
    for name, start, end in (
        ("gateway", "last_received_at", "queued_at"),
        ("queue", "queued_at", "started_at"),
        ("scoring", "started_at", "triaged_at"),
    ):
        if start in at and end in at:
            out[name] = at[end] - at[start]
    return out


def make_model(store: Store, folder: Path, size: int) -> None:
    """Register and activate an untrained ResNet-50 at ``size`` px (for timings only)."""
    import torch

    from worker.model import build_model, export_torchscript

    torch.manual_seed(0)
    path = export_torchscript(build_model(), size, folder / f"resnet50-{size}px.pt")

    def work(session):  # type: ignore[no-untyped-def]
        model = register_model(session, version=f"bench-{size}px", path=path, input_size=size)
        set_policy(session, model, operating_point="balanced", tau=0.5,
                   rationale="benchmark", approved_by="benchmark")  # fmt: skip
        activate_model(session, model.version)

    store.run(work)


def bare_forward(store: Store, batch: int, repeats: int = 10) -> tuple[float, str]:
    """Images/s of the active model's forward pass alone (random tensors, the worker's batch),
    after three untimed passes (TorchScript's profiling executor specialises on the first)."""
    import numpy as np

    from worker.inference import ModelCache, ModelSpec, predict_logits

    with store.read() as session:
        model = active_model(session)
        assert model is not None
        spec = ModelSpec.of(model)
    loaded = ModelCache(device="cpu").get(spec)
    images = np.random.default_rng(0).standard_normal(
        (batch, 3, spec.input_size, spec.input_size), dtype=np.float32
    )
    for _ in range(3):
        predict_logits(loaded, images)
    started = time.perf_counter()
    for _ in range(repeats):
        predict_logits(loaded, images)
    return repeats * batch / (time.perf_counter() - started), loaded.precision


def pipeline_capacity(store: Store, uids: list[str], settings: Settings) -> tuple[float, int]:
    """Images/s of the worker's pipeline run in this process over ``uids`` (already stored),
    and the images scored: benchmarks/worker_pipeline.py's approach, at the worker's settings.

    A new active version with the same weights makes every image pending again; it is loaded
    outside the timed part, as the worker preloads it before it is ready. ``triage_study`` runs
    the studies in ``settings.worker_studies`` threads sharing the model and one batcher, each
    study committed on its own, as the worker's task threads do.
    """
    from concurrent.futures import ThreadPoolExecutor

    from worker.batcher import Batcher
    from worker.inference import ModelCache, ModelSpec, predict_logits
    from worker.triage import triage_study

    with store.read() as session:
        model = active_model(session)
        assert model is not None
        policy = policy_in_force(session, model.id)
        assert policy is not None
        path, size, tau = model.path, model.input_size, policy.tau

    def work(session):  # type: ignore[no-untyped-def]
        again = register_model(
            session, version=f"capacity-{os.getpid()}", path=path, input_size=size
        )
        set_policy(session, again, operating_point="balanced", tau=tau,
                   rationale="benchmark", approved_by="benchmark")  # fmt: skip
        return ModelSpec.of(activate_model(session, again.version, actor="benchmark"))

    spec = store.run(work)
    cache = ModelCache(device="cpu", precision=settings.precision)
    cache.get(spec)  # not timed: the worker loads it before it is ready
    batcher = Batcher(
        predict_logits, batch_size=settings.batch_size, max_wait_s=settings.batch_wait_ms / 1000
    )

    def one(uid: str) -> None:
        triage_study(store, cache, uid, batch_size=settings.batch_size, batcher=batcher)

    started = time.perf_counter()
    with ThreadPoolExecutor(settings.worker_studies) as pool:
        list(pool.map(one, uids))
    elapsed = time.perf_counter() - started
    return batcher.stats.images / elapsed, batcher.stats.images


def send(settings: Settings, folders: list[Path]) -> float:
    """Send the folders' files on one association; the wall time (epoch s) it was released."""
    files = sorted(f for folder in folders for f in folder.glob("*.dcm"))
    report = send_files(files, "127.0.0.1", settings.dicom_port, settings.ae_title)
    assert report.sent == len(files), report.failed
    return time.time()


def triaged_at(store: Store, uids: list[str]) -> dict[str, float]:
    with store.read() as session:
        rows = session.execute(
            select(Study.study_instance_uid, Study.triaged_at).where(
                Study.study_instance_uid.in_(uids), Study.triaged_at.is_not(None)
            )
        ).all()
    return {uid: at.replace(tzinfo=dt.UTC).timestamp() for uid, at in rows if at is not None}


def open_model_store(base: Path, model_size: int) -> Store:
    """The store that holds the benchmark's model, kept in the work folder between runs (the
    demo model is trained once); each broker's run copies the model into a fresh store."""
    settings = Settings(_env_file=None, data_dir=base / f"model-{model_size or 'demo'}")  # type: ignore[call-arg]
    prepare_store(settings)
    store = Store.from_url(settings.database_url)
    with store.read() as session:
        if active_model(session) is not None:
            return store
    if model_size:
        make_model(store, base, model_size)
    else:
        from training.demo import ensure_demo_model

        ensure_demo_model(settings, store, progress=False)
    return store


def run_broker(name: str, base: Path, plan: Plan, model_store: Store) -> tuple[BrokerRun, Store]:
    # A fresh store and broker folder each run: studies left by an earlier run in the same
    # --workdir would be found triaged already.
    shutil.rmtree(base / name, ignore_errors=True)
    settings = Settings(
        _env_file=None,
        data_dir=base / name,  # type: ignore[call-arg]
        broker_url=REDIS_URL if name == "redis" else "",
        queue=f"cxr-bench-{os.getpid()}",
        dicom_port=free_port(),
        web_port=free_port(),
    )
    prepare_store(settings)
    store = Store.from_url(settings.database_url)
    copy_model(model_store, store)
    _, token = store.run(
        lambda s: create_token(s, name="bench", role=Role.RADIOLOGIST, created_by="benchmark")
    )
    services = tuple(s for s in SERVICES if s != "worker") if plan.drain else SERVICES
    supervisor = Supervisor(services=services, env=env_for(settings), log_level="WARNING")
    supervisor.start()
    run = BrokerRun()
    try:
        assert wait_for_echo("127.0.0.1", settings.dicom_port, settings.ae_title, timeout=120)
        if plan.drain:
            run_drain(settings, store, token, plan, run, supervisor, base / f"worker-{name}.log")
        for folder in [plan.warmup, *plan.idle]:
            stored = time.monotonic()
            send(settings, [folder])
            done = wait_triaged(settings, token, folder.name)
            if folder is not plan.warmup:
                run.idle.append(done - stored)
                page = api(settings, token, f"/api/studies/{folder.name}")
                run.idle_stages.append(stages(page or {}))
        if plan.burst:
            run_burst(settings, store, token, plan, run)
    finally:
        supervisor.stop()
    return run, store


def queued(store: Store, uids: list[str]) -> int:
    """How many of ``uids`` the gateway has queued."""
    with store.read() as session:
        rows = session.execute(
            select(Study.study_instance_uid).where(
                Study.study_instance_uid.in_(uids), Study.queued_at.is_not(None)
            )
        ).all()
    return len(rows)


def start_worker(settings: Settings, log: Path, timeout: float = 600) -> subprocess.Popen[bytes]:
    """``cxr-triage worker`` (INFO log into ``log``); returns once its log says ``ready.``."""
    with open(log, "wb") as handle:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage.cli", "--log-level", "INFO", "worker"],
            env=env_for(settings),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.endswith(b" ready.") for line in log.read_bytes().splitlines()):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {proc.returncode}; see {log}")
        time.sleep(0.01)
    proc.kill()
    raise TimeoutError(f"the worker was not ready in {timeout:.0f} s; see {log}")


def run_drain(
    settings: Settings,
    store: Store,
    token: str,
    plan: Plan,
    run: BrokerRun,
    supervisor: Supervisor,
    log: Path,
) -> None:
    """The drained burst: stored and queued with no worker running, then the worker started.

    The drain runs from the worker's ``ready.`` line (the active model preloaded, the consumer
    about to take its first message; seen by polling its log every 10 ms) to the last study
    triaged; the worker's start-up (process start to ready) is kept apart.
    """
    uids = [folder.name for folder in plan.drain]
    started = time.time()
    send(settings, plan.drain)
    deadline = time.monotonic() + 60 + len(uids)
    while queued(store, uids) < len(uids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(uids) - queued(store, uids)} studies not queued")
        time.sleep(0.05)
    run.drain_queued_s = time.time() - started
    if triaged_at(store, uids):
        raise RuntimeError("a study was triaged with no worker running")
    spawned = time.time()
    worker = start_worker(settings, log)
    ready = time.time()
    supervisor.procs["worker"] = worker  # stopped with the others
    run.drain_startup_s = ready - spawned
    deadline = time.monotonic() + 600 + 10 * len(uids)
    done: dict[str, float] = {}
    while len(done) < len(uids) and time.monotonic() < deadline:
        time.sleep(0.05)
        done = triaged_at(store, uids)
    if len(done) < len(uids):
        raise TimeoutError(f"{len(uids) - len(done)} studies of the drain not triaged")
    run.drain_first_s = min(done.values()) - ready
    run.drain_s = max(done.values()) - ready
    run.drain = [at - ready for at in done.values()]
    for page in pages(settings, token, uids):
        run.drain_stages.append(stages(page))
        run.drain_images += scored(page)


def pages(settings: Settings, token: str, uids: list[str]) -> list[dict[str, Any]]:
    """The studies' pages from the API."""
    return [api(settings, token, f"/api/studies/{uid}") or {} for uid in uids]


def scored(page: dict[str, Any]) -> int:
    """Images of a study page that were scored."""
    images: list[dict[str, Any]] = page.get("images") or []
    return sum(1 for image in images if image.get("scored"))


def run_burst(settings: Settings, store: Store, token: str, plan: Plan, run: BrokerRun) -> None:
    """The burst on one association and, once its first study is triaged, the late study.

    The gateway queues each study of an open association once it has been quiet for the
    stable age, so the burst is scored while it is still arriving: each study's time to
    notification runs from its own last instance stored.
    """
    uids = [folder.name for folder in plan.burst]

    def send_burst() -> None:
        run.burst_sent = send(settings, plan.burst)

    sender = threading.Thread(target=send_burst)
    started = time.time()
    sender.start()
    deadline = time.monotonic() + 600 + 10 * len(uids)
    while not triaged_at(store, uids) and time.monotonic() < deadline:
        time.sleep(0.02)
    if plan.late is not None:  # during the burst
        stored = time.monotonic()
        send(settings, [plan.late])
        run.late = wait_triaged(settings, token, plan.late.name, timeout=600) - stored
        page = api(settings, token, f"/api/studies/{plan.late.name}") or {}
        run.late_flagged = bool(page.get("flagged"))
        run.late_stages = stages(page)
    sender.join()
    done: dict[str, float] = {}
    while len(done) < len(uids) and time.monotonic() < deadline:
        done = triaged_at(store, uids)
        time.sleep(0.2)
    if len(done) < len(uids):
        raise TimeoutError(f"{len(uids) - len(done)} studies of the burst not triaged")
    run.burst_send_s = run.burst_sent - started
    run.burst_drain_s = max(done.values()) - started
    for uid, page in zip(uids, pages(settings, token, uids), strict=True):
        stamps = page.get("timestamps") or {}
        run.burst.append(done[uid] - parse_time(stamps["last_received_at"]))  # type: ignore[index]
        run.burst_stages.append(stages(page))
        run.burst_images += scored(page)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(label: str, values: list[float]) -> str:
    if not values:
        return f"{label:<34}{'-':>9}"
    return (
        f"{label:<34}{statistics.median(values):>9.3f}{pct(values, 0.95):>9.3f}"
        f"{max(values):>9.3f}{len(values):>6}"
    )


def report(name: str, run: BrokerRun) -> None:
    print(f"\n[{name}]{'':<28}{'p50 s':>9}{'p95 s':>9}{'max s':>9}{'n':>6}")
    print(row("idle: release -> flag in API", run.idle))
    for stage in ("gateway", "queue", "scoring"):
        print(row(f"  idle {stage}", [s[stage] for s in run.idle_stages if stage in s]))
    if run.burst:
        print(row("burst: last instance -> triaged", run.burst))
        for stage in ("gateway", "queue", "scoring"):
            print(row(f"  burst {stage}", [s[stage] for s in run.burst_stages if stage in s]))
        if run.late is not None:
            flag = "flagged" if run.late_flagged else "NOT flagged by this model"
            print(row(f"late study ({flag})", [run.late]))
            for stage, value in run.late_stages.items():
                print(row(f"  late {stage}", [value]))
    if run.drain:
        print(row("drain: worker ready -> triaged", run.drain))
        for stage in ("gateway", "queue", "scoring"):
            print(row(f"  drain {stage}", [s[stage] for s in run.drain_stages if stage in s]))


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.drain and not args.burst:
        parser.error("--drain needs --burst N (the drained burst has N studies)")
    base = args.workdir or Path(tempfile.mkdtemp(prefix="cxr-latency-"))
    data = base / "studies"
    if not (data / "labels.csv").is_file():
        write_studies(data, args.studies + 1, size=args.size, seed=5)
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    burst: list[Path] = []
    late: Path | None = None
    if args.burst:
        burst_dir = base / f"burst-{args.burst}"
        if not (burst_dir / "labels.csv").is_file():
            write_studies(burst_dir, args.burst, size=args.size, seed=6, positive_fraction=0.1)
        burst = sorted(p for p in burst_dir.iterdir() if p.is_dir())
        late_dir = base / "late"
        if not (late_dir / "labels.csv").is_file():
            write_studies(late_dir, 1, size=args.size, seed=8, positive_fraction=1.0)
        late = next(p for p in late_dir.iterdir() if p.is_dir())
    drain: list[Path] = []
    if args.drain:
        drain_dir = base / f"drain-{args.burst}"
        if not (drain_dir / "labels.csv").is_file():
            write_studies(drain_dir, args.burst, size=args.size, seed=7, positive_fraction=0.1)
        drain = sorted(p for p in drain_dir.iterdir() if p.is_dir())
    plan = Plan(folders[0], folders[1 : args.studies + 1], burst, late, args.model_size, drain)
    model = f"untrained ResNet-50 at {args.model_size} px" if args.model_size else "demo 64 px"
    print(
        f"{load_line()}; model: {model}; "
        f"{len(plan.idle)} idle studies of {args.size} px (frontal + lateral), one association "
        f"each; burst: {len(burst)} studies on one association + 1 late"
        + (f"; drain: {len(drain)} studies queued before the worker starts" if drain else "")
        + f"; work folder {base}"
    )
    results: dict[str, BrokerRun] = {}
    model_store = open_model_store(base, args.model_size)
    first_store: Store | None = None
    for name in args.brokers.split(","):
        run, store = run_broker(name, base, plan, model_store)
        first_store = first_store or store
        results[name] = run
    for name, run in results.items():
        report(name, run)
    if burst and first_store is not None:
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        capacity, precision = bare_forward(model_store, settings.batch_size)
        print(f"\nmodel alone ({precision}, batch {settings.batch_size}): {capacity:.1f} img/s")
        pipeline = 0.0
        if drain:
            pipeline, images = pipeline_capacity(first_store, [p.name for p in drain], settings)
            print(
                f"pipeline capacity in this process ({settings.worker_studies} studies at once, "
                f"batch {settings.batch_size}, {images} images of the drained studies): "
                f"{pipeline:.1f} img/s, {pipeline / capacity:.2f}x the model alone"
            )
        for name, run in results.items():
            rate = run.burst_images / run.burst_drain_s
            print(
                f"[{name}] burst: {run.burst_images} images sent in {run.burst_send_s:.1f} s, "
                f"all triaged {run.burst_drain_s:.1f} s after the first was sent = {rate:.1f} "
                f"img/s, {rate / capacity:.2f}x the model alone"
                + (
                    " (bound by the arrival, not the worker)"
                    if run.burst_send_s > 0.8 * run.burst_drain_s
                    else ""
                )
            )
        for name, run in results.items():
            if not run.drain_s:
                continue
            rate = run.drain_images / run.drain_s
            print(
                f"[{name}] drain: {run.drain_images} images of {len(drain)} studies, all "
                f"queued {run.drain_queued_s:.1f} s after the first file was sent; worker "
                f"start-up (process start -> ready) {run.drain_startup_s:.1f} s; from ready: "
                f"first study triaged in {run.drain_first_s:.2f} s, last in {run.drain_s:.1f} "
                f"s = {rate:.1f} img/s, {rate / capacity:.2f}x the model alone (target >= "
                f"0.8), {rate / pipeline:.2f}x the pipeline capacity"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
