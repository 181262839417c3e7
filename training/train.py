"""``cxr-triage train``: the command line of the training pipeline (:mod:`training.pipeline`).

Shaped after torchvision's ``references/classification/train.py`` (``get_args_parser``,
``main``). One command on a GPU machine turns the Kaggle "Chest X-Ray Images (Pneumonia)"
folder (or DICOM files with labels, a CSV manifest, or synthetic images) into a registered
model version, with every figure and table needed to choose and defend an operating point, in
a run folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxr_triage.settings import get_settings
from training.export import MODEL_FILE
from training.options import CPU_BATCH_SIZE, CUDA_BATCH_SIZE, check_args
from training.pipeline import MIN_VAL_PER_CLASS, train
from training.presets import AUGMENTATION_PRESETS

logger = logging.getLogger(__name__)


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
