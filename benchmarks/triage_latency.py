"""Time from the last instance stored to the study's flag in the API, per broker, side by side.

Runs gateway + worker + web (``cxr-triage up``'s supervisor) with the NON-CLINICAL demo model,
warms the worker up with one study, then sends synthetic studies one at a time over DICOM (one
association each, like a modality) and polls ``/api/studies/{uid}`` until it is triaged. The
clock starts when the last C-STORE response of the study arrives. The embedded filesystem
broker (the one-machine default) and Redis run in the same invocation.

    python benchmarks/triage_latency.py [--studies 20] [--size 1024] [--brokers filesystem,redis]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from cxr_triage.settings import Settings
from cxr_triage.up import Supervisor, prepare_store
from dicom_gateway.scu import send_files, wait_for_echo
from governance.db import Store
from governance.models import Role
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


def run_broker(
    name: str, base: Path, studies: list[Path], warmup: Path, model_store: Store | None
) -> tuple[list[float], Store]:
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
    if model_store is None:
        from training.demo import ensure_demo_model

        ensure_demo_model(settings, store, progress=False)
    else:
        copy_model(model_store, store)
    _, token = store.run(
        lambda s: create_token(s, name="bench", role=Role.RADIOLOGIST, created_by="benchmark")
    )
    supervisor = Supervisor(env=env_for(settings), log_level="WARNING")
    supervisor.start()
    latencies: list[float] = []
    try:
        assert wait_for_echo("127.0.0.1", settings.dicom_port, settings.ae_title, timeout=120)
        for folder in [warmup, *studies]:
            files = sorted(folder.glob("*.dcm"))
            report = send_files(files, "127.0.0.1", settings.dicom_port, settings.ae_title)
            stored = time.monotonic()
            assert report.sent == len(files), report.failed
            done = wait_triaged(settings, token, folder.name)
            if folder is not warmup:
                latencies.append(done - stored)
    finally:
        supervisor.stop()
    return latencies, store


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="cxr-latency-"))
    data = base / "studies"
    if not (data / "labels.csv").is_file():
        write_studies(data, args.studies + 1, size=args.size, seed=5)
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    warmup, studies = folders[0], folders[1 : args.studies + 1]
    print(
        f"{len(studies)} studies of {args.size} px (frontal + lateral), one association each; "
        f"work folder {base}"
    )
    results: dict[str, list[float]] = {}
    model_store: Store | None = None
    for name in args.brokers.split(","):
        latencies, store = run_broker(name, base, studies, warmup, model_store)
        model_store = model_store or store
        results[name] = latencies
    print(f"\n{'broker':<12}{'median s':>10}{'p90 s':>10}{'max s':>10}")
    for name, values in results.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        print(f"{name:<12}{statistics.median(values):>10.3f}{p90:>10.3f}{max(values):>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
