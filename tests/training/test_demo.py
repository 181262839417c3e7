"""The demo model: trained when none is active, registered NON-CLINICAL, policy set, served."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest

from governance.models import ModelStatus
from governance.policies import policy_in_force
from governance.registry import active_model, list_models, sha256_file
from training.demo import DESCRIPTION, ensure_demo_model
from worker.inference import ModelSpec, calibrate, load_model, predict_logits
from worker.preprocess import preprocess

SMALL = {"n_train": 48, "n_val": 32, "n_test": 32, "epochs": 1}


def test_ensure_demo_model_trains_registers_activates_once(
    make_settings, store, synthetic_study_dir
):
    settings = make_settings()
    version = ensure_demo_model(settings, store, progress=False, **SMALL)
    with store.read() as session:
        model = active_model(session)
        assert model is not None and model.version == version
        assert model.status == ModelStatus.ACTIVE
        assert model.clinical is False and model.description == DESCRIPTION
        assert model.input_size == 64 and model.architecture == "resnet50"
        assert model.path == str(settings.model_path / f"{version}.pt")
        assert sha256_file(settings.model_path / f"{version}.pt") == model.sha256
        policy = policy_in_force(session, model.id)
        assert policy is not None and policy.operating_point == "balanced"
        assert policy.tau == pytest.approx(model.details["operating_points"]["youden"]["tau"])
        details = model.details
        spec = ModelSpec.of(model)
    assert details["non_clinical"] is True
    assert details["training_args"]["n_train"] == 48
    assert sum(details["reference_distribution"]["counts"]) == 32
    assert details["export_check"]["max_abs_probability_diff"] < 1e-5
    assert 0.0 <= details["held_out_auc"] <= 1.0

    started = time.perf_counter()  # the second call finds the model: no second training
    assert ensure_demo_model(settings, store, progress=False, **SMALL) == version
    assert time.perf_counter() - started < 5.0
    with store.read() as session:
        assert len(list_models(session)) == 1

    # The worker loads the registered file (checksum verified) and scores a DICOM file.
    loaded = load_model(spec, device="cpu", precision="fp32")
    path = next(synthetic_study_dir.rglob("1.dcm"))
    batch = preprocess(pydicom.dcmread(path), 64)[None]
    probability = calibrate(predict_logits(loaded, batch), spec.temperature)
    assert probability.shape == (1,) and 0.0 < probability[0] < 1.0


@pytest.mark.slow
def test_demo_model_separates_held_out_synthetic_images(trained_model):
    """The default demo configuration: flagged studies in the demo are the positive ones.

    ``trained_model`` (tests/services.py) is ``ensure_demo_model`` at its defaults, trained
    once per run and shared with the end-to-end tests; what it recorded is checked here.
    """
    details = trained_model.details
    assert details["held_out_auc"] >= 0.9, details["training_args"]["history"]
    at_tau = details["test_metrics"]["operating_points"]["youden"]
    assert at_tau["tau"] == pytest.approx(trained_model.tau)
    assert at_tau["accuracy"]["value"] >= 0.85
    assert at_tau["n"] == details["training_args"]["n_test"]
    assert np.isfinite(trained_model.temperature) and trained_model.temperature > 0
