"""``cxr-triage evaluate``: a run's frozen model and taus on a dataset."""

from __future__ import annotations

import json

import pytest
import torch

from governance.errors import ConfigError, ModelIntegrityError
from training.evaluate import evaluate_run, evaluation_device, get_args_parser


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


def test_evaluate_device_cpu_through_the_command(trained_run, tmp_path, monkeypatch, capsys):
    from cxr_triage.cli import run_command
    from cxr_triage.settings import get_settings

    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        code = run_command(
            "evaluate",
            [
                str(trained_run.run_dir),
                "--synthetic",
                "40",
                "--device",
                "cpu",
                "--bootstrap",
                "20",
                "--output",
                str(tmp_path / "eval"),
            ],
        )
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("40 images: AUC")
    written = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert written["device"] == "cpu" and written["images"] == 40


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_evaluate_without_cuda_says_so_in_one_line(tmp_path, capsys):
    from cxr_triage.cli import run_command

    code = run_command("evaluate", [str(tmp_path), "--synthetic", "20", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        "cxr-triage evaluate: --device cuda: no CUDA device is available here; use --device cpu"
    ]


def test_evaluate_refuses_an_unknown_device_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        get_args_parser().parse_args([str(tmp_path), "--synthetic", "20", "--device", "tpu"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "--device: invalid choice: 'tpu'" in err.splitlines()[-1]
    with pytest.raises(ConfigError, match="--device must be auto, cpu or cuda, got 'tpu'"):
        evaluation_device("tpu")
