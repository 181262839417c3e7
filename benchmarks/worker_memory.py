"""Worker RSS over many studies: a real ``cxr-triage worker`` process, sampled from /proc.

``--studies`` one-image studies (``--pixels`` square, 12-bit) are recorded in a scratch SQLite
store, an untrained ResNet-50 at ``--size`` px is registered and activated, every study is
queued on Redis, and a real worker (task threads, batcher, both lanes) triages them. Prints
the worker's RSS when it is ready (model loaded and warmed), after ``--warmup`` studies, at
every quarter, and at the end, and the growth from after the warm-up to the end per 1,000
studies (flat: a few MB at most, from the allocator's caches).

    python benchmarks/worker_memory.py [--studies 1000] [--pixels 256] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_line
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from tqdm import tqdm
from triage_latency import free_port
from worker_pipeline import record, scratch_store, write_image

from governance.db import Store
from governance.models import Study

REDIS_URL = os.environ.get("CXR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--pixels", type=int, default=256, help="image side (default 256)")
    parser.add_argument("--size", type=int, default=64, help="model input (default 64)")
    parser.add_argument("--warmup", type=int, default=100, help="studies before the baseline")
    return parser


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from governance.policies import set_policy
    from governance.registry import activate_model, register_model
    from worker.celery_app import make_celery, queue_study

    print(load_line())
    with tempfile.TemporaryDirectory(prefix="cxr-memory-") as tmp:
        folder = Path(tmp)
        store, model_path = scratch_store(folder, args.size)
        url = f"sqlite:///{folder / 'store.db'}"  # scratch_store's

        def activate(session):  # type: ignore[no-untyped-def]
            model = register_model(session, version="mem", path=model_path, input_size=args.size)
            set_policy(session, model, operating_point="balanced", tau=0.5,
                       rationale="benchmark", approved_by="bench")  # fmt: skip
            activate_model(session, "mem", actor="bench")

        store.run(activate)
        uids = []
        for n in tqdm(range(args.studies), desc="writing studies", unit="study"):
            study_uid = generate_uid()
            path = write_image(folder, study_uid, n, args.pixels, False)
            record(store, path, study_uid, path.stem, ExplicitVRLittleEndian)
            uids.append(study_uid)
        queue = f"cxr-bench-mem-{os.getpid()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
        env.update(
            CXR_DATA_DIR=str(folder / "data"),
            CXR_DATABASE_URL=url,
            CXR_BROKER_URL=REDIS_URL,
            CXR_QUEUE=queue,
            CXR_DEVICE="cpu",
            CXR_DICOM_PORT=str(free_port()),
            CXR_WEB_PORT=str(free_port()),
        )
        log = (folder / "worker.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage.cli", "--log-level", "WARNING", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        app = make_celery(_settings(env))
        samples: list[tuple[str, int, float]] = []
        try:
            # One study first: ready means the model is loaded and has scored once.
            queue_study(app, uids[0])
            wait_for(store, 1, proc)
            samples.append(("ready (model loaded, 1 study)", 1, rss_mb(proc.pid)))
            for uid in uids[1:]:
                queue_study(app, uid)
            marks = sorted({args.warmup, *(args.studies * q // 4 for q in (1, 2, 3, 4))})
            bar = tqdm(total=args.studies, desc="triaging", unit="study", initial=1)
            done = 1
            for mark in marks:
                while done < mark:
                    now = triaged(store)
                    bar.update(now - done)
                    done = now
                    if proc.poll() is not None:
                        raise RuntimeError("the worker exited; see its log")
                    time.sleep(0.2)
                label = "after warm-up" if mark == args.warmup else f"after {mark}"
                samples.append((label, done, rss_mb(proc.pid)))
            bar.close()
        finally:
            proc.terminate()
            proc.wait(30)
            app.close()
            store.dispose()
    print(f"\n{args.studies} studies, {args.pixels} px images, model {args.size} px")
    print(f"{'':<32}{'studies':>8}{'RSS MB':>9}")
    for label, count, rss in samples:
        print(f"{label:<32}{count:>8}{rss:>9.1f}")
    base = next(s for s in samples if s[0] == "after warm-up")
    end = samples[-1]
    per_1000 = (end[2] - base[2]) / max(1, end[1] - base[1]) * 1000
    print(f"growth after warm-up: {end[2] - base[2]:+.1f} MB ({per_1000:+.1f} MB per 1,000)")
    return 0


def _settings(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from cxr_triage.settings import Settings

    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=Path(env["CXR_DATA_DIR"]),
        broker_url=env["CXR_BROKER_URL"],
        queue=env["CXR_QUEUE"],
    )


def triaged(store: Store) -> int:
    with store.read() as session:
        return int(session.scalar(select(func.count()).where(Study.triaged_at.is_not(None))) or 0)


def wait_for(store: Store, count: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while triaged(store) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the worker did not triage the first study; see its log")
        time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
