"""Training throughput: the model step, the device augmentation and the data loader, side by side.

Measures, at the training input size (224 by default) and batch size (256 on CUDA, 64 on
the CPU, as `cxr-triage train`):

* model: images/s of a full training step (forward, BCE loss, backward, AdamW) on a batch
  already on the device. On CUDA: AMP (bf16, else fp16 with a GradScaler) + channels_last,
  and fp32 (TF32) for comparison; on the CPU: fp32 and bf16 autocast, both channels_last.
* device: images/s of the batch presets alone on the device (uint8 batch -> RandomResizedCrop
  + jitter of the ``published`` preset -> standardised 3 channels; and standardisation only).
* loader: images/s of the training DataLoader alone. The path training takes: the uint8
  cache, batches handed back as uint8 (pinned on CUDA). The in-run reference: the float32
  cache with per-image torchvision augmentation and standardisation in the worker processes
  (what training did before), and the same decoding JPEG files every epoch (no cache).
* pipeline: images/s of whole training steps fed by each loader (the uint8 one with the
  augmentation on the device, the float32 one with it in the workers).

Then gives the ratios and says which bounds training: the loader when it delivers fewer
images/s than the step consumes. Absolute figures are noisy on a shared machine: compare
within one run.

    python benchmarks/train_throughput.py --size 224 --steps 3
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from _common import load_line
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from training.cache import quantize
from training.datasets import UnitImageDataset, default_workers, make_loader
from training.engine import configure_device, to_input, train_step, zero_init_residual
from training.optimisation import amp_dtype_for, make_optimizer
from training.options import CPU_BATCH_SIZE, CUDA_BATCH_SIZE
from training.presets import AUGMENTATION_PRESETS, EvalBatchPreset, TrainBatchPreset
from worker.model import build_model, resolve_device
from worker.preprocess import prepare, standardize

PRESET = "published"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"{CUDA_BATCH_SIZE} on CUDA, else {CPU_BATCH_SIZE}",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps (batches) per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-jpeg", action="store_true", help="skip the JPEG-decoding loader")
    return parser


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Radiograph-like smooth [0, 1] images (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, 1, 8, 8), dtype=np.float32))
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return images[:, 0].numpy().astype(np.float32)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, work: Callable[[], object], steps: int, warmup: int) -> float:
    """Seconds per call of ``work`` after ``warmup`` untimed calls (the device drained)."""
    for _ in range(warmup):
        work()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        work()
    synchronize(device)
    return (time.perf_counter() - started) / steps


class Step:
    """A ResNet-50 training step as `cxr-triage train` runs it."""

    def __init__(self, device: torch.device, amp: bool, channels_last: bool) -> None:
        configure_device(device)
        self.model = build_model()
        zero_init_residual(self.model)
        self.model.to(device).train()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = make_optimizer(self.model, 1e-3, 1e-4)
        self.criterion = nn.BCEWithLogitsLoss()
        self.amp_dtype = amp_dtype_for(device, amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.device, self.channels_last = device, channels_last

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        train_step(
            self.model,
            self.criterion,
            self.optimizer,
            images,
            targets.to(self.device, non_blocking=True).float(),
            self.device,
            amp_dtype=self.amp_dtype,
            scaler=self.scaler,
        )


class CpuAugmentedDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The reference: float32 rows augmented one at a time by torchvision in the worker
    processes and standardised there to 3 channels (training's path before the batch presets).
    With ``paths``, each file is decoded and preprocessed on every access (no cache)."""

    def __init__(self, rows: np.ndarray | None, size: int, paths: list[Path] | None = None):
        self.rows, self.paths, self.size = rows, paths, size
        p = AUGMENTATION_PRESETS[PRESET]
        self.transforms = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=p["scale"], ratio=p["ratio"], antialias=True),
                v2.RandomRotation(p["rotation"], fill=0.0),
                v2.ColorJitter(brightness=p["brightness"], contrast=p["contrast"]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self.rows)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.paths is not None:
            unit = prepare(self.paths[i], self.size).unit
        else:
            unit = np.array(self.rows[i], dtype=np.float32)  # type: ignore[index]
        out = self.transforms(torch.from_numpy(unit)[None]).clamp_(0.0, 1.0)
        return torch.from_numpy(standardize(out[0].numpy())), torch.tensor(0.0)


