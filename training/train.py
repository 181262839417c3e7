"""``cxr-triage train``: data -> split -> train -> calibrate -> thresholds -> export -> register.

Shaped after torchvision's ``references/classification/train.py`` (``get_args_parser``,
``load_data``, ``main``). One command on a GPU machine turns the Kaggle "Chest X-Ray Images
(Pneumonia)" folder (or DICOM files with labels, a CSV manifest, or synthetic images) into a
registered model version, with every figure and table needed to choose and defend an
operating point, in a run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_triage.settings import Settings, get_settings
from governance.db import Store
from governance.errors import ConfigError
from governance.registry import sha256_file
from training import metrics, report
from training.calibration import probabilities
from training.datasets import ServedImageDataset, UnitImageDataset, default_workers, make_loader
from training.engine import (
    Checkpoints,
    FitResult,
    Hyperparameters,
    Placement,
    fit,
    set_seed,
    zero_init_residual,
)
from training.export import MODEL_FILE, register_run, score_exported
from training.finalize import Finalized, Scores, finalize
from training.prepare import PreparedData, load_data, subgroup_metrics
from training.presets import AUGMENTATION_PRESETS, EvalBatchPreset, TrainBatchPreset
from training.thresholds import POLICY_CRITERIA
from worker.model import build_model, export_torchscript, resolve_device
from worker.preprocess import preprocessing_record

logger = logging.getLogger(__name__)

RAW_MODEL_FILE = "model-uncalibrated.pt"
EXPORT_TOLERANCE = 1e-3

MIN_VAL_PER_CLASS = 10
CUDA_BATCH_SIZE = 256  # what a bf16 channels_last ResNet-50 step needs to fill a large GPU
CPU_BATCH_SIZE = 64
NEEDS_PRETRAINED = (
    "training on real images needs ImageNet weights: download torchvision's "
    "resnet50-11ad3fa6.pth (https://download.pytorch.org/models/resnet50-11ad3fa6.pth) on a "
    "machine with internet and pass --pretrained PATH, or pass --random-init"
)
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
    model.add_argument(
        "--pretrained",
        type=Path,
        help="local ImageNet ResNet-50 weights (torchvision's resnet50-11ad3fa6.pth); needed "
        "for --data and --manifest unless --random-init",
    )
    model.add_argument(
        "--random-init",
        action="store_true",
        help="train from random weights (a poor substitute on real radiographs)",
    )
    model.add_argument(
        "--augment",
        default="published",
        choices=sorted(AUGMENTATION_PRESETS),
        help="augmentation preset: published (RandomResizedCrop scale 0.08-1 + intensity "
        "jitter, no flip; the default) or light (small crops, a few degrees of rotation)",
    )
    model.add_argument("--epochs", type=int, default=30)
    model.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"default {CUDA_BATCH_SIZE} on CUDA (with bf16 and channels_last), "
        f"{CPU_BATCH_SIZE} on the CPU",
    )
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
        help="data-loader and decoding processes (default: the CPUs this process may use "
        "less one, at most 8)",
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
    evaluation.add_argument(
        "--serving-precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="precision of the exported file when validation and test are scored through it "
        "to fit the temperature and every tau (default fp32; bf16 only where serving uses it)",
    )
    evaluation.add_argument(
        "--force",
        action="store_true",
        help="train although the validation split has fewer than "
        f"{MIN_VAL_PER_CLASS} images of a class (warned loudly)",
    )
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


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    version: str | None


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


def open_store(args: argparse.Namespace, settings: Settings) -> Store | None:
    """The store to register in (None with --no-register).

    Raises
    ------
    ConfigError
        The store has no schema yet.
    """
    if not args.register:
        return None
    store = Store.from_settings(settings)
    if not store.has_table("model_versions"):
        raise ConfigError("the store is not initialised: run `cxr-triage db upgrade`")
    return store


def check_validation(labels: np.ndarray, force: bool) -> list[str]:
    """Refuse (or, with ``force``, warn about) a validation split too small to calibrate on.

    Raises
    ------
    ConfigError
        A class is missing, or has fewer than :data:`MIN_VAL_PER_CLASS` images without force.
    """
    counts = [int((labels == c).sum()) for c in (0, 1)]
    if min(counts) == 0:
        raise ConfigError("the validation split needs images of both classes; add data")
    if min(counts) >= MIN_VAL_PER_CLASS:
        return []
    message = (
        f"the validation split has {counts[0]} normal and {counts[1]} pneumonia images, fewer "
        f"than {MIN_VAL_PER_CLASS} of a class: the temperature and every tau chosen on it are "
        "unreliable"
    )
    if not force:
        raise ConfigError(message + "; add data, raise --val-fraction or pass --force")
    logger.warning("%s (--force)", message.upper())
    return [message + " (trained with --force)."]


@dataclass
class Loaders:
    """Loaders of cached uint8 batches and the batch presets that make them the network's
    input on the training device (augmented for training, serving's input for the rest)."""

    train: Any
    val: Any
    test: Any | None
    augment: TrainBatchPreset
    evaluation: EvalBatchPreset
    #: validation and test as serving reads them (files through ``prepare``, not the uint8
    #: cache): what the exported model is scored on to fit the temperature and every tau
    val_served: Any
    test_served: Any | None


def build_loaders(args: argparse.Namespace, options: RunOptions, data: PreparedData) -> Loaders:
    """Training loader (shuffled) and validation/test loaders (in order), pinned on CUDA."""
    train_idx, val_idx, test_idx = (data.indices(s) for s in ("train", "val", "test"))
    kw = {
        "workers": options.workers,
        "seed": args.seed,
        "pin_memory": options.device.type == "cuda",
    }
    batch_size = options.batch_size

    def loader(idx: np.ndarray, train: bool) -> Any:
        dataset = UnitImageDataset(data.images, data.labels, idx)
        return make_loader(dataset, batch_size=batch_size * (1 if train else 2), train=train, **kw)

    paths = [record.path for record in data.records]

    def served(idx: np.ndarray) -> Any:
        dataset = ServedImageDataset(data.images, data.labels, paths, args.input_size, idx)
        return make_loader(dataset, batch_size=batch_size * 2, train=False, **kw)

    channels_last = options.channels_last
    with_test = len(set(data.labels[test_idx].tolist())) == 2
    return Loaders(
        loader(train_idx, True),
        loader(val_idx, False),
        loader(test_idx, False) if with_test else None,
        TrainBatchPreset.preset(args.augment, args.input_size, channels_last=channels_last),
        EvalBatchPreset(channels_last=channels_last),
        served(val_idx),
        served(test_idx) if with_test else None,
    )


def train_model(
    args: argparse.Namespace,
    options: RunOptions,
    loaders: Loaders,
    pos_weight: float,
    training_args: dict[str, Any],
) -> tuple[torch.nn.Module, FitResult]:
    """The network (ImageNet or random start) trained by :func:`training.engine.fit`, with
    its best-validation-AUC weights loaded."""
    model = build_model(pretrained=args.pretrained)
    if args.pretrained is None:
        zero_init_residual(model)
    result = fit(
        model,
        loaders.train,
        loaders.val,
        Hyperparameters(args.epochs, options.lr, args.weight_decay, pos_weight, args.patience),
        Placement(
            options.device,
            amp=options.amp,
            channels_last=options.channels_last,
            train_transform=loaders.augment,
            eval_transform=loaders.evaluation,
        ),
        Checkpoints(options.run_dir, training_args, resume_from=args.resume),
        progress=options.progress,
    )
    model.load_state_dict(result.best_state)
    return model, result


def deployed_scores(
    model: torch.nn.Module, args: argparse.Namespace, options: RunOptions, loaders: Loaders
) -> tuple[Scores, Scores | None]:
    """Validation and test scored through the TorchScript file serving would load, at the
    serving precision: the scores every calibration and operating point is chosen on."""
    raw = export_torchscript(model, args.input_size, options.run_dir / RAW_MODEL_FILE)
    kw = {"device": str(options.device), "precision": args.serving_precision}
    scores: list[Scores | None] = []
    for loader in (loaders.val_served, loaders.test_served):
        if loader is None:
            scores.append(None)
            continue
        logits, labels = score_exported(raw, args.input_size, loader, **kw)
        scores.append(Scores(labels, logits))
    raw.unlink()
    val, test = scores
    assert val is not None
    return val, test


def export_model(
    model: torch.nn.Module,
    args: argparse.Namespace,
    options: RunOptions,
    loaders: Loaders,
    final: Finalized,
) -> tuple[Path, dict[str, Any]]:
    """Export the calibrated network and check that the file, at the serving precision,
    gives the validation probabilities that were recorded."""
    path = export_torchscript(model, args.input_size, options.run_dir / MODEL_FILE)
    logits, _ = score_exported(
        path,
        args.input_size,
        loaders.val_served,
        device=str(options.device),
        precision=args.serving_precision,
    )
    served = probabilities(logits, final.temperature)
    diff = float(np.max(np.abs(served - final.val.probs)))
    check = {
        "max_abs_probability_diff": diff,
        "images": len(served),
        "precision": args.serving_precision,
        "compared_with": "recorded validation probabilities",
    }
    log = logger.warning if diff > EXPORT_TOLERANCE else logger.info
    log(
        "exported %s at %s: max |p served - p recorded| = %.2e on %d validation images",
        path,
        args.serving_precision,
        diff,
        len(served),
    )
    return path, check


def study_metrics(
    data: PreparedData,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    final: Finalized,
    args: argparse.Namespace,
) -> dict[str, Any] | None:
    """Metrics per study (highest image probability, as the worker flags) at the balanced
    tau, where the source has studies; None where it has not."""
    if not any(r.study for r in data.records):
        return None
    tau = final.operating_points[POLICY_CRITERIA["balanced"]].tau
    out: dict[str, Any] = {"aggregation": "max over the study's images", "tau": tau}
    for name, idx, scores in (("val", val_idx, final.val), ("test", test_idx, final.test)):
        if scores is None or len(idx) == 0:
            continue
        studies = [data.records[i].study or f"image:{i}" for i in idx]
        labels, probs, _ = metrics.study_level(scores.labels, scores.probs, studies)
        if len(set(labels.tolist())) < 2:
            continue
        out[name] = metrics.summarize(
            labels, probs, tau, n_bootstrap=args.bootstrap, seed=args.seed
        )
    return out


def provenance(input_size: int) -> dict[str, Any]:
    """Versions and commit a run was made with."""
    import torchvision

    from worker.preprocess import PREPROCESSING_VERSION, code_sha256

    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "git_commit": commit,
        "preprocessing_version": PREPROCESSING_VERSION,
        "preprocessing_sha256": code_sha256(),
        "input_size": input_size,
    }


