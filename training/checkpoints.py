"""A fit's checkpoints: ``checkpoint.pth`` and ``best.pth`` written each epoch, and resuming."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.optimisation import Training, one_cycle

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pth"
BEST_FILE = "best.pth"


@dataclass(frozen=True)
class Checkpoints:
    """Where :func:`~training.engine.fit` writes ``checkpoint.pth`` every epoch and
    ``best.pth`` (weights only) when validation AUC improves, the arguments recorded in them,
    and a ``checkpoint.pth`` to resume from."""

    folder: Path
    args: dict[str, Any] = field(default_factory=dict)
    resume_from: Path | None = None


@dataclass
class FitResult:
    """What :func:`~training.engine.fit` returns; ``best_state`` is the best-AUC model
    state_dict (on CPU)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_auc: float = -math.inf
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped_early: bool = False
    stale_epochs: int = 0


def resume(path: Path, model: nn.Module, training: Training, lr: float) -> tuple[int, FitResult]:
    """Load ``checkpoint.pth`` (and its ``best.pth``) into ``model`` and ``training``.

    Returns the epoch to start from and the result so far. With a different number of
    epochs than before, the one-cycle schedule is stretched over the new total.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    if state["lr_scheduler"].get("total_steps") == training.scheduler.total_steps:
        training.scheduler.load_state_dict(state["lr_scheduler"])
    else:
        done = int(state["lr_scheduler"]["last_epoch"])
        logger.warning(
            "resuming with a different number of epochs: the one-cycle "
            "learning-rate schedule is stretched from step %d",
            done,
        )
        training.scheduler = one_cycle(
            training.optimizer, lr, training.scheduler.total_steps, last_epoch=done - 1
        )
    if training.scaler is not None and state.get("scaler"):
        training.scaler.load_state_dict(state["scaler"])
    result = FitResult(
        history=list(state.get("history", [])),
        best_epoch=state["best_epoch"],
        best_auc=state["best_auc"],
        stale_epochs=state.get("stale_epochs", 0),
    )
    best_path = Path(path).with_name(BEST_FILE)
    best = torch.load(best_path, map_location="cpu") if best_path.is_file() else state
    result.best_state = best["model"]
    start = state["epoch"] + 1
    logger.info("resumed from %s at epoch %d (best AUC %.4f)", path, start, result.best_auc)
    return start, result


def save_checkpoint(
    checkpoints: Checkpoints,
    model: nn.Module,
    training: Training,
    result: FitResult,
    epoch: int,
    improved: bool,
) -> None:
    """``checkpoint.pth`` (everything to resume, the arguments too) every epoch; ``best.pth``
    (weights, epoch and AUC only) when the validation AUC improved."""
    folder = checkpoints.folder
    folder.mkdir(parents=True, exist_ok=True)
    weights = model.state_dict()
    checkpoint = {
        "model": weights,
        "optimizer": training.optimizer.state_dict(),
        "lr_scheduler": training.scheduler.state_dict(),
        "scaler": training.scaler.state_dict() if training.scaler is not None else None,
        "epoch": epoch,
        "args": copy.deepcopy(checkpoints.args),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_auc": result.best_auc,
        "stale_epochs": result.stale_epochs,
    }
    _atomic_save(checkpoint, folder / CHECKPOINT_FILE)
    if improved:
        _atomic_save(
            {"model": weights, "epoch": epoch, "val_auc": result.best_auc}, folder / BEST_FILE
        )


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
