"""``cxr-triage train``: data -> split -> train -> calibrate -> thresholds -> export -> register.

Shaped after torchvision's ``references/classification/train.py`` (``get_args_parser``,
``load_data``, ``main``). One command on a GPU machine turns the Kaggle "Chest X-Ray Images
(Pneumonia)" folder (or DICOM files with labels, a CSV manifest, or synthetic images) into a
registered model version, with every figure and table needed to choose and defend an
operating point, in a run folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxr_triage.settings import Settings, get_settings
from governance.db import Store
from governance.errors import ConfigError
from training import report
from training.datasets import UnitImageDataset, make_loader
from training.engine import amp_dtype_for, fit, set_seed, zero_init_residual
from training.export import MODEL_FILE, export_checked, register_run
from training.finalize import finalize
from training.prepare import load_data, subgroup_metrics
from training.presets import ClassificationPresetEval, ClassificationPresetTrain
from worker.model import build_model, resolve_device

logger = logging.getLogger(__name__)

RANDOM_INIT_WARNING = (
    "no --pretrained weights: the ResNet-50 starts from random initialisation. ImageNet "
    "weights cannot be downloaded on this machine; download torchvision's "
    "resnet50-11ad3fa6.pth elsewhere and pass --pretrained PATH. Random initialisation is a "
    "poor substitute on real radiographs."
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage train",
        description="Train a ResNet-50 pneumonia classifier, calibrate it, choose operating "
        "points on validation, evaluate on test, export TorchScript and register the model "
        "version. Data: the Kaggle layout chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}, a "
        "folder of DICOM files with labels.csv, a CSV manifest, or synthetic images.",
    )
    source = parser.add_argument_group("data")
    source.add_argument("--data", type=Path, help="Kaggle-layout folder or DICOM folder")
    source.add_argument(
        "--manifest", type=Path, help="CSV: path,label[,patient_id,split,sex,age,view,site]"
    )
    source.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="N synthetic radiographs instead (NON-CLINICAL; for testing)",
    )
    source.add_argument(
        "--split-manifest",
        type=Path,
        help="reuse the splits of an earlier run's split_manifest.csv",
    )
    source.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="validation carved out of train, by patient (default 0.15)",
    )
    source.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="test carved out where the source provides none (default 0.2)",
    )
    source.add_argument(
        "--include-kaggle-val",
        action="store_true",
        help="add the archive's 16-image val folder to the training pool",
    )
    source.add_argument(
        "--cache-dir", type=Path, help="decoded-image cache (default CXR_DATA_DIR/cache)"
    )
    model = parser.add_argument_group("model and optimisation")
    model.add_argument(
        "--input-size",
        type=int,
        default=224,
        help="input side in pixels (224 default; 256-288 selectable)",
    )
    model.add_argument("--pretrained", type=Path, help="local ImageNet ResNet-50 weights")
    model.add_argument("--epochs", type=int, default=30)
    model.add_argument("--batch-size", type=int, default=64)
    model.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak OneCycle learning rate (default 3e-4 pretrained, 1e-3 random)",
    )
    model.add_argument("--weight-decay", type=float, default=1e-4)
    model.add_argument(
        "--patience",
        type=int,
        default=5,
        help="early stop after this many epochs without a better val AUC",
    )
    model.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-loader and decoding processes (default min(8, CPUs - 1))",
    )
    model.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    model.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (default: on for CUDA)",
    )
    model.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on for CUDA)",
    )
    model.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 is often "
        "fastest on a CPU that other jobs share",
    )
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--resume", type=Path, help="a run's checkpoint.pth to continue from")
    evaluation = parser.add_argument_group("evaluation and registration")
    evaluation.add_argument("--target-sensitivity", type=float, default=0.95)
    evaluation.add_argument("--target-specificity", type=float, default=0.85)
    evaluation.add_argument(
        "--deployment-prevalence",
        type=float,
        help="correct calibrated probabilities to this prevalence",
    )
    evaluation.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals"
    )
    evaluation.add_argument(
        "--output-dir", type=Path, help="run folder (default CXR_DATA_DIR/runs/<time>)"
    )
    evaluation.add_argument(
        "--register",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="register the model version in the store (default on)",
    )
    evaluation.add_argument("--version", help="model version name (default from the run)")
    evaluation.add_argument(
        "--activate",
        action="store_true",
        help="also set a policy at --operating-point and activate",
    )
    evaluation.add_argument(
        "--operating-point", default="balanced", choices=["triage", "balanced", "precision"]
    )
    evaluation.add_argument(
        "--approved-by", default=None, help="who approves the policy set with --activate"
    )
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


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
    if args.epochs < 1 or args.batch_size < 2:
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


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    version: str | None


def train(args: argparse.Namespace, settings: Settings) -> RunResult:
    """Run the whole pipeline; see the module docstring."""
    check_args(args)
    progress = not args.no_progress
    if args.resume is not None:
        args.output_dir = args.resume.parent
        if args.split_manifest is None and (args.output_dir / "split_manifest.csv").is_file():
            args.split_manifest = args.output_dir / "split_manifest.csv"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = args.output_dir or settings.data_dir / "runs" / stamp
    store = None
    if args.register:
        store = Store.from_settings(settings)
        if not store.has_table("model_versions"):
            raise ConfigError("the store is not initialised: run `cxr-triage db upgrade`")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    device = resolve_device(args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    workers = (
        args.workers
        if args.workers is not None
        else max(0, min(8, len(os.sched_getaffinity(0)) - 1))
    )
    lr = args.lr or (3e-4 if args.pretrained else 1e-3)
    set_seed(args.seed)
    warnings = []
    if args.pretrained is None:
        logger.warning(RANDOM_INIT_WARNING)
        warnings.append(RANDOM_INIT_WARNING)
    if args.synthetic is not None:
        warnings.append("Trained on SYNTHETIC images: NON-CLINICAL, not for patient care.")
    data = load_data(args, run_dir, settings, workers=workers, progress=progress)
    train_idx, val_idx, test_idx = (data.indices(s) for s in ("train", "val", "test"))
    if len(val_idx) == 0 or len(set(data.labels[val_idx].tolist())) < 2:
        raise ConfigError("the validation split needs images of both classes; add data")
    positives = int(data.labels[train_idx].sum())
    pos_weight = (len(train_idx) - positives) / max(positives, 1)
    print(
        f"pos_weight = neg/pos of the training split = {len(train_idx) - positives}/"
        f"{positives} = {pos_weight:.4f}"
    )
    size = args.input_size
    train_set = UnitImageDataset(
        data.images, data.labels, ClassificationPresetTrain(crop_size=size), train_idx
    )
    evaluation = ClassificationPresetEval()
    pin = device.type == "cuda"
    loader_kw = {"workers": workers, "seed": args.seed, "pin_memory": pin}
    train_loader = make_loader(train_set, batch_size=args.batch_size, train=True, **loader_kw)
    eval_loaders = [
        make_loader(
            UnitImageDataset(data.images, data.labels, evaluation, idx),
            batch_size=args.batch_size * 2,
            train=False,
            **loader_kw,
        )
        if len(idx)
        else None
        for idx in (val_idx, test_idx)
    ]
    model = build_model(pretrained=args.pretrained)
    if args.pretrained is None:
        zero_init_residual(model)
    training_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    training_args.update(
        lr=lr,
        workers=workers,
        amp=amp,
        channels_last=channels_last,
        device=str(device),
        pos_weight=pos_weight,
    )
    result = fit(
        model,
        train_loader,
        eval_loaders[0],
        epochs=args.epochs,
        lr=lr,
        weight_decay=args.weight_decay,
        pos_weight=pos_weight,
        device=device,
        patience=args.patience,
        amp=amp,
        channels_last=channels_last,
        checkpoint_dir=run_dir,
        args=training_args,
        resume=args.resume,
        progress=progress,
    )
    model.load_state_dict(result.best_state)
    test_labeled = eval_loaders[1] if len(set(data.labels[test_idx].tolist())) == 2 else None
    final = finalize(
        model,
        eval_loaders[0],
        test_labeled,
        device,
        pos_weight=pos_weight,
        deployment_prevalence=args.deployment_prevalence,
        target_sensitivity=args.target_sensitivity,
        target_specificity=args.target_specificity,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        amp_dtype=amp_dtype_for(device, amp),
        channels_last=channels_last,
        progress=progress,
    )
    check = torch.stack([evaluation(data.images[i]) for i in val_idx[:8]])
    model_path, diff = export_checked(model, size, run_dir / MODEL_FILE, check, final.temperature)
    print(
        f"TorchScript export checked against eager on {len(check)} images: "
        f"max |p difference| = {diff:.2e}"
    )
    from governance.registry import sha256_file

    sha256 = sha256_file(model_path)
    version = args.version or f"r50-{size}px-{stamp}-{sha256[:8]}"
    summary = {
        "version": version,
        "run_name": run_dir.name,
        "architecture": "resnet50",
        "input_size": size,
        "sha256": sha256,
        **final.summary(),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "stopped_early": result.stopped_early,
        "training_args": training_args,
        "split_manifest_sha256": data.manifest_sha256,
        "data": data.report,
        "export_check": {"max_abs_probability_diff": diff, "images": len(check)},
        "subgroups": subgroup_metrics(data, test_idx, final),
        "description": ("NON-CLINICAL " if args.synthetic is not None else "")
        + f"ResNet-50 {size}px trained by cxr-triage train (run {run_dir.name})",
        "warnings": warnings,
    }
    report.write_artifacts(run_dir, summary, final, data, val_idx, test_idx, warnings)
    registered = None
    if store is not None:
        approved_by = args.approved_by or ("cxr-triage train" if args.activate else None)
        model_version = register_run(
            store,
            run_dir,
            version=version,
            actor="cxr-triage train",
            operating_point=args.operating_point if args.activate else None,
            approved_by=approved_by,
        )
        registered = model_version.version
        print(
            f"registered model version {registered} (sha256 {sha256[:12]}...)"
            + (
                f", active with the {args.operating_point} policy"
                if args.activate
                else "; set a policy and activate it: cxr-triage policy set / model activate"
            )
        )
        store.dispose()
    return RunResult(run_dir, summary, registered)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    check_args(args)  # before reading settings: a wrong path fails without side effects
    result = train(args, get_settings())
    test = result.summary.get("test_metrics") or {}
    auc = (test.get("overall") or {}).get("auc", {}).get("value")
    print(f"done: test AUC {auc:.4f}" if auc is not None else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