def register(
    store: Store, args: argparse.Namespace, options: RunOptions, version: str, sha256: str
) -> str:
    """Register the run's model version (and with --activate its policy)."""
    approved_by = args.approved_by or ("cxr-triage train" if args.activate else None)
    model_version = register_run(
        store,
        options.run_dir,
        version=version,
        actor="cxr-triage train",
        operating_point=args.operating_point if args.activate else None,
        approved_by=approved_by,
    )
    logger.info(
        "registered model version %s (sha256 %s...)%s",
        model_version.version,
        sha256[:12],
        f", active with the {args.operating_point} policy"
        if args.activate
        else "; set a policy and activate it: cxr-triage policy set / model activate",
    )
    return model_version.version


def train(args: argparse.Namespace, settings: Settings) -> RunResult:
    """Run the whole pipeline; see the module docstring."""
    check_args(args)
    options = resolve_options(args, settings)
    store = open_store(args, settings)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    set_seed(args.seed)
    warnings = []
    if args.pretrained is None:
        logger.warning(RANDOM_INIT_WARNING)
        warnings.append(RANDOM_INIT_WARNING)
    if args.synthetic is not None:
        warnings.append("Trained on SYNTHETIC images: NON-CLINICAL, not for patient care.")
    data_args = argparse.Namespace(**{**vars(args), "split_manifest": options.split_manifest})
    data = load_data(
        data_args, options.run_dir, settings, workers=options.workers, progress=options.progress
    )
    train_idx, val_idx, test_idx = (data.indices(s) for s in ("train", "val", "test"))
    warnings += check_validation(data.labels[val_idx], args.force)
    positives = int(data.labels[train_idx].sum())
    pos_weight = (len(train_idx) - positives) / max(positives, 1)
    logger.info(
        "pos_weight = neg/pos of the training split = %d/%d = %.4f",
        len(train_idx) - positives,
        positives,
        pos_weight,
    )
    loaders = build_loaders(args, options, data)
    training_args = options.training_args(args, pos_weight)
    model, result = train_model(args, options, loaders, pos_weight, training_args)
    val_scores, test_scores = deployed_scores(model, args, options, loaders)
    final = finalize(
        model,
        val_scores,
        test_scores,
        pos_weight=pos_weight,
        deployment_prevalence=args.deployment_prevalence,
        target_sensitivity=args.target_sensitivity,
        target_specificity=args.target_specificity,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        val_groups=data.patients_of(val_idx),
        test_groups=data.patients_of(test_idx),
    )
    model_path, export_check = export_model(model, args, options, loaders, final)
    sha256 = sha256_file(model_path)
    size = args.input_size
    version = args.version or f"r50-{size}px-{options.stamp}-{sha256[:8]}"
    summary = {
        "version": version,
        "run_name": options.run_dir.name,
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
        "export_check": export_check,
        "subgroups": subgroup_metrics(data, test_idx, final),
        "study_metrics": study_metrics(data, val_idx, test_idx, final, args),
        "preprocessing": preprocessing_record(size),
        "provenance": provenance(size),
        "description": ("NON-CLINICAL " if args.synthetic is not None else "")
        + f"ResNet-50 {size}px trained by cxr-triage train (run {options.run_dir.name})",
        "warnings": warnings,
    }
    report.write_artifacts(options.run_dir, summary, final, data, val_idx, test_idx, warnings)
    registered = None
    if store is not None:
        registered = register(store, args, options, version, sha256)
        store.dispose()
    return RunResult(options.run_dir, summary, registered)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    check_args(args)  # before reading settings: a wrong path fails without side effects
    result = train(args, get_settings())
    check = result.summary["export_check"]
    print(
        f"exported {result.run_dir / MODEL_FILE} ({check['precision']}): max |p served - p "
        f"recorded| = {check['max_abs_probability_diff']:.2e} on {check['images']} images"
    )
    print(f"run folder: {result.run_dir} (report: report.html)")
    if result.version:
        print(f"registered model version {result.version}")
    test = result.summary.get("test_metrics") or {}
    auc = (test.get("overall") or {}).get("auc", {}).get("value")
    print(f"done: test AUC {auc:.4f}" if auc is not None else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
