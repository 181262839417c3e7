"""TorchScript export equals the eager model; shifts fold into the bias; details are JSON."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.export import export_checked, fold_logit_shift, json_safe, reference_distribution
from worker.model import build_model


def test_torchscript_export_equals_eager(tmp_path):
    torch.manual_seed(0)
    model = build_model()
    batch = torch.randn(3, 3, 64, 64)
    path, diff = export_checked(model, 64, tmp_path / "m.pt", batch, temperature=1.5)
    assert path.is_file() and diff < 1e-6
    scripted = torch.jit.load(str(path))
    with torch.inference_mode():
        np.testing.assert_allclose(scripted(batch).numpy(), model(batch).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="batch"):
        export_checked(model, 64, tmp_path / "n.pt", torch.zeros(1, 3, 32, 32))


def test_fold_logit_shift_adds_to_every_output():
    torch.manual_seed(0)
    model = build_model().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        before = model(x).clone()
    fold_logit_shift(model, -1.25)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before - 1.25)
    with pytest.raises(ValueError, match="finite"):
        fold_logit_shift(model, math.inf)


def test_reference_distribution_and_json_safety():
    ref = reference_distribution(np.array([0.01, 0.2, 0.2, 0.95]))
    assert ref["n"] == 4 and sum(ref["counts"]) == 4 and len(ref["bin_edges"]) == 21
    assert ref["quantiles"][0] == 0.01 and ref["quantiles"][-1] == 0.95
    assert json_safe({"a": float("nan"), "b": [np.float32(1.5), math.inf]}) == {
        "a": None,
        "b": [1.5, None],
    }
