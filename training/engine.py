"""The training loop: one step, one epoch, inference, evaluation, and fit on validation AUC.

Shaped after torchvision's ``references/classification/train.py``: ``train_one_epoch`` and
``evaluate`` are plain functions, and a checkpoint is a dict of state_dicts plus the
arguments (:mod:`training.checkpoints`). :func:`fit` composes them for both
``cxr-triage train`` and the demo model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from training.checkpoints import Checkpoints, FitResult, resume, save_checkpoint
from training.optimisation import Hyperparameters, make_training

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
# A batch preset of training.presets: the loader's batch, on the device, to the network's input.
BatchTransform = Callable[[torch.Tensor], torch.Tensor]


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


def zero_init_residual(model: nn.Module) -> None:
    """Zero the last BatchNorm of each bottleneck: each block starts as the identity, which
    makes a randomly initialised ResNet-50 train much faster (Goyal et al. 2017)."""
    for module in model.modules():
        bn3 = getattr(module, "bn3", None)
        if isinstance(bn3, nn.BatchNorm2d):
            nn.init.zeros_(bn3.weight)


def autocast(
    device: torch.device, amp_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``amp_dtype`` on ``device``; nothing at all when None (any device)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def to_input(
    images: torch.Tensor,
    device: torch.device,
    transform: BatchTransform | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """A loader's batch to the network's input on ``device``: copied as it is (uint8 from the
    cache; asynchronous from pinned memory), then ``transform`` there, on the whole batch."""
    images = images.to(device, non_blocking=True)
    if transform is not None:
        images = transform(images)
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
    with autocast(device, amp_dtype):
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


@dataclass
class EpochStats:
    """One training epoch; ``loss`` is the mean loss, a 0-d tensor on the training device."""

    loss: torch.Tensor
    images: int
    seconds: float
    lr: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


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
    transform: BatchTransform | None = None,
    progress: bool = True,
) -> EpochStats:
    """One pass over ``loader``; the scheduler steps per batch (OneCycleLR).

    Each batch is augmented and standardised by ``transform`` on ``device``. The loss is
    summed on ``device`` and never read back during the epoch (no per-step host
    synchronisation); the caller checks that it is finite.
    """
    model.train()
    total = torch.zeros((), device=device)
    count, started = 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for images, targets in bar:
        images = to_input(images, device, transform, channels_last)
        targets = targets.to(device, non_blocking=True).float()
        loss = train_step(
            model, criterion, optimizer, images, targets, device, amp_dtype=amp_dtype, scaler=scaler
        )
        scheduler.step()
        total += loss.detach() * len(targets)
        count += len(targets)
    lr = float(scheduler.get_last_lr()[0])
    return EpochStats(total / max(count, 1), count, time.perf_counter() - started, lr)


@torch.inference_mode()
def infer(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    transform: BatchTransform | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels over ``loader`` in its order, both on ``device``; each
    batch goes through ``transform`` (standardisation, no augmentation) on ``device``."""
    model.eval()
    logits, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        images = to_input(images, device, transform, channels_last)
        with autocast(device, amp_dtype):
            out = model(images)
        logits.append(out.float().reshape(-1))
        labels.append(targets.to(device, non_blocking=True).float().reshape(-1))
    return torch.cat(logits), torch.cat(labels)


def predict(
    model: nn.Module, loader: Iterable[Batch], device: torch.device, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float64) and labels (int64) over ``loader``, in its order, on the host."""
    logits, labels = infer(model, loader, device, **kwargs)
    return logits.double().cpu().numpy(), labels.long().cpu().numpy()


@dataclass
class Evaluation:
    """Loss (0-d), logits and labels of one pass, all on the model's device."""

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def auc(self) -> float:
        """ROC AUC on the host (NaN with one class)."""
        labels = self.labels.long().cpu().numpy()
        if len(set(labels.tolist())) != 2:
            return math.nan
        return float(roc_auc_score(labels, self.logits.double().cpu().numpy()))


