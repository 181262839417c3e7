"""``cxr-triage train`` end to end on a Kaggle-layout folder of synthetic JPEGs (CPU, 64 px)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_triage.settings import Settings
from governance.db import Store
from governance.errors import NotFound
from governance.models import ModelStatus
from governance.policies import policy_in_force
from governance.registry import active_model, get_model, sha256_file
from training.cache import quantize
from training.data import read_gray
from training.export import register_run
from training.pipeline import train
from training.presets import EvalBatchPreset
from training.train import get_args_parser
from worker.inference import ModelSpec, calibrate, load_model, predict_logits
from worker.preprocess import prepare, preprocess

from .conftest import TRAIN_ARGS, make_store_settings

ARTIFACTS = (
    "roc.png",
    "pr.png",
    "calibration.png",
    "cm_val.png",
    "cm_test.png",
    "learning_curves.png",
    "errors.png",
    "best_val.json",
    "test_metrics.json",
    "train_history.json",
    "report_summary.json",
    "report.html",
    "errors.csv",
    "split_manifest.csv",
    "model.pt",
    "checkpoint.pth",
    "best.pth",
    "predictions_val.csv",
    "predictions_test.csv",
)


def _summary(trained_run) -> dict:
    return json.loads((trained_run.run_dir / "report_summary.json").read_text())


def _manifest(trained_run) -> list[dict[str, str]]:
    with open(trained_run.run_dir / "split_manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_writes_every_artifact(trained_run):
    for name in ARTIFACTS:
        path = trained_run.run_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            with Image.open(path) as image:
                assert image.size[0] > 200
    page = (trained_run.run_dir / "report.html").read_text()
    for point in ("max_f1", "youden", "target_sensitivity", "target_specificity"):
        assert point in page
    for figure in ("roc.png", "calibration.png", "errors.png"):
        assert f"src='{figure}'" in page
    assert "random initialisation" in page
    history = json.loads((trained_run.run_dir / "train_history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(len(history)))
    best = torch.load(trained_run.run_dir / "best.pth", weights_only=True)
    assert set(best) == {"model", "epoch", "val_auc"}  # weights only: no optimiser state
    checkpoint = torch.load(trained_run.run_dir / "checkpoint.pth", weights_only=False)
    assert set(checkpoint) >= {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    assert checkpoint["args"]["input_size"] == 64


def test_held_out_auc_is_high(trained_run):
    """The synthetic task is learnable: held-out (test split) AUC of at least 0.9."""
    summary = _summary(trained_run)
    test = summary["test_metrics"]["overall"]
    assert test["auc"]["value"] >= 0.9, summary["history"]
    assert test["n"] == 100
    low, high = test["auc"]["ci95"]
    assert low <= test["auc"]["value"] <= high
    for name in ("accuracy", "f1", "precision", "sensitivity", "specificity", "brier", "ece", "ap"):
        assert name in test
    assert (
        summary["test_metrics"]["operating_points"]["target_sensitivity"]["tau"]
        == summary["operating_points"]["target_sensitivity"]["tau"]
    )


def test_operating_points_are_chosen_on_validation_and_frozen_for_test(trained_run):
    summary = _summary(trained_run)
    with open(trained_run.run_dir / "predictions_val.csv", newline="") as fh:
        val = list(csv.DictReader(fh))
    labels = np.array([int(r["label"]) for r in val])
    probs = np.array([float(r["probability"]) for r in val])
    point = summary["operating_points"]["target_sensitivity"]
    flagged = probs >= point["tau"]
    assert flagged[labels == 1].mean() >= 0.95
    assert point["validation"]["sensitivity"] == pytest.approx(flagged[labels == 1].mean())
    assert (
        summary["calibration"]["val"]["nll_after"]
        <= summary["calibration"]["val"]["nll_before"] + 1e-9
    )


def test_kaggle_quirks_are_handled(trained_run):
    data = _summary(trained_run)["data"]
    assert data["source"] == "kaggle"
    assert data["duplicates_dropped"] == 1
    assert data["skipped_non_images"] == {".DS_Store": 6}  # one per class folder
    assert data["provided_val_images"] == 8 and data["provided_val_used"] is False
    names = [row["name"] for row in _manifest(trained_run)]
    assert len(names) == 360  # 260 train + 100 test: no nested copy, no __MACOSX, no val
    assert all(name.split("/")[0] in {"train", "test"} for name in names)
    assert data["counts"]["test"] == {"total": 100, "normal": 50, "pneumonia": 50}


def test_split_groups_patients_and_keeps_the_test_split(trained_run):
    rows = _manifest(trained_run)
    by_split: dict[str, set[str]] = {}
    for row in rows:
        by_split.setdefault(row["split"], set()).add(row["patient"])
        assert (row["split"] == "test") == row["name"].startswith("test/")
    assert not by_split["train"] & by_split["val"]
    train = [int(r["label"]) for r in rows if r["split"] == "train"]
    val = [int(r["label"]) for r in rows if r["split"] == "val"]
    assert abs(np.mean(train) - np.mean(val)) < 0.05
    assert abs(len(val) / (len(val) + len(train)) - 0.2) < 0.03
    assert any(r["patient"].startswith("person") for r in rows)


def test_registered_version_matches_the_run(trained_run):
    summary = _summary(trained_run)
    store = Store.from_url(trained_run.settings.database_url)
    try:
        with store.read() as session:
            model = get_model(session, trained_run.result.version)
            assert model.status == ModelStatus.REGISTERED  # activation is left to a person
            assert model.sha256 == sha256_file(trained_run.run_dir / "model.pt")
            assert model.sha256 == summary["sha256"]
            assert model.input_size == 64 and model.architecture == "resnet50"
            assert model.temperature == pytest.approx(summary["temperature"])
            details = model.details
    finally:
        store.dispose()
    manifest_sha = hashlib.sha256((trained_run.run_dir / "split_manifest.csv").read_bytes())
    assert details["split_manifest_sha256"] == manifest_sha.hexdigest()
    assert set(details["operating_points"]) == {
        "max_f1",
        "youden",
        "target_sensitivity",
        "target_specificity",
    }
    assert (
        sum(details["reference_distribution"]["counts"])
        == summary["data"]["counts"]["val"]["total"]
    )
    assert details["training_args"]["input_size"] == 64
    assert details["export_check"]["max_abs_probability_diff"] < 1e-5


def test_worker_gives_the_probability_training_evaluated(trained_run):
    """The registered file, loaded by the worker, gives for serving's own preprocessing of a
    JPEG exactly the probability the run recorded: test (and validation) are scored on the
    files through ``prepare``, not on the uint8 training cache, whose quantisation alone moves
    the probability (checked here too, so the test shows the difference it guards against)."""
    summary = _summary(trained_run)
    spec = ModelSpec(
        summary["version"],
        str(trained_run.run_dir / "model.pt"),
        summary["sha256"],
        64,
        summary["temperature"],
    )
    loaded = load_model(spec, device="cpu", precision="fp32")
    with open(trained_run.run_dir / "predictions_test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:12]
    recorded = np.array([float(r["probability"]) for r in rows])
    batch = np.stack([preprocess(trained_run.data / r["name"], 64) for r in rows])
    served = calibrate(predict_logits(loaded, batch), spec.temperature)
    np.testing.assert_allclose(served, recorded, rtol=0, atol=1e-5)
    units = [prepare(read_gray(trained_run.data / r["name"]), 64).unit for r in rows]
    cached = EvalBatchPreset(channels_last=False)(torch.from_numpy(quantize(np.stack(units))))
    from_cache = calibrate(predict_logits(loaded, cached.numpy()), spec.temperature)
    # The cache's input would miss that check: its quantisation alone moves the probability
    # (by 2.7e-4 to 1.2e-3 at most here, with the trained model and the CPU), yet not by a
    # broken cache's amount.
    assert 1e-5 < np.max(np.abs(from_cache - recorded)) < 1e-2


def test_register_run_with_a_policy_activates(trained_run, store):
    version = f"{trained_run.result.version}-act"
    model = register_run(
        store,
        trained_run.run_dir,
        version=version,
        actor="test",
        operating_point="triage",
        approved_by="Dr Test",
    )
    summary = _summary(trained_run)
    with store.read() as session:
        active = active_model(session)
        assert active is not None and active.version == model.version == version
        policy = policy_in_force(session, active.id)
        assert policy is not None
        assert policy.operating_point == "triage" and policy.approved_by == "Dr Test"
        assert policy.tau == pytest.approx(summary["operating_points"]["target_sensitivity"]["tau"])


def test_resume_continues_from_the_checkpoint(tmp_path):
    settings = make_store_settings(tmp_path)
    common = [
        "--synthetic",
        "40",
        "--input-size",
        "32",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--bootstrap",
        "0",
        "--no-progress",
        "--threads",
        "1",
        "--no-register",
        "--val-fraction",
        "0.25",
        "--patience",
        "9",
        "--force",
    ]
    parser = get_args_parser()
    first = train(
        parser.parse_args([*common, "--epochs", "1", "--output-dir", str(tmp_path / "run")]),
        settings,
    )
    assert len(first.summary["history"]) == 1
    second = train(
        parser.parse_args(
            [*common, "--epochs", "2", "--resume", str(tmp_path / "run" / "checkpoint.pth")]
        ),
        settings,
    )
    history = second.summary["history"]
    assert [row["epoch"] for row in history] == [0, 1]
    assert history[0] == pytest.approx(first.summary["history"][0])
    assert second.run_dir == first.run_dir
    assert "SYNTHETIC" in (tmp_path / "run" / "report.html").read_text()


def test_deployment_prevalence_is_folded_into_the_served_model(tmp_path):
    """The prior shift (and pos_weight's offset) live in the exported bias: the worker's
    sigmoid(output / T) is the probability at the deployment prevalence."""
    from worker.model import build_model

    settings = make_store_settings(tmp_path)
    args = get_args_parser().parse_args([
        "--synthetic", "40", "--input-size", "32", "--batch-size", "8", "--workers", "0",
        "--epochs", "1", "--bootstrap", "0", "--no-progress", "--no-register", "--threads", "1",
        "--val-fraction", "0.25", "--deployment-prevalence", "0.1", "--force",
        "--output-dir", str(tmp_path / "run")])  # fmt: skip
    summary = train(args, settings).summary
    calib = summary["calibration"]
    val_prevalence = calib["validation_prevalence"]
    expected_delta = math.log(0.1 / 0.9) - math.log(val_prevalence / (1 - val_prevalence))
    assert calib["prior_shift_offset"] == pytest.approx(expected_delta)
    shift, temperature = summary["logit_shift"], summary["temperature"]
    assert shift == pytest.approx(calib["pos_weight_offset"] + expected_delta * temperature)
    with open(tmp_path / "run" / "predictions_val.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    raw = np.array([float(r["raw_logit"]) for r in rows])
    served = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(served, 1 / (1 + np.exp(-(raw + shift) / temperature)), rtol=1e-6)
    eager = build_model().eval()
    eager.load_state_dict(torch.load(tmp_path / "run" / "best.pth", weights_only=False)["model"])
    scripted = torch.jit.load(str(tmp_path / "run" / "model.pt"))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), eager(x) + shift, atol=1e-4, rtol=1e-5)


def test_train_refuses_bad_arguments_in_one_line(tmp_path, capsys, monkeypatch):
    from cxr_triage import cli

    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "data"))
    assert cli.run_command("train", ["--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert cli.run_command("train", ["--data", str(tmp_path), "--synthetic", "20"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    # Real images need ImageNet weights (never downloaded) or an explicit --random-init.
    assert cli.run_command("train", ["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--pretrained PATH" in err and "--random-init" in err
    assert "resnet50-11ad3fa6.pth" in err
    weights = tmp_path / "w.pth"
    weights.touch()
    args = ["--data", str(tmp_path), "--pretrained", str(weights), "--random-init"]
    assert cli.run_command("train", args) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # nothing written for a refused command


def test_a_tiny_validation_split_is_refused_unless_forced(caplog):
    from governance.errors import ConfigError
    from training.pipeline import check_validation

    with pytest.raises(ConfigError, match="fewer than 10 of a class.*--force"):
        check_validation(np.array([0] * 30 + [1] * 3), force=False)
    with pytest.raises(ConfigError, match="both classes"):
        check_validation(np.array([0] * 30), force=True)
    warnings = check_validation(np.array([0] * 30 + [1] * 3), force=True)
    assert warnings and "--force" in warnings[0]
    assert "FEWER THAN 10" in caplog.text
    assert check_validation(np.array([0] * 10 + [1] * 10), force=False) == []


@pytest.mark.slow
def test_shuffled_labels_do_not_learn(tmp_path, kaggle_dir, monkeypatch):
    """Negative control: with the training labels shuffled, held-out AUC stays near chance,
    so the AUC test above measures learning and not a leak."""
    import training.prepare as prepare

    original = prepare.load_data

    def shuffled(*args, **kwargs):
        data = original(*args, **kwargs)
        train_idx = data.indices("train")
        data.labels[train_idx] = np.random.default_rng(0).permutation(data.labels[train_idx])
        return data

    settings = make_store_settings(tmp_path)
    args = get_args_parser().parse_args(
        [
            "--data",
            str(kaggle_dir),
            "--output-dir",
            str(tmp_path / "run"),
            "--no-register",
            *TRAIN_ARGS,
        ]
    )
    import training.pipeline as train_module

    monkeypatch.setattr(train_module, "load_data", shuffled)
    result = train(args, settings)
    assert result.summary["test_metrics"]["overall"]["auc"]["value"] < 0.8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_with_amp_and_channels_last(tmp_path):
    settings: Settings = make_store_settings(tmp_path)
    args = get_args_parser().parse_args(
        [
            "--synthetic",
            "200",
            "--input-size",
            "64",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--device",
            "cuda",
            "--workers",
            "2",
            "--bootstrap",
            "50",
            "--no-progress",
            "--no-register",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    result = train(args, settings)
    assert result.summary["training_args"]["amp"] is True
    assert result.summary["training_args"]["channels_last"] is True
    assert result.summary["export_check"]["max_abs_probability_diff"] < 1e-3


@pytest.mark.parametrize(
    ("operating_point", "criterion"),
    [("triage", "target_sensitivity"), ("balanced", "youden"), ("precision", "target_specificity")],
)
def test_policy_set_takes_tau_from_what_training_recorded(
    trained_run, store, monkeypatch, capsys, operating_point, criterion
):
    from cxr_triage import policy_cli
    from cxr_triage.settings import get_settings

    version = f"{trained_run.result.version}-{operating_point}"
    register_run(store, trained_run.run_dir, version=version, actor="test")
    monkeypatch.setenv("CXR_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        code = policy_cli.main(
            [
                "set",
                "--model",
                version,
                "--operating-point",
                operating_point,
                "--approved-by",
                "Dr Test",
                "--rationale",
                "site SOP 4",
            ]
        )
    finally:
        get_settings.cache_clear()
    assert code == 0, capsys.readouterr()
    recorded = _summary(trained_run)["operating_points"][criterion]
    with store.read() as session:
        policy = policy_in_force(session, get_model(session, version).id)
        assert policy is not None
        assert policy.tau == pytest.approx(recorded["tau"])
        assert policy.target_metric == recorded["criterion"]
        assert policy.validation == pytest.approx(recorded["validation"])


def _val_probabilities(run_dir: Path) -> np.ndarray:
    with open(run_dir / "predictions_val.csv", newline="") as fh:
        return np.array([float(r["probability"]) for r in csv.DictReader(fh)])


def test_calibration_and_taus_are_fitted_on_the_exported_files_scores(tmp_path):
    """Validation is scored through the exported TorchScript at the serving precision: the
    precision changes the recorded probabilities, and the export check compares the served
    file with exactly those."""
    settings = make_store_settings(tmp_path)
    common = [
        "--synthetic", "40", "--input-size", "32", "--batch-size", "8", "--workers", "0",
        "--epochs", "1", "--bootstrap", "0", "--no-progress", "--no-register", "--threads", "1",
        "--val-fraction", "0.25", "--force"]  # fmt: skip
    parser = get_args_parser()
    runs = {}
    for precision in ("fp32", "bf16"):
        args = parser.parse_args(
            [*common, "--serving-precision", precision, "--output-dir", str(tmp_path / precision)]
        )
        runs[precision] = train(args, settings).summary
    fp32, bf16 = (_val_probabilities(tmp_path / p) for p in ("fp32", "bf16"))
    assert len(fp32) == len(bf16) == runs["fp32"]["export_check"]["images"] == 8
    assert np.max(np.abs(fp32 - bf16)) > 1e-6  # the same weights, scored as served
    for precision, summary in runs.items():
        check = summary["export_check"]
        assert check["precision"] == precision
        assert check["compared_with"] == "recorded validation probabilities"
        assert check["max_abs_probability_diff"] < 2e-2
    assert runs["fp32"]["export_check"]["max_abs_probability_diff"] < 1e-5
    # The operating points were chosen on those served probabilities.
    probs = _val_probabilities(tmp_path / "fp32")
    taus = [p["tau"] for p in runs["fp32"]["operating_points"].values()]
    assert all(np.isclose(probs, tau, atol=1e-6).any() or tau > probs.max() for tau in taus)
    provenance = runs["fp32"]["provenance"]
    assert provenance["torch"] == torch.__version__ and provenance["preprocessing_sha256"]
    assert runs["fp32"]["preprocessing"]["version"] >= 2


def test_model_register_copies_the_run_and_honours_every_flag(
    trained_run, store, tmp_path, monkeypatch, capsys
):
    from cxr_triage import cli
    from cxr_triage.settings import get_settings

    monkeypatch.setenv("CXR_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "data"))
    run, sha = str(trained_run.run_dir), _summary(trained_run)["sha256"]
    get_settings.cache_clear()
    try:
        refused = [
            [run, "--version", "x1", "--sha256", "0" * 64],
            [run, "--version", "x2", "--input-size", "64"],
            [run, "--version", "x3", "--temperature", "2"],
        ]
        for args in refused:
            assert cli.run_command("model", ["register", *args]) == 2
            err = capsys.readouterr().err.strip()
            assert err and "\n" not in err, err
        version = "copied-clinical"
        argv = ["register", run, "--version", version, "--sha256", sha, "--clinical"]
        assert cli.run_command("model", argv) == 0
        model_path = get_settings().model_path
    finally:
        get_settings.cache_clear()
    with store.read() as session:
        model = get_model(session, version)
        assert model.clinical is True and model.sha256 == sha
        assert Path(model.path).parent == model_path.absolute()
        assert Path(model.path).name == f"{version}.pt"
        assert model.details["preprocessing"]["version"] >= 2
        copied = Path(model.path)
        for name in ("x1", "x2", "x3"):
            with pytest.raises(NotFound):  # nothing was registered
                get_model(session, name)
    assert sha256_file(copied) == sha
