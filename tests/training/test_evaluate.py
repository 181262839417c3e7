"""``cxr-triage evaluate``: a run's frozen model and taus on a dataset."""

from __future__ import annotations

import json

import pytest

from governance.errors import ConfigError, ModelIntegrityError
from training.evaluate import evaluate_run, get_args_parser


def test_evaluate_reproduces_the_runs_test_metrics(trained_run, tmp_path):
    args = get_args_parser().parse_args(
        [
            str(trained_run.run_dir),
            "--data",
            str(trained_run.data),
            "--bootstrap",
            "50",
            "--output",
            str(tmp_path / "eval"),
        ]
    )
    result = evaluate_run(args, trained_run.settings.data_dir / "cache")
    summary = json.loads((trained_run.run_dir / "report_summary.json").read_text())
    assert result["images"] == 100
    assert result["overall"]["auc"]["value"] == pytest.approx(
        summary["test_metrics"]["overall"]["auc"]["value"], abs=1e-9
    )
    for name, point in summary["test_metrics"]["operating_points"].items():
        assert result["operating_points"][name]["confusion"] == point["confusion"]
    for name in (
        "eval_metrics.json",
        "predictions.csv",
        "roc.png",
        "pr.png",
        "calibration.png",
        "cm.png",
    ):
        assert (tmp_path / "eval" / name).is_file()


def test_evaluate_refuses_a_tampered_model_or_a_non_run(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, copy, ignore=shutil.ignore_patterns("*.pth"))
    with open(copy / "model.pt", "ab") as fh:
        fh.write(b"\0")
    args = get_args_parser().parse_args([str(copy), "--synthetic", "20"])
    with pytest.raises(ModelIntegrityError):
        evaluate_run(args, tmp_path / "cache")
    with pytest.raises(ConfigError, match="not a finished training run"):
        evaluate_run(
            get_args_parser().parse_args([str(tmp_path), "--synthetic", "20"]), tmp_path / "cache"
        )
