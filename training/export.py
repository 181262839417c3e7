"""TorchScript export checked against the eager model, and registration in the model registry.

The exported file is what the worker serves: :func:`worker.model.export_torchscript` traces
it, :func:`export_checked` compares it with the eager network on a batch, and
:func:`register_version` records it with its SHA-256, temperature, operating points, metrics,
reference score distribution, training arguments and the preprocessing record the file
carries in one transaction, optionally with a threshold policy and activation.
:func:`register_run` does that for a training run folder
(``cxr-triage model register RUN_DIR``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from governance.db import Store
from governance.errors import ConfigError, ModelIntegrityError, TriageError
from governance.jsonsafe import json_safe
from governance.models import ModelVersion
from governance.policies import set_policy
from governance.registry import (
    activate_model,
    register_model,
    sha256_file,
    verify_model_file,
)
from training.calibration import probabilities
from training.presets import EvalBatchPreset
from training.thresholds import POLICY_CRITERIA
from worker.inference import ModelSpec, load_model, predict_logits
from worker.model import export_torchscript, preprocessing_of

logger = logging.getLogger(__name__)

# torch 2.14 deprecates TorchScript in favour of torch.export; serving still loads TorchScript.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit.*")

REFERENCE_BINS = 20
SUMMARY_FILE = "report_summary.json"
MODEL_FILE = "model.pt"


def fold_logit_shift(model: nn.Module, shift: float) -> nn.Module:
    """Add ``shift`` to the final layer's bias, so the network outputs ``logit + shift``.

    Raises
    ------
    ValueError
        ``shift`` is not finite, or the model has no ``fc`` layer with a bias.
    """
    if not math.isfinite(shift):
        raise ValueError(f"shift must be finite, got {shift}")
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear) or fc.bias is None:
        raise ValueError("model must have an fc Linear layer with a bias")
    with torch.no_grad():
        fc.bias.add_(shift)
    return model


def export_checked(
    model: nn.Module,
    input_size: int,
    path: str | Path,
    batch: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[Path, float]:
    """Export ``model`` to TorchScript and compare it with the eager model on ``batch``.

    Returns
    -------
    path, max_abs_diff
        The file and the largest absolute difference in calibrated probability.

    Raises
    ------
    ValueError
        ``batch`` is not (N, 3, input_size, input_size).
    """
    if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, input_size, input_size):
        raise ValueError(
            f"batch must be (N, 3, {input_size}, {input_size}), got {tuple(batch.shape)}"
        )
    model = model.eval().to("cpu", dtype=torch.float32)
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    out = export_torchscript(model, input_size, path)
    scripted = torch.jit.load(str(out), map_location="cpu").eval()
    with torch.inference_mode():
        eager = model(batch.float()).reshape(-1).double().numpy()
        traced = scripted(batch.float()).reshape(-1).double().numpy()
    diff = float(
        np.max(np.abs(probabilities(eager, temperature) - probabilities(traced, temperature)))
    )
    logger.info(
        "exported %s; max |p_torchscript - p_eager| = %.2e on %d images", out, diff, len(batch)
    )
    return out, diff


def score_exported(
    path: str | Path,
    input_size: int,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: str = "cpu",
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (float64) and labels (int64) of ``loader`` through a TorchScript file as
    serving loads it (:func:`worker.inference.load_model`) at ``precision``.

    ``loader`` yields cached images (uint8 or [0, 1]); they are standardised by the same
    :class:`~training.presets.EvalBatchPreset` as in training, on the host, and handed to
    serving's own :func:`~worker.inference.predict_logits` (which copies them to ``device``).
    """
    spec = ModelSpec(Path(path).name, str(path), sha256_file(Path(path)), input_size)
    loaded = load_model(spec, device=device, precision=precision)
    standardize = EvalBatchPreset(channels_last=False)
    logits, labels = [], []
    for images, targets in loader:
        logits.append(predict_logits(loaded, standardize(images).numpy()))
        labels.append(targets.numpy().reshape(-1))
    return np.concatenate(logits), np.concatenate(labels).astype(np.int64)


