"""End-to-end worker throughput against the bare model, side by side in one run.

Stored DICOM files in, results committed: ``--studies`` studies of ``--per-study`` frontal
images (``--pixels`` square, 12-bit, optionally JPEG 2000 lossless) are recorded in a scratch
SQLite store, a ResNet-50 at ``--size`` is registered and activated, and ``triage_study`` runs
every study (read, select, decode, preprocess, score, decide, commit). The reference is the
same loaded model's forward pass on random tensors at the same dtype and batch size. Prints
images/s of each (median of ``--repeats`` runs), their ratio (target >= 0.8), and the same
pipeline with the prefetch pool off (``workers=0``) to show what the overlap buys.

    python benchmarks/worker_pipeline.py [--size 224] [--pixels 1024] [--studies 4]
        [--per-study 4] [--batch 8] [--j2k] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import load_line, radiograph_ds
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from governance.db import Store
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from governance.studies import ReceivedInstance, record_instance
from migrations import upgrade
from training.synthetic.phantom import chest_radiograph
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
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    return parser


def write_image(folder: Path, study_uid: str, seed: int, pixels: int, j2k: bool) -> Path:
    image = chest_radiograph(np.random.default_rng(seed), (pixels, pixels), positive=seed % 2 == 1)
    ds = radiograph_ds(np.round(image * 4095), study_uid=study_uid)
    if j2k:
        ds.compress(JPEG2000Lossless)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def record(store: Store, path: Path, study_uid: str, sop_uid: str, syntax: str) -> None:
    item = ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=None,
        sop_instance_uid=sop_uid,
        sop_class_uid=ComputedRadiographyImageStorage,
        transfer_syntax_uid=syntax,
        path=str(path),
        size_bytes=path.stat().st_size,
        calling_ae="BENCH",
        modality="CR",
        view_position="PA",
        body_part="CHEST",
    )
    store.run(lambda session: record_instance(session, item))


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    print(load_line())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'store.db'}"
        upgrade(url)
        store = Store.from_url(url)
        torch.manual_seed(0)
        model_path = export_torchscript(build_model(), args.size, folder / "model.pt")

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
        syntax = JPEG2000Lossless if args.j2k else ExplicitVRLittleEndian
        for s in range(args.studies):
            study_uid = generate_uid()
            for i in range(args.per_study):
                path = write_image(folder, study_uid, s * 100 + i, args.pixels, args.j2k)
                record(store, path, study_uid, path.stem, syntax)
            studies.append(study_uid)
        images = args.studies * args.per_study
        cache = ModelCache(device="cpu", precision=args.precision)
        loaded = cache.get(spec)  # loaded and warmed once, as in the worker
        batch = np.random.default_rng(0).standard_normal(
            (args.batch, 3, args.size, args.size), dtype=np.float32
        )
        predict_logits(loaded, batch)

        def bare() -> float:
            started = time.perf_counter()
            for _ in range(max(1, images // args.batch)):
                predict_logits(loaded, batch)
            return max(1, images // args.batch) * args.batch / (time.perf_counter() - started)

        runs = iter(range(1, 1000))

        def pipeline(workers: int) -> float:
            cache.get(activate(f"bench-{next(runs)}"))  # loaded outside the timed part
            started = time.perf_counter()
            for study_uid in studies:
                triage_study(store, cache, study_uid, batch_size=args.batch, workers=workers)
            return images / (time.perf_counter() - started)

        rows: dict[str, list[float]] = {"model alone": [], "pipeline": [], "pipeline inline": []}
        for _ in range(args.repeats):
            rows["model alone"].append(bare())
            rows["pipeline"].append(pipeline(args.workers))
            rows["pipeline inline"].append(pipeline(0))
        store.dispose()
    reference = statistics.median(rows["model alone"])
    print(
        f"{images} images {args.pixels}px{' j2k' if args.j2k else ''}, model {args.size}px "
        f"{loaded.precision} batch {args.batch}, {args.workers} prefetch threads"
    )
    print(f"{'':<18}{'img/s':>8}{'ratio':>8}")
    for name, values in rows.items():
        value = statistics.median(values)
        print(f"{name:<18}{value:>8.2f}{value / reference:>8.2f}")


if __name__ == "__main__":
    main()
