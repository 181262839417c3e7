"""The training pipeline: data -> split -> train -> calibrate -> thresholds -> export -> register.

One function per step; :func:`train`, which ``cxr-triage train`` (:mod:`training.train`) calls,
runs them in order with the :class:`~training.options.RunOptions` resolved from the arguments
and writes every figure and table needed to choose and defend an operating point to the run
folder.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_triage.settings import Settings
from governance.db import Store
from governance.errors import ConfigError
from governance.registry import sha256_file
from training import metrics, report
from training.calibration import probabilities
from training.checkpoints import Checkpoints, FitResult
from training.engine import Placement, fit, set_seed, zero_init_residual
from training.export import MODEL_FILE, register_run, score_exported
from training.finalize import Finalized, Scores, finalize
from training.loaders import Loaders, build_loaders
from training.optimisation import Hyperparameters
from training.options import RunOptions, check_args, resolve_options
from training.prepare import PreparedData, load_data, subgroup_metrics
from training.thresholds import POLICY_CRITERIA
from worker.model import build_model, export_torchscript
from worker.preprocess import preprocessing_record

logger = logging.getLogger(__name__)

RAW_MODEL_FILE = "model-uncalibrated.pt"
EXPORT_TOLERANCE = 1e-3

MIN_VAL_PER_CLASS = 10
RANDOM_INIT_WARNING = (
    "no --pretrained weights: the ResNet-50 starts from random initialisation. ImageNet "
    "weights cannot be downloaded on this machine; download torchvision's "
    "resnet50-11ad3fa6.pth elsewhere and pass --pretrained PATH. Random initialisation is a "
    "poor substitute on real radiographs."
)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    version: str | None


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
