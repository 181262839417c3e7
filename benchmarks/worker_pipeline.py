"""End-to-end worker throughput against the bare model, side by side in one run.

Stored DICOM files in, results committed: ``--studies`` studies of ``--per-study`` frontal
images (``--pixels`` square, 12-bit, optionally JPEG 2000 lossless) are recorded in a scratch
SQLite store, a ResNet-50 at ``--size`` is registered and activated, and ``triage_study`` runs
every study (read, select, decode, preprocess, score, decide, commit) the way the worker runs
it: ``--concurrent`` studies at once in threads sharing one model, the prefetch pool and one
batcher (worker.batcher), each study committed on its own. The reference is the same loaded
model's forward pass on random tensors at the same dtype and batch size. Prints images/s of
each (median of ``--repeats`` runs) and their ratio (target >= 0.8), the same pipeline one
study at a time and with the prefetch pool off (``workers=0``), and where the time goes: the
process's CPU milliseconds per image for the model alone and for the pipeline (their ratio is
what the pipeline could reach at best with every CPU busy: the CPUs are shared by the forward
pass and everything else), the mean batch and how busy the model was. With
``--profile``, a cProfile summary of the one-thread pipeline (every stage in one thread, so
the profile sees them all; cProfile's own cost inflates the store's share). With ``--stages``,
one more ``--concurrent`` run with each stage timed in the thread that runs it (wall and CPU
milliseconds per image: start (plan and status), read, decode + preprocess, forward, record).

    python benchmarks/worker_pipeline.py [--size 224] [--pixels 1024] [--studies 4]
        [--per-study 4] [--batch 8] [--concurrent 4] [--j2k] [--repeats 3] [--profile]
        [--stages]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import pstats
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from _common import load_line, radiograph_ds
from pydicom.uid import ComputedRadiographyImageStorage, JPEG2000Lossless, generate_uid

from dicom_gateway.header import read_header
from governance.db import Store
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from governance.studies import record_instance
from migrations import upgrade
from training.synthetic.phantom import chest_radiograph
from worker import triage
from worker.batcher import Batcher
from worker.inference import ModelCache, ModelSpec, predict_logits
from worker.model import build_model, export_torchscript
from worker.triage import triage_study


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="model input (default 224)")
    parser.add_argument("--pixels", type=int, default=1024, help="image side (default 1024)")
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--per-study", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="model batch (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="prefetch threads (default 2)")
    parser.add_argument("--j2k", action="store_true", help="store images as JPEG 2000 lossless")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--device",
        default="auto",
        help="the model's device: auto (the worker's: CUDA where present), cpu, cuda, cuda:N",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["fp32", "bf16", "auto"],
        help="the model's precision (default auto, the worker's: bf16 where native and accurate)",
    )
    parser.add_argument(
        "--concurrent", type=int, default=4, help="studies scored at once (default 4)"
    )
    parser.add_argument(
        "--batch-wait-ms", type=float, default=20.0, help="the batcher's longest wait (ms)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the inline pipeline")
    parser.add_argument(
        "--stages", action="store_true", help="wall and CPU per stage, in the threads that run it"
    )
    return parser


def write_image(folder: Path, study_uid: str, seed: int, pixels: int, j2k: bool) -> Path:
    image = chest_radiograph(np.random.default_rng(seed), (pixels, pixels), positive=seed % 2 == 1)
    ds = radiograph_ds(np.round(image * 4095), study_uid=study_uid)
    if j2k:
        ds.compress(JPEG2000Lossless)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def record(store: Store, path: Path) -> None:
    """Record the file as the gateway does: its header read, as sent by a peer ``BENCH``."""
    header = read_header(
        path,
        affected_sop_class_uid=ComputedRadiographyImageStorage,
        affected_sop_instance_uid=path.stem,
    )
    item = dataclasses.replace(header, calling_ae="BENCH")
    store.run(lambda session: record_instance(session, item))


def scratch_store(folder: Path, size: int) -> tuple[Store, Path]:
    """A migrated SQLite store in ``folder`` and an untrained ResNet-50 exported at ``size``."""
    url = f"sqlite:///{folder / 'store.db'}"
    upgrade(url)
    torch.manual_seed(0)
    return Store.from_url(url), export_torchscript(build_model(), size, folder / "model.pt")


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    print(load_line())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store, model_path = scratch_store(folder, args.size)

        def activate(version: str) -> ModelSpec:
            """A new active version (same weights): every image is pending again."""

            def work(session):  # type: ignore[no-untyped-def]
                model = register_model(
                    session, version=version, path=model_path, input_size=args.size
                )
                set_policy(
                    session,
                    model,
                    operating_point="balanced",
                    tau=0.5,
                    rationale="benchmark",
                    approved_by="bench",
                )
                return ModelSpec.of(activate_model(session, version, actor="bench"))

            return store.run(work)

        spec = activate("bench-0")
        studies = []
        for s in range(args.studies):
            study_uid = generate_uid()
            for i in range(args.per_study):
                path = write_image(folder, study_uid, s * 100 + i, args.pixels, args.j2k)
                record(store, path)
            studies.append(study_uid)
        images = args.studies * args.per_study
        cache = ModelCache(device=args.device, precision=args.precision)
        loaded = cache.get(spec)  # loaded and warmed once, as in the worker
        batch = np.random.default_rng(0).standard_normal(
            (args.batch, 3, args.size, args.size), dtype=np.float32
        )
        for _ in range(3):  # TorchScript's profiling executor specialises on the first calls
            predict_logits(loaded, batch)

        cpu_ms: dict[str, list[float]] = {"model alone": [], "pipeline": []}

        def bare() -> float:
            rounds = max(5, images // args.batch)
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(rounds):
                predict_logits(loaded, batch)
            cpu_ms["model alone"].append(1000 * (time.process_time() - cpu) / (rounds * args.batch))
            return rounds * args.batch / (time.perf_counter() - started)

        runs = iter(range(1, 1000))
        forward_s = [0.0]
        forward_calls: list[tuple[float, float]] = []  # (wall s, CPU s of the batcher thread)

        def timed_forward(model, images):  # type: ignore[no-untyped-def]
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return predict_logits(model, images)
            finally:
                forward_s[0] += time.perf_counter() - started
                forward_calls.append((time.perf_counter() - started, time.thread_time() - cpu))

        def pipeline(workers: int, concurrent: int) -> float:
            cache.get(activate(f"bench-{next(runs)}"))  # loaded outside the timed part
            batcher = Batcher(
                timed_forward, batch_size=args.batch, max_wait_s=args.batch_wait_ms / 1000
            )

            def one(study_uid: str) -> None:
                triage_study(
                    store, cache, study_uid, batch_size=args.batch, workers=workers, batcher=batcher
                )

            started, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(concurrent) as pool:
                list(pool.map(one, studies))
            elapsed = time.perf_counter() - started
            if concurrent == args.concurrent and workers == args.workers:
                cpu_ms["pipeline"].append(1000 * (time.process_time() - cpu) / images)
            batches.append(batcher.stats.images / max(1, batcher.stats.batches))
            return images / elapsed

        batches: list[float] = []
        rows: dict[str, list[float]] = {
            "model alone": [],
            f"pipeline ({args.concurrent} at once)": [],
            "pipeline, 1 at once": [],
            "pipeline, no prefetch": [],
        }
        for _ in range(args.repeats):
            rows["model alone"].append(bare())
            forward_s[0] = 0.0
            rate = pipeline(args.workers, args.concurrent)
            rows[f"pipeline ({args.concurrent} at once)"].append(rate)
            busy = forward_s[0] * rate / images  # forward seconds / wall seconds
            mean_batch = batches[-1]
            rows["pipeline, 1 at once"].append(pipeline(args.workers, 1))
            rows["pipeline, no prefetch"].append(pipeline(0, 1))
        if args.stages:
            with timed_stages() as stages:
                forward_calls.clear()
                rate = pipeline(args.workers, args.concurrent)
            stages["forward pass (batcher thread)"] = list(forward_calls)
            print_stages(stages, images, rate, batches[-1])
        if args.profile:
            profile_inline(store, cache, studies, args.batch, activate(f"bench-{next(runs)}"))
        store.dispose()
    reference = statistics.median(rows["model alone"])
    print(
        f"{images} images {args.pixels}px{' j2k' if args.j2k else ''}, model {args.size}px "
        f"{loaded.precision} on {loaded.device} batch {args.batch}, {args.workers} prefetch "
        "threads"
    )
    print(f"{'':<18}{'img/s':>8}{'ratio':>8}")
    for name, values in rows.items():
        value = statistics.median(values)
        print(f"{name:<26}{value:>8.2f}{value / reference:>8.2f}")
    print(
        f"last run {args.concurrent} at once: mean batch {mean_batch:.1f} images, the model "
        f"busy {100 * busy:.0f}% of the wall time (the rest: waiting for images to be read, "
        f"decoded, preprocessed, and for the store; {os.cpu_count()} CPUs shared)"
    )
    model_cpu = statistics.median(cpu_ms["model alone"])
    pipeline_cpu = statistics.median(cpu_ms["pipeline"])
    print(
        f"CPU per image (this process, all its threads): model alone {model_cpu:.1f} ms, "
        f"pipeline ({args.concurrent} at once) {pipeline_cpu:.1f} ms, of which "
        f"{pipeline_cpu - model_cpu:.1f} ms besides the forward pass (reading, decoding, "
        f"preprocessing, the store, the threads); with every CPU busy the pipeline reaches at "
        f"most {model_cpu / pipeline_cpu:.2f}x the model alone"
    )


#: What ``--stages`` times: (module, function name, label), in the order printed.
STAGES = (
    (triage, "_start", "start (plan + status, one txn)"),
    (triage, "_read", "read the file (dcmread)"),
    (triage, "prepare", "decode + preprocess"),
    (triage, "_hand_over", "record (one transaction)"),
)


@contextmanager
def timed_stages() -> Iterator[dict[str, list[tuple[float, float]]]]:
    """Wrap each stage's function so that every call notes (wall s, CPU s of its thread)."""
    noted: dict[str, list[tuple[float, float]]] = defaultdict(list)
    lock = threading.Lock()
    saved = [(module, name, getattr(module, name)) for module, name, _ in STAGES]

    def timed(fn: Callable, label: str) -> Callable:  # type: ignore[type-arg]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = (time.perf_counter() - wall, time.thread_time() - cpu)
                with lock:
                    noted[label].append(spent)

        return call

    for (module, name, label), (_, _, fn) in zip(STAGES, saved, strict=True):
        setattr(module, name, timed(fn, label))
    try:
        yield noted
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def print_stages(
    noted: dict[str, list[tuple[float, float]]], images: int, rate: float, batch: float
) -> None:
    """Per-image wall and CPU of each stage; the forward pass's CPU is its calling thread's
    only (its intra-op threads are not counted), the others' is all of theirs."""
    print(f"\nstages of one more run ({rate:.1f} img/s, mean batch {batch:.1f}), ms per image:")
    print(f"  {'':<32}{'wall':>7}{'thread CPU':>12}")
    for label in [label for _, _, label in STAGES] + ["forward pass (batcher thread)"]:
        calls = noted.get(label, [])
        wall = 1000 * sum(w for w, _ in calls) / images
        cpu = 1000 * sum(c for _, c in calls) / images
        print(f"  {label:<32}{wall:>7.1f}{cpu:>12.1f}")


def profile_inline(
    store: Store, cache: ModelCache, studies: Sequence[str], batch: int, spec
) -> None:  # type: ignore[no-untyped-def]
    """cProfile of the one-thread pipeline, summarised by stage and by function."""
    cache.get(spec)
    profiler = cProfile.Profile()
    profiler.enable()
    for study_uid in studies:
        triage_study(store, cache, study_uid, batch_size=batch, workers=0)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    stages = {
        "forward pass": ("predict_logits",),
        "read the file (dcmread)": ("_read",),
        "decode + preprocess": ("prepare",),
        "store (start, record)": ("_start", "_hand_over"),
    }
    print(f"\ncProfile of the one-thread pipeline: {total:.2f} s")
    entries = stats.stats  # type: ignore[attr-defined]
    for stage, names in stages.items():
        cumulative = max((v[3] for (_, _, fn), v in entries.items() if fn in names), default=0.0)
        print(f"  {stage:<30}{cumulative:>8.2f} s {100 * cumulative / total:>5.1f}%")
    stats.sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
