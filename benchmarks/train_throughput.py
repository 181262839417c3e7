"""Training throughput: the model step and the data loader, side by side.

Measures, at the training input size (224 by default) and batch size (64):

* model: images/s of a full training step (forward, BCE loss, backward, AdamW) on batches
  already in memory. On CUDA: AMP (bf16, else fp16 with a GradScaler) + channels_last, and
  fp32 (TF32) for comparison; on the CPU: fp32 and bf16 autocast, both channels_last.
* loader: images/s of the training DataLoader alone (cached [0, 1] images -> train
  augmentations -> standardisation -> batches), with 0 and with N worker processes; and the
  same without the cache (decoding JPEG files and preprocessing them every epoch).

Then says which bounds training: the loader when it delivers fewer images/s than the model
consumes. Absolute figures are noisy on a shared machine: compare within one run.

    python benchmarks/train_throughput.py --size 224 --batch-size 64 --steps 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.datasets import UnitImageDataset, make_loader
from training.engine import (
    amp_dtype_for,
    configure_device,
    make_optimizer,
    train_step,
    zero_init_residual,
)
from training.presets import ClassificationPresetTrain
from worker.model import build_model, resolve_device
from worker.preprocess import prepare


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Radiograph-like smooth [0, 1] images (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, 1, 8, 8), dtype=np.float32))
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return images[:, 0].numpy().astype(np.float32)


def model_images_per_s(
    device: torch.device,
    size: int,
    batch_size: int,
    steps: int,
    warmup: int,
    amp: bool,
    channels_last: bool,
) -> float:
    configure_device(device)
    model = build_model()
    zero_init_residual(model)
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, 1e-3, 1e-4)
    criterion = nn.BCEWithLogitsLoss()
    amp_dtype = amp_dtype_for(device, amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    images = torch.randn(batch_size, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = (torch.rand(batch_size, device=device) > 0.5).float()

    def step() -> None:
        train_step(
            model, criterion, optimizer, images, targets, device, amp_dtype=amp_dtype, scaler=scaler
        )

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


class JpegDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Decodes and preprocesses every file on every access: what the cache avoids."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size
        self.transform = ClassificationPresetTrain(crop_size=size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        unit = prepare(self.paths[i], self.size).unit
        return self.transform(unit), torch.tensor(0.0)


def loader_images_per_s(loader: DataLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # start-up (worker processes) is not throughput
    started, count = time.perf_counter(), 0
    for _ in range(batches):
        images, _ = next(iterator)
        count += len(images)
    return count / (time.perf_counter() - started)


def main() -> None:
    args = get_args_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size, batch = args.size, args.batch_size
    print(
        f"device {device}, input {size} px, batch {batch}, {args.steps} timed steps, "
        f"torch threads {torch.get_num_threads()}, loader workers {args.workers}"
    )
    rows: list[tuple[str, float]] = []
    variants = (
        [("model: AMP + channels_last", True, True), ("model: fp32 (TF32)", False, False)]
        if device.type == "cuda"
        else [
            ("model: fp32 channels_last", False, True),
            ("model: bf16 autocast channels_last", True, True),
        ]
    )
    for name, amp, channels_last in variants:
        rate = model_images_per_s(device, size, batch, args.steps, args.warmup, amp, channels_last)
        rows.append((name, rate))
        print(f"  {name:<44} {rate:8.1f} img/s", flush=True)
    batches = max(2, args.steps)
    n = batch * (batches + 1)
    cached = smooth_images(n, size)
    dataset = UnitImageDataset(cached, np.zeros(n), ClassificationPresetTrain(crop_size=size))
    for workers in sorted({0, args.workers}):
        loader = make_loader(dataset, batch_size=batch, train=True, workers=workers)
        rate = loader_images_per_s(loader, batches)
        rows.append((f"loader: cached, {workers} workers", rate))
        print(f"  {rows[-1][0]:<44} {rate:8.1f} img/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, image in enumerate(smooth_images(n, 1024, seed=1)):
            path = Path(tmp) / f"IM-{i:04d}-0001.jpeg"
            Image.fromarray((image * 255).astype(np.uint8)).save(path, quality=95)
            paths.append(path)
        loader = DataLoader(
            JpegDataset(paths, size),
            batch_size=batch,
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        rate = loader_images_per_s(loader, batches)
        rows.append((f"loader: JPEG 1024 px decoded, {args.workers} workers", rate))
        print(f"  {rows[-1][0]:<44} {rate:8.1f} img/s", flush=True)
    best_model = max(rate for name, rate in rows if name.startswith("model"))
    best_loader = max(rate for name, rate in rows if name.startswith("loader: cached"))
    print()
    print(f"{'variant':<46} {'img/s':>8}")
    for name, rate in rows:
        print(f"{name:<46} {rate:8.1f}")
    bound = "the loader" if best_loader < best_model else "the model"
    print(
        f"\nfastest model step {best_model:.1f} img/s vs cached loader {best_loader:.1f} "
        f"img/s: training is bound by {bound}"
    )


if __name__ == "__main__":
    main()