def reference_distribution(
    probs: np.ndarray, *, bins: int = REFERENCE_BINS, source: str = "validation"
) -> dict[str, Any]:
    """The calibrated score distribution drift monitoring compares production against.

    ``{"source", "n", "mean", "std", "bin_edges" (bins + 1 equal-width edges on [0, 1]),
    "counts", "quantiles" (21 values: the 0th, 5th, ..., 100th percentiles)}``.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0:
        raise ValueError("probs must not be empty")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(p, 0.0, 1.0), bins=edges)
    return {
        "source": source,
        "n": int(p.size),
        "mean": float(p.mean()),
        "std": float(p.std()),
        "bin_edges": [round(float(e), 6) for e in edges],
        "counts": counts.astype(int).tolist(),
        "quantiles": [float(q) for q in np.percentile(p, np.arange(0, 101, 5))],
    }


def register_version(
    store: Store,
    *,
    version: str,
    path: str | Path,
    input_size: int,
    temperature: float,
    description: str,
    details: dict[str, Any],
    clinical: bool = False,
    expected_sha256: str | None = None,
    policy: dict[str, Any] | None = None,
    activate: bool = False,
    actor: str = "cxr-triage train",
) -> ModelVersion:
    """Register a model file, and optionally set its policy and activate it, atomically.

    ``policy`` holds :func:`governance.policies.set_policy`'s keyword arguments
    (operating_point, tau, rationale, approved_by, optionally target_metric, validation).

    Raises
    ------
    ValueError
        ``activate`` without a ``policy``: a model never serves without a tau.
    """
    if activate and policy is None:
        raise ValueError("activate needs a policy: a model never serves without a tau")
    # The registry row says how the file's input is made: the record the file itself carries.
    safe_details = json_safe({**details, "preprocessing": preprocessing_of(path)})

    def work(session: Any) -> ModelVersion:
        model = register_model(
            session,
            version=version,
            path=path,
            input_size=input_size,
            temperature=temperature,
            clinical=clinical,
            description=description,
            details=safe_details,
            expected_sha256=expected_sha256,
            actor=actor,
        )
        if policy is not None:
            set_policy(session, model, actor=actor, **json_safe(policy))
        if activate:
            activate_model(session, version, actor=actor)
        return model

    return store.run(work)


def policy_from_summary(
    summary: dict[str, Any], operating_point: str, approved_by: str
) -> dict[str, Any]:
    """A policy for ``operating_point`` (triage, balanced, precision) from a run's validation
    operating points.

    Raises
    ------
    ValueError
        ``operating_point`` is not one of triage, balanced, precision.
    """
    if operating_point not in POLICY_CRITERIA:
        raise ValueError(
            f"operating_point must be one of {', '.join(POLICY_CRITERIA)}, got {operating_point!r}"
        )
    point = summary["operating_points"][POLICY_CRITERIA[operating_point]]
    return {
        "operating_point": operating_point,
        "tau": point["tau"],
        "target_metric": point["criterion"],
        "validation": point["validation"],
        "rationale": f"{operating_point}: {point['criterion']}, chosen on the validation split "
        f"of run {summary.get('run_name', '?')}",
        "approved_by": approved_by,
    }


def register_run(
    store: Store,
    run_dir: str | Path,
    *,
    version: str | None = None,
    actor: str = "cxr-triage",
    model_dir: str | Path | None = None,
    operating_point: str | None = None,
    approved_by: str | None = None,
    clinical: bool = False,
    expected_sha256: str | None = None,
) -> ModelVersion:
    """Register the model of a training run folder (``model.pt`` + ``report_summary.json``).

    Parameters
    ----------
    version
        Version name; the run's suggested one when omitted.
    model_dir
        Copy the model file there as ``<version>.pt`` first (else it is registered in place).
    operating_point
        Also set a policy from the run's validation operating points and activate the
        version (needs ``approved_by``); else activation is left to a person.
    clinical
        Mark the version clinical (a person's statement; synthetic runs are refused).
    expected_sha256
        Refuse unless the run's model file has this SHA-256.

    Raises
    ------
    ConfigError
        The folder is not a finished training run.
    ModelIntegrityError
        The model file's SHA-256 differs from the one the run recorded.
    """
    run = Path(run_dir)
    summary_path = run / SUMMARY_FILE
    if not summary_path.is_file() or not (run / MODEL_FILE).is_file():
        raise ConfigError(
            f"{run} is not a finished training run (no {SUMMARY_FILE} and "
            f"{MODEL_FILE}); run `cxr-triage train` first"
        )
    summary = json.loads(summary_path.read_text())
    name = version or summary["version"]
    source = run / MODEL_FILE
    if expected_sha256 is not None and expected_sha256.lower() != summary.get("sha256"):
        raise ModelIntegrityError(
            f"{source} was recorded with SHA-256 {summary.get('sha256')}, not {expected_sha256}"
        )
    verify_model_file(source, summary["sha256"])
    if clinical and str(summary.get("description", "")).startswith("NON-CLINICAL"):
        raise ConfigError(f"{run} was trained on synthetic images: it cannot be clinical")
    if model_dir is not None:
        target = Path(model_dir) / f"{name}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        source = target
    policy = None
    if operating_point is not None:
        if not approved_by:
            raise ValueError("approved_by is needed to set a policy")
        policy = policy_from_summary(summary, operating_point, approved_by)
    try:
        return register_version(
            store,
            version=name,
            path=source,
            input_size=int(summary["input_size"]),
            temperature=float(summary["temperature"]),
            clinical=clinical,
            description=summary.get("description", f"trained by cxr-triage train ({run.name})"),
            details=registry_details(summary),
            expected_sha256=summary["sha256"],
            policy=policy,
            activate=policy is not None,
            actor=actor,
        )
    except TriageError:
        raise
    except KeyError as exc:
        raise ConfigError(
            f"{summary_path} lacks {exc}; was it written by cxr-triage train?"
        ) from None


def registry_details(summary: dict[str, Any]) -> dict[str, Any]:
    """What the registry keeps of a run summary (no per-image rows)."""
    keys = (
        "run_name",
        "architecture",
        "input_size",
        "temperature",
        "logit_shift",
        "operating_points",
        "val_metrics",
        "test_metrics",
        "calibration",
        "reference_distribution",
        "training_args",
        "split_manifest_sha256",
        "data",
        "export_check",
        "sha256",
        "best_epoch",
        "preprocessing",
        "provenance",
    )
    return {k: summary[k] for k in keys if k in summary}
