"""A ``cxr-triage train`` run's arguments: their checks and the options resolved from them."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxr_triage.settings import Settings
from governance.errors import ConfigError
from training.datasets import default_workers
from worker.model import resolve_device

logger = logging.getLogger(__name__)

CUDA_BATCH_SIZE = 256  # what a bf16 channels_last ResNet-50 step needs to fill a large GPU
CPU_BATCH_SIZE = 64
NEEDS_PRETRAINED = (
    "training on real images needs ImageNet weights: download torchvision's "
    "resnet50-11ad3fa6.pth (https://download.pytorch.org/models/resnet50-11ad3fa6.pth) on a "
    "machine with internet and pass --pretrained PATH, or pass --random-init"
)


def check_args(args: argparse.Namespace) -> None:
    """Reject combinations that cannot work, with one clear line each.

    Raises
    ------
    ConfigError
        A missing source, a bad size or fraction, or --activate without --register.
    """
    if sum(x is not None for x in (args.data, args.manifest, args.synthetic)) != 1:
        raise ConfigError("give exactly one of --data DIR, --manifest CSV, --synthetic N")
    if args.input_size < 32:
        raise ConfigError(f"--input-size must be at least 32, got {args.input_size}")
    for name in ("val_fraction", "test_fraction"):
        if not 0.0 < getattr(args, name) < 0.5:
            raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 0.5)")
    if args.epochs < 1 or (args.batch_size is not None and args.batch_size < 2):
        raise ConfigError("--epochs must be at least 1 and --batch-size at least 2")
    if args.activate and not args.register:
        raise ConfigError("--activate needs --register")
    for name in ("data", "manifest", "pretrained", "resume", "split_manifest"):
        path = getattr(args, name)
        if path is not None and not path.exists():
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {path} does not exist")
    if args.deployment_prevalence is not None and not 0 < args.deployment_prevalence < 1:
        raise ConfigError("--deployment-prevalence must be strictly between 0 and 1")
    if args.pretrained is not None and args.random_init:
        raise ConfigError("give --pretrained PATH or --random-init, not both")
    real = args.data is not None or args.manifest is not None
    if real and args.pretrained is None and not args.random_init and args.resume is None:
        raise ConfigError(NEEDS_PRETRAINED)


#: the fields of :class:`RunOptions` named as the arguments they resolve, recorded in their place
RESOLVED_ARGS = ("lr", "workers", "batch_size", "amp", "channels_last", "device", "split_manifest")


@dataclass(frozen=True)
class RunOptions:
    """What a run resolves from its arguments and settings (the arguments stay untouched)."""

    run_dir: Path
    stamp: str
    split_manifest: Path | None
    device: torch.device
    amp: bool
    channels_last: bool
    workers: int
    batch_size: int
    lr: float
    progress: bool

    def training_args(self, args: argparse.Namespace, pos_weight: float) -> dict[str, Any]:
        """The arguments as recorded in checkpoints and the report, resolved values included
        (paths and the device as text)."""
        recorded = {
            **vars(args),
            **{name: getattr(self, name) for name in RESOLVED_ARGS},
            "pos_weight": pos_weight,
            "output_dir": self.run_dir,
        }
        return {
            k: (str(v) if isinstance(v, Path | torch.device) else v) for k, v in recorded.items()
        }


def resolve_options(args: argparse.Namespace, settings: Settings) -> RunOptions:
    """Run folder, device, precision, workers and learning rate for ``args``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = args.output_dir or settings.data_dir / "runs" / stamp
    split_manifest = args.split_manifest
    if args.resume is not None:
        run_dir = args.resume.parent
        if split_manifest is None and (run_dir / "split_manifest.csv").is_file():
            split_manifest = run_dir / "split_manifest.csv"
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    workers = default_workers() if args.workers is None else args.workers
    batch_size = args.batch_size or (CUDA_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
    return RunOptions(
        run_dir=run_dir,
        stamp=stamp,
        split_manifest=split_manifest,
        device=device,
        amp=cuda if args.amp is None else args.amp,
        channels_last=cuda if args.channels_last is None else args.channels_last,
        workers=workers,
        batch_size=batch_size,
        lr=args.lr or (3e-4 if args.pretrained else 1e-3),
        progress=not args.no_progress,
    )
