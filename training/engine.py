"""The training loop: one epoch, evaluation, checkpoints, early stopping on validation AUC.

Shaped after torchvision's ``references/classification/train.py``: ``train_one_epoch`` and
``evaluate`` are plain functions, and a checkpoint is a dict of state_dicts plus the
arguments. :func:`fit` composes them for both ``cxr-triage train`` and the demo model.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions and cudnn autotuning on CUDA; nothing on the CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 where the device supports it, else fp16 (CUDA); None for off."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def zero_init_residual(model: nn.Module) -> None:
    """Zero the last BatchNorm of each bottleneck: each block starts as the identity, which
    makes a randomly initialised ResNet-50 train much faster (Goyal et al. 2017)."""
    for module in model.modules():
        bn3 = getattr(module, "bn3", None)
        if isinstance(bn3, nn.BatchNorm2d):
            nn.init.zeros_(bn3.weight)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on norms and biases.

    Raises
    ------
    ValueError
        ``lr`` is not positive or ``weight_decay`` is negative.
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must not be negative, got {weight_decay}")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Forward, backward and one optimiser step on a batch (autocast and fp16 scaling as set).

    A non-finite loss is not stepped on by the scaler; the caller decides what it means.
    Returns the loss (a 0-d tensor).
    """
    with torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    ):
        loss = criterion(model(images).squeeze(1).float(), targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Iterable[Batch],
    device: torch.device,
    epoch: int,
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; the scheduler steps per batch (OneCycleLR).

    Returns
    -------
    dict
        ``loss`` (mean), ``images``, ``seconds``, ``images_per_s``, ``lr`` (last).

    Raises
    ------
    FloatingPointError
        The loss became NaN or infinite.
    """
    model.train()
    total, count, started = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for images, targets in bar:
        images = _to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True).float()
        loss = train_step(
            model, criterion, optimizer, images, targets, device, amp_dtype=amp_dtype, scaler=scaler
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}; lower --lr")
        scheduler.step()
        total += loss.item() * len(targets)
        count += len(targets)
        bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    seconds = time.perf_counter() - started
    return {
        "loss": total / max(count, 1),
        "images": count,
        "seconds": seconds,
        "images_per_s": count / seconds if seconds > 0 else 0.0,
        "lr": float(scheduler.get_last_lr()[0]),
    }


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float64) and labels (int64) over ``loader``, in its order."""
    model.eval()
    logits, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        images = _to_device(images, device, channels_last)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            out = model(images)
        logits.append(out.float().reshape(-1).cpu().numpy())
        labels.append(targets.numpy())
    return (np.concatenate(logits).astype(np.float64), np.concatenate(labels).astype(np.int64))


def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    **kwargs: Any,
) -> dict[str, Any]:
    """Loss and AUC over ``loader``, with the logits and labels they came from."""
    logits, labels = predict(model, loader, device, **kwargs)
    loss = float(
        criterion(torch.from_numpy(logits).float(), torch.from_numpy(labels).float()).item()
    )
    auc = float(roc_auc_score(labels, logits)) if len(set(labels.tolist())) == 2 else math.nan
    return {"loss": loss, "auc": auc, "logits": logits, "labels": labels}


@dataclass
class FitResult:
    """What :func:`fit` returns; ``best_state`` is the best-AUC model state_dict (on CPU)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_auc: float = -math.inf
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped_early: bool = False


def fit(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    pos_weight: float,
    device: torch.device,
    patience: int | None = None,
    amp: bool = False,
    channels_last: bool = False,
    checkpoint_dir: Path | None = None,
    args: dict[str, Any] | None = None,
    resume: Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train with BCEWithLogitsLoss(pos_weight), AdamW and OneCycleLR; keep the best val AUC.

    With ``checkpoint_dir``, ``checkpoint.pth`` (last epoch) and ``best.pth`` are written
    there each epoch: dicts of state_dicts plus ``args``; ``resume`` continues from one.
    Training stops early after ``patience`` epochs without a better validation AUC.

    Raises
    ------
    ValueError
        ``epochs`` is below 1, ``pos_weight`` is not positive or ``patience`` is below 1.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not pos_weight > 0:
        raise ValueError(f"pos_weight must be positive, got {pos_weight}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    configure_device(device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * max(len(train_loader), 1), pct_start=0.25
    )
    amp_dtype = amp_dtype_for(device, amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    result, start, stale = FitResult(), 0, 0
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["lr_scheduler"].get("total_steps") == scheduler.total_steps:
            scheduler.load_state_dict(state["lr_scheduler"])
        else:  # more (or fewer) epochs than before: stretch the one cycle over the new total
            done = int(state["lr_scheduler"]["last_epoch"])
            logger.warning(
                "resuming with a different number of epochs: the one-cycle "
                "learning-rate schedule is stretched from step %d",
                done,
            )
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=lr,
                total_steps=scheduler.total_steps,
                pct_start=0.25,
                last_epoch=done - 1,
            )
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, stale = state["epoch"] + 1, state.get("stale_epochs", 0)
        result.history = list(state.get("history", []))
        result.best_epoch, result.best_auc = state["best_epoch"], state["best_auc"]
        best_path = Path(resume).with_name("best.pth")
        best = (
            torch.load(best_path, map_location="cpu", weights_only=False)
            if (best_path.is_file())
            else state
        )
        result.best_state = best["model"]
        logger.info("resumed from %s at epoch %d (best AUC %.4f)", resume, start, result.best_auc)
    eval_kwargs = {"amp_dtype": amp_dtype, "channels_last": channels_last}
    for epoch in range(start, epochs):
        train = train_one_epoch(
            model,
            criterion,
            optimizer,
            scheduler,
            train_loader,
            device,
            epoch,
            amp_dtype=amp_dtype,
            scaler=scaler,
            channels_last=channels_last,
            progress=progress,
        )
        val = evaluate(model, criterion, val_loader, device, **eval_kwargs)
        row = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "val_loss": val["loss"],
            "val_auc": val["auc"],
            "lr": train["lr"],
            "seconds": train["seconds"],
            "images_per_s": train["images_per_s"],
        }
        result.history.append(row)
        improved = val["auc"] > result.best_auc
        if improved:
            result.best_auc, result.best_epoch, stale = val["auc"], epoch, 0
            result.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f%s (%.0f img/s)",
            epoch,
            train["loss"],
            val["loss"],
            val["auc"],
            " *" if improved else "",
            train["images_per_s"],
        )
        if on_epoch is not None:
            on_epoch(row)
        if checkpoint_dir is not None:
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch,
                "args": copy.deepcopy(args or {}),
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_auc": result.best_auc,
                "stale_epochs": stale,
            }
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            _atomic_save(checkpoint, checkpoint_dir / "checkpoint.pth")
            if improved:
                _atomic_save(checkpoint, checkpoint_dir / "best.pth")
        if patience is not None and stale >= patience and epoch + 1 < epochs:
            logger.info("early stop: no better validation AUC for %d epochs", patience)
            result.stopped_early = True
            break
    return result


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
