"""``cxr-triage evaluate RUN_DIR``: score a dataset with a run's exported model, frozen.

The TorchScript file (checked against the run's SHA-256 and its preprocessing record, run on
``--device`` at the run's serving precision as the worker would), its temperature and every
operating point's tau come from the run; nothing is re-fitted. Images go through the same
cache and serving preprocessing as in training. Writes ``eval_metrics.json``,
``predictions.csv`` and the ROC, PR, calibration and confusion figures to the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_triage.settings import get_settings
from governance.errors import ConfigError
from governance.registry import verify_model_file
from training import metrics, plots, report
from training.cache import build_cache
from training.calibration import probabilities
from training.data import deduplicate, load_source
from training.datasets import ServedImageDataset, make_loader
from training.export import MODEL_FILE, SUMMARY_FILE, score_exported
from training.prepare import synthetic_source
from training.thresholds import POLICY_CRITERIA
from worker.model import resolve_device

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage evaluate",
        description="Evaluate a training run's exported model on a dataset with the run's "
        "temperature and frozen operating points: AUC, AP, accuracy, F1, precision, "
        "sensitivity, specificity, Brier, ECE with bootstrap 95%% intervals, and figures.",
    )
    parser.add_argument("run_dir", type=Path, help="a finished `cxr-triage train` run folder")
    parser.add_argument("--data", type=Path, help="Kaggle-layout folder or DICOM folder")
    parser.add_argument("--manifest", type=Path, help="CSV manifest (path,label,...)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="N synthetic images")
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "train", "all"],
        help="which provided split to score (default test; sources without "
        "splits are scored whole)",
    )
    parser.add_argument("--output", type=Path, help="output folder (default RUN_DIR/eval)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, help="default CXR_DATA_DIR/cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: CUDA if any"
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="precision the model file runs at (default: the run's serving precision)",
    )
    return parser


def evaluation_device(name: str) -> torch.device:
    """The device ``--device`` names (``auto``: CUDA where there is one).

    Raises
    ------
    ConfigError
        CUDA is asked for and there is none, or the name is not auto, cpu or cuda.
    """
    try:
        return resolve_device(name)
    except ConfigError:
        if name == "cuda":
            raise ConfigError(
                "--device cuda: no CUDA device is available here; use --device cpu"
            ) from None
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}") from None


def evaluate_run(args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    """Score the chosen images and write the results; returns the metrics written.

    Raises
    ------
    ConfigError
        Not a finished run, a bad source, or no images of both classes to score.
    ModelIntegrityError
        The model file differs from the one the run recorded.
    """
    device = evaluation_device(args.device)
    summary_path = args.run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise ConfigError(f"{args.run_dir} is not a finished training run (no {SUMMARY_FILE})")
    summary = json.loads(summary_path.read_text())
    size, temperature = int(summary["input_size"]), float(summary["temperature"])
    model_file = verify_model_file(args.run_dir / MODEL_FILE, summary["sha256"])
    if sum(x is not None for x in (args.data, args.manifest, args.synthetic)) != 1:
        raise ConfigError("give exactly one of --data DIR, --manifest CSV, --synthetic N")
    if args.synthetic is not None:
        source, images = synthetic_source(args.synthetic, size, args.seed + 1000)
        records = source.records
    else:
        source = load_source(args.data, args.manifest)
        records, _ = deduplicate(source.records)
        if args.split != "all" and any(r.split for r in records):
            records = [r for r in records if r.split == args.split]
        images = build_cache(records, size, cache_dir, workers=args.workers, progress=True)
    labels = np.array([r.label for r in records], dtype=np.int64)
    if len(set(labels.tolist())) < 2:
        raise ConfigError("the images to evaluate must hold both classes")
    paths = [record.path for record in records]
    loader = make_loader(  # serving's input: files through prepare(), not the uint8 cache
        ServedImageDataset(images, labels, paths, size),
        batch_size=args.batch_size,
        train=False,
        workers=args.workers,
    )
    precision = args.precision or summary.get("export_check", {}).get("precision", "fp32")
    logits, _ = score_exported(model_file, size, loader, device=str(device), precision=precision)
    groups = [r.patient for r in records]
    probs = probabilities(logits, temperature)
    points = summary["operating_points"]
    balanced_tau = points[POLICY_CRITERIA["balanced"]]["tau"]
    result = {
        "run": summary["version"],
        "source": source.source,
        "images": len(records),
        "device": str(device),
        "precision": precision,
        "overall": metrics.summarize(
            labels, probs, balanced_tau, n_bootstrap=args.bootstrap, seed=args.seed, groups=groups
        ),
        "operating_points": {
            name: metrics.summarize(
                labels,
                probs,
                point["tau"],
                n_bootstrap=args.bootstrap,
                seed=args.seed,
                ranking=False,
                groups=groups,
            )
            for name, point in points.items()
        },
    }
    out = args.output or args.run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "eval_metrics.json", result)
    report.write_predictions(
        out / "predictions.csv", [r.name for r in records], labels, logits, probs
    )
    plots.roc_figure(
        out / "roc.png", {"eval": (labels, probs)}, {k: v["tau"] for k, v in points.items()}
    )
    plots.pr_figure(out / "pr.png", {"eval": (labels, probs)})
    plots.calibration_figure(
        out / "calibration.png", {"eval": (labels, probabilities(logits), probs)}
    )
    plots.confusion_figure(
        out / "cm.png", result["overall"]["confusion"], f"tau {balanced_tau:.3f} (balanced, frozen)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = get_settings()
    result = evaluate_run(args, args.cache_dir or settings.data_dir / "cache")
    overall = result["overall"]
    print(
        f"{result['images']} images: AUC {overall['auc']['value']:.4f} "
        f"[{overall['auc']['ci95'][0]:.4f}, {overall['auc']['ci95'][1]:.4f}], "
        f"sensitivity {overall['sensitivity']['value']:.3f}, specificity "
        f"{overall['specificity']['value']:.3f} at the balanced tau; results in "
        f"{args.output or args.run_dir / 'eval'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
