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
  queue: queued to scoring started; scoring: started to triaged).

The embedded filesystem broker (the one-machine default) and Redis run in the same invocation.

    python benchmarks/triage_latency.py [--studies 20] [--size 1024] [--brokers filesystem,redis]
        [--burst 200] [--model-size 224]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
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
from cxr_triage.up import Supervisor, prepare_store
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


def bare_forward(store: Store, batch: int, repeats: int = 3) -> tuple[float, str]:
    """Images/s of the active model's forward pass alone (random tensors, the worker's batch)."""
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
    predict_logits(loaded, images)
    started = time.perf_counter()
    for _ in range(repeats):
        predict_logits(loaded, images)
    return repeats * batch / (time.perf_counter() - started), loaded.precision


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


def run_broker(
    name: str, base: Path, plan: Plan, model_store: Store | None
) -> tuple[BrokerRun, Store]:
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
    if model_store is not None:
        copy_model(model_store, store)
    elif plan.model_size:
        make_model(store, base, plan.model_size)
    else:
        from training.demo import ensure_demo_model

        ensure_demo_model(settings, store, progress=False)
    _, token = store.run(
        lambda s: create_token(s, name="bench", role=Role.RADIOLOGIST, created_by="benchmark")
    )
    supervisor = Supervisor(env=env_for(settings), log_level="WARNING")
    supervisor.start()
    run = BrokerRun()
    try:
        assert wait_for_echo("127.0.0.1", settings.dicom_port, settings.ae_title, timeout=120)
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
    for uid in uids:
        page = api(settings, token, f"/api/studies/{uid}") or {}
        stamps = page.get("timestamps") or {}
        run.burst.append(done[uid] - parse_time(stamps["last_received_at"]))  # type: ignore[index]
        run.burst_stages.append(stages(page))
        images: list[dict[str, Any]] = page.get("images") or []  # type: ignore[assignment]
        run.burst_images += sum(1 for image in images if image.get("scored"))


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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
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
    plan = Plan(folders[0], folders[1 : args.studies + 1], burst, late, args.model_size)
    model = f"untrained ResNet-50 at {args.model_size} px" if args.model_size else "demo 64 px"
    print(
        f"{load_line()}; model: {model}; "
        f"{len(plan.idle)} idle studies of {args.size} px (frontal + lateral), one association "
        f"each; burst: {len(burst)} studies on one association + 1 late; work folder {base}"
    )
    results: dict[str, BrokerRun] = {}
    model_store: Store | None = None
    for name in args.brokers.split(","):
        run, store = run_broker(name, base, plan, model_store)
        model_store = model_store or store
        results[name] = run
    for name, run in results.items():
        report(name, run)
    if burst and model_store is not None:
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        capacity, precision = bare_forward(model_store, settings.batch_size)
        print(f"\nmodel alone ({precision}, batch {settings.batch_size}): {capacity:.1f} img/s")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
