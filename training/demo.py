"""A model to run on day one: a NON-CLINICAL ResNet-50 trained on synthetic radiographs.

:func:`ensure_demo_model` returns the active model version, training one first when there is
none: a randomly initialised ResNet-50 (the one :func:`worker.model.build_model` builds) at
64 px on :func:`training.synthetic.studies.synthetic_arrays`, which renders at 256 px and reduces
through serving's own preprocessing. It takes a couple of minutes on two CPU cores. The
temperature and the balanced tau (Youden's J) are chosen on a validation split, the AUC is
measured on a separate held-out split, and the version is registered with
``clinical=False``, given a policy and activated in one transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance.db import Store
from governance.models import ModelVersion, ThresholdPolicy
from governance.policies import set_policy
from governance.registry import activate_model, active_model, sha256_file
from training.cache import quantize
from training.datasets import UnitImageDataset, make_loader
from training.engine import Placement, fit, set_seed, zero_init_residual
from training.export import export_checked, json_safe, register_version
from training.finalize import Finalized, eager_scores, finalize
from training.optimisation import Hyperparameters
from training.presets import EvalBatchPreset, TrainBatchPreset
from training.synthetic.studies import synthetic_arrays
from training.thresholds import POLICY_CRITERIA
from worker.model import build_model

logger = logging.getLogger(__name__)

DESCRIPTION = "NON-CLINICAL demo model trained on synthetic images"
APPROVED_BY = "cxr-triage demo"
ACTOR = "cxr-triage demo"


def train_demo_model(
    *,
    size: int = 64,
    n_train: int = 800,
    n_val: int = 300,
    n_test: int = 300,
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 1e-3,
    render_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> tuple[torch.nn.Module, Finalized, dict[str, Any]]:
    """Train, calibrate and choose operating points on synthetic data (no I/O, no store).

    Returns
    -------
    model, finalized, args
        The network (logit shift folded in, on the CPU), its calibration/metrics and the
        training arguments.

    Raises
    ------
    ValueError
        A count or size is out of range.
    """
    if min(n_train, n_val, n_test) < 16:
        raise ValueError("n_train, n_val and n_test must each be at least 16")
    args: dict[str, Any] = {
        "size": size,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": 1e-4,
        "render_size": render_size,
        "seed": seed,
        "pretrained": None,
        "data": "training.synthetic.studies.synthetic_arrays",
        "device": "cpu",
    }
    set_seed(seed)
    started = time.perf_counter()
    units, labels = synthetic_arrays(
        n_train + n_val + n_test, size, seed, render_size=render_size, progress=progress
    )
    images = quantize(units)  # as the training cache holds them
    logger.info(
        "rendered %d synthetic images in %.1f s", len(images), time.perf_counter() - started
    )
    order = np.random.default_rng(seed).permutation(len(images))
    train_idx, val_idx = order[:n_train], order[n_train : n_train + n_val]
    test_idx = order[n_train + n_val :]
    pos = int(labels[train_idx].sum())
    pos_weight = (len(train_idx) - pos) / max(pos, 1)
    train_set = UnitImageDataset(images, labels, train_idx)
    evaluation = EvalBatchPreset(channels_last=False)
    loaders = [
        make_loader(UnitImageDataset(images, labels, idx), batch_size=128, train=False)
        for idx in (val_idx, test_idx)
    ]
    model = build_model()
    zero_init_residual(model)
    device = torch.device("cpu")
    result = fit(
        model,
        make_loader(train_set, batch_size=batch_size, train=True, seed=seed),
        loaders[0],
        Hyperparameters(epochs, lr, weight_decay=args["weight_decay"], pos_weight=pos_weight),
        Placement(
            device,
            train_transform=TrainBatchPreset(crop_size=size, channels_last=False),
            eval_transform=evaluation,
        ),
        progress=progress,
    )
    model.load_state_dict(result.best_state)
    val, test = (eager_scores(model, loader, device, transform=evaluation) for loader in loaders)
    final = finalize(model, val, test, pos_weight=pos_weight, n_bootstrap=200, seed=seed)
    args.update(
        pos_weight=pos_weight,
        best_epoch=result.best_epoch,
        history=result.history,
        train_seconds=round(time.perf_counter() - started, 1),
    )
    return model, final, args


def ensure_demo_model(
    settings: Settings,
    store: Store,
    *,
    progress: bool = True,
    **recipe: Any,
) -> str:
    """The active model version; trains, registers and activates the demo model if none is.

    The model file goes to ``settings.model_path / f"{version}.pt"``. The version is
    registered with ``clinical=False`` and a ``balanced`` policy (Youden's J on validation).

    Parameters
    ----------
    settings, store
        Where the model file goes; the store it is registered and activated in.
    progress
        Show progress bars while training.
    **recipe
        Passed on to :func:`train_demo_model` (``size``, ``n_train``, ``epochs``, ``seed``,
        ...); its defaults are the demo model's.

    Returns
    -------
    str
        The active version.
    """
    with store.read() as session:
        current = active_model(session)
        if current is not None:
            return current.version
    logger.info(
        "no active model: training the NON-CLINICAL demo model on synthetic images "
        "(a couple of minutes on a CPU)"
    )
    model, final, args = train_demo_model(progress=progress, **recipe)
    size = args["size"]
    folder = settings.model_path
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".demo-{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S%f}.pt"
    probe = EvalBatchPreset(channels_last=False)(torch.zeros((2, size, size), dtype=torch.uint8))
    _, diff = export_checked(model, size, staging, probe, final.temperature)
    sha256 = sha256_file(staging)
    version = f"demo-r50-{size}px-{sha256[:10]}"
    path = folder / f"{version}.pt"
    staging.replace(path)
    point = final.operating_points[POLICY_CRITERIA["balanced"]]
    details = {
        **final.summary(),
        "training_args": args,
        "export_check": {"max_abs_probability_diff": diff},
        "non_clinical": True,
        "held_out_auc": final.test_metrics["overall"]["auc"]["value"]
        if final.test_metrics
        else None,
    }
    policy = {
        "operating_point": "balanced",
        "tau": point.tau,
        "target_metric": point.criterion,
        "validation": point.validation,
        "approved_by": APPROVED_BY,
        "rationale": "demo: Youden's J on the synthetic validation split; "
        "NON-CLINICAL model, not for patient care",
    }
    with store.read() as session:
        exists = session.scalar(select(ModelVersion.id).where(ModelVersion.version == version))
    if exists:  # the same deterministic training ran before and was deactivated since
        store.run(lambda s: _reactivate(s, version, policy))
    else:
        register_version(
            store,
            version=version,
            path=path,
            input_size=size,
            temperature=final.temperature,
            description=DESCRIPTION,
            details=json_safe(details),
            clinical=False,
            expected_sha256=sha256,
            policy=policy,
            activate=True,
            actor=ACTOR,
        )
    logger.info(
        "demo model %s active: held-out AUC %.3f, tau %.3f (balanced)",
        version,
        details["held_out_auc"] or float("nan"),
        point.tau,
    )
    return version


def _reactivate(session: Any, version: str, policy: dict[str, Any]) -> ModelVersion:
    model = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    has_policy = session.scalar(
        select(ThresholdPolicy.id).where(ThresholdPolicy.model_version_id == model.id).limit(1)
    )
    if not has_policy:
        set_policy(session, model, actor=ACTOR, **json_safe(policy))
    return activate_model(session, version, actor=ACTOR)