def loader_images_per_s(loader: Iterable[tuple[torch.Tensor, torch.Tensor]], batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # start-up (worker processes) is not throughput
    started, count = time.perf_counter(), 0
    for _ in range(batches):
        images, _ = next(iterator)
        count += len(images)
    return count / (time.perf_counter() - started)


def pipeline_images_per_s(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    step: Step,
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
    batches: int,
) -> float:
    """Whole training steps fed by ``loader``: copy, ``transform`` on the device, step."""
    iterator = iter(loader)
    images, targets = next(iterator)
    step(to_input(images, step.device, transform, step.channels_last), targets)  # warm-up
    synchronize(step.device)
    started, count = time.perf_counter(), 0
    for _ in range(batches):
        images, targets = next(iterator)
        step(to_input(images, step.device, transform, step.channels_last), targets)
        count += len(images)
    synchronize(step.device)
    return count / (time.perf_counter() - started)


def main() -> None:
    args = get_args_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.size
    batch = args.batch_size or (CUDA_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
    print(
        f"device {device}, input {size} px, batch {batch}, {args.steps} timed steps, "
        f"torch threads {torch.get_num_threads()}, loader workers {args.workers}; {load_line()}"
    )
    rows: list[tuple[str, float]] = []

    def report(name: str, rate: float) -> None:
        rows.append((name, rate))
        print(f"  {name:<70} {rate:9.1f} img/s", flush=True)

    # The first variant is what `cxr-triage train` runs by default on this device.
    variants = (
        [("model: AMP + channels_last", True, True), ("model: fp32 (TF32)", False, False)]
        if cuda
        else [("model: fp32", False, False), ("model: bf16 autocast channels_last", True, True)]
    )
    targets = (torch.rand(batch) > 0.5).float()
    steps: list[Step] = []
    for name, amp, channels_last in variants:
        steps.append(Step(device, amp, channels_last))
        images = torch.randn(batch, 3, size, size, device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        seconds = timed(
            device, functools.partial(steps[-1], images, targets), args.steps, args.warmup
        )
        report(name, batch / seconds)
    default_step = steps[0]
    del steps[1:]

    batches = max(2, args.steps)
    n = batch * (batches + 2)
    units = smooth_images(n, size)
    cached = quantize(units)
    on_device = torch.from_numpy(cached[:batch]).to(device)
    augment = TrainBatchPreset.preset(PRESET, size, channels_last=default_step.channels_last)
    evaluation = EvalBatchPreset(channels_last=default_step.channels_last)
    for name, preset in (
        (f"device: {PRESET} augmentation", augment),
        ("device: standardisation", evaluation),
    ):
        seconds = timed(device, functools.partial(preset, on_device), args.steps, args.warmup)
        report(f"{name} (uint8 batch)", batch / seconds)

    pin = cuda
    new = UnitImageDataset(cached, np.zeros(n))
    old = CpuAugmentedDataset(units, size)
    for workers in sorted({0, args.workers}):
        kw = {"batch_size": batch, "train": True, "workers": workers, "pin_memory": pin}
        report(
            f"loader: uint8 cache, {workers} workers",
            loader_images_per_s(make_loader(new, **kw), batches),
        )
        report(
            f"loader: float32 cache + CPU augmentation, {workers} workers (before)",
            loader_images_per_s(make_loader(old, **kw), batches),
        )
    kw = {"batch_size": batch, "train": True, "workers": args.workers, "pin_memory": pin}
    pipelines = {
        "pipeline: uint8 loader + device augmentation + step": (new, augment),
        "pipeline: float32 loader with CPU augmentation + step (before)": (old, None),
    }
    best_of: dict[str, float] = {}
    for name in [*pipelines, *reversed(pipelines)]:  # A B B A: drift in load evens out
        dataset, transform = pipelines[name]
        rate = pipeline_images_per_s(make_loader(dataset, **kw), default_step, transform, batches)
        best_of[name] = max(rate, best_of.get(name, 0.0))
    for name, rate in best_of.items():
        report(f"{name}, best of 2", rate)
    if not args.no_jpeg:
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i, image in enumerate(smooth_images(batch * (batches + 1), 1024, seed=1)):
                path = Path(tmp) / f"IM-{i:04d}-0001.jpeg"
                Image.fromarray((image * 255).astype(np.uint8)).save(path, quality=95)
                paths.append(path)
            loader = DataLoader(
                CpuAugmentedDataset(None, size, paths),
                batch_size=batch,
                shuffle=True,
                num_workers=args.workers,
                persistent_workers=args.workers > 0,
            )
            report(
                f"loader: JPEG 1024 px decoded, {args.workers} workers (no cache)",
                loader_images_per_s(loader, batches),
            )

    def best(prefix: str) -> float:
        return max(rate for name, rate in rows if name.startswith(prefix))

    print()
    print(f"{'variant':<70} {'img/s':>9}")
    for name, rate in rows:
        print(f"{name:<70} {rate:9.1f}")
    step_rate, new_loader = best(variants[0][0]), best("loader: uint8")  # the default step
    old_loader = best("loader: float32")
    new_pipe, old_pipe = best("pipeline: uint8"), best("pipeline: float32")
    print(
        f"\nloader: uint8 {new_loader:.1f} vs float32 + CPU augmentation {old_loader:.1f} img/s "
        f"({new_loader / old_loader:.1f}x); pipeline {new_pipe:.1f} vs {old_pipe:.1f} img/s "
        f"({new_pipe / old_pipe:.2f}x)"
    )
    device_aug = best(f"device: {PRESET}")
    feed = min(new_loader, device_aug)
    bound = "the loader or the augmentation" if feed < step_rate else "the model step"
    print(
        f"model step {step_rate:.1f} img/s vs uint8 loader {new_loader:.1f} and device "
        f"augmentation {device_aug:.1f} img/s: training is bound by {bound}"
    )


if __name__ == "__main__":
    main()