def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    **kwargs: Any,
) -> Evaluation:
    """Loss over ``loader`` computed where the logits are (the criterion's ``pos_weight``
    lives on ``device`` too), with the logits and labels it came from."""
    logits, labels = infer(model, loader, device, **kwargs)
    with torch.inference_mode():
        loss = criterion(logits, labels)
    return Evaluation(loss, logits, labels)


@dataclass(frozen=True)
class Placement:
    """Where :func:`fit` trains and how a loader's batch becomes the network's input there:
    autocast (``amp``), the channels-last memory format, and the batch presets of
    :mod:`training.presets` (``train_transform`` augments, ``eval_transform`` only
    standardises); without presets the batches are the input already."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    train_transform: BatchTransform | None = None
    eval_transform: BatchTransform | None = None


def record_epoch(
    result: FitResult,
    model: nn.Module,
    epoch: int,
    train: EpochStats,
    val: Evaluation,
    warmup_epochs: int,
) -> tuple[dict[str, float], bool]:
    """Read the epoch's figures back to the host (once), keep the best state, count patience
    (only after the warm-up epochs, while the one-cycle rate is still rising).

    Raises
    ------
    FloatingPointError
        The training loss became NaN or infinite.
    """
    train_loss = float(train.loss.item())
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"loss is {train_loss} at epoch {epoch}; lower --lr")
    auc = val.auc()
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": float(val.loss.item()),
        "val_auc": auc,
        "lr": train.lr,
        "seconds": train.seconds,
        "images_per_s": train.images_per_s,
    }
    result.history.append(row)
    improved = auc > result.best_auc
    if improved:
        result.best_auc, result.best_epoch, result.stale_epochs = auc, epoch, 0
        result.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    elif epoch >= warmup_epochs:
        result.stale_epochs += 1
    logger.info(
        "epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f%s (%.0f img/s)",
        epoch,
        row["train_loss"],
        row["val_loss"],
        auc,
        " *" if improved else "",
        train.images_per_s,
    )
    return row, improved


def fit(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    hparams: Hyperparameters,
    placement: Placement,
    checkpoints: Checkpoints | None = None,
    *,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train with BCEWithLogitsLoss, AdamW and OneCycleLR as ``hparams`` say, on
    ``placement``'s device; keep the best validation AUC.

    With ``checkpoints``, ``checkpoint.pth`` is written to its folder each epoch and
    ``best.pth`` when validation AUC improves, and training continues from its
    ``resume_from``, if any. ``on_epoch`` is called with each epoch's row of the history.

    Raises
    ------
    ValueError
        ``hparams.lr`` or ``hparams.pos_weight`` is not positive, or
        ``hparams.weight_decay`` is negative.
    """
    device, channels_last = placement.device, placement.channels_last
    configure_device(device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    training = make_training(model, hparams, len(train_loader), device, placement.amp)
    start, result = 0, FitResult()
    if checkpoints is not None and checkpoints.resume_from is not None:
        start, result = resume(checkpoints.resume_from, model, training, hparams.lr)
    epochs, patience = hparams.epochs, hparams.patience
    for epoch in range(start, epochs):
        train = train_one_epoch(
            model,
            training.criterion,
            training.optimizer,
            training.scheduler,
            train_loader,
            device,
            epoch,
            amp_dtype=training.amp_dtype,
            scaler=training.scaler,
            channels_last=channels_last,
            transform=placement.train_transform,
            progress=progress,
        )
        val = evaluate(
            model,
            training.criterion,
            val_loader,
            device,
            amp_dtype=training.amp_dtype,
            channels_last=channels_last,
            transform=placement.eval_transform,
        )
        row, improved = record_epoch(result, model, epoch, train, val, training.warmup_epochs)
        if on_epoch is not None:
            on_epoch(row)
        if checkpoints is not None:
            save_checkpoint(checkpoints, model, training, result, epoch, improved)
        if patience is not None and result.stale_epochs >= patience and epoch + 1 < epochs:
            logger.info("early stop: no better validation AUC for %d epochs", patience)
            result.stopped_early = True
            break
    return result
