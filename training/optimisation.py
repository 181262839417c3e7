"""What one optimisation is made of: AdamW, the weighted loss, the one-cycle schedule, precision."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.calibration import checked_pos_weight


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 where the device supports it, else fp16 (CUDA); None for off."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


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


def make_criterion(pos_weight: float, device: torch.device) -> nn.BCEWithLogitsLoss:
    """BCEWithLogitsLoss with ``pos_weight`` on ``device``, where every loss is computed; a
    weight that is not positive raises ``ValueError`` (:func:`checked_pos_weight`)."""
    weight = torch.tensor(checked_pos_weight(pos_weight), device=device)
    return nn.BCEWithLogitsLoss(pos_weight=weight)


@dataclass(frozen=True)
class Hyperparameters:
    """What :func:`~training.engine.fit` optimises and for how long: ``epochs`` of AdamW
    (``weight_decay`` off norms and biases) on a one-cycle schedule peaking at ``lr``,
    BCEWithLogitsLoss weighted by ``pos_weight``; with ``patience``, an early stop after that
    many epochs without a better validation AUC, counted only after the one-cycle warm-up.

    Raises
    ------
    ValueError
        ``epochs`` is below 1 or ``patience`` is below 1.
    """

    epochs: int
    lr: float
    weight_decay: float
    pos_weight: float
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")


@dataclass
class Training:
    """What one optimisation holds: loss, optimiser, one-cycle schedule, fp16 scaler."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    warmup_epochs: int


PCT_START = 0.25  # share of the one cycle spent warming up


def one_cycle(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int, last_epoch: int = -1
) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycleLR with this loop's warm-up share."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=PCT_START, last_epoch=last_epoch
    )


def make_training(
    model: nn.Module,
    hparams: Hyperparameters,
    steps_per_epoch: int,
    device: torch.device,
    amp: bool,
) -> Training:
    """Criterion (on ``device``), AdamW, OneCycleLR over ``hparams.epochs``, scaler for fp16."""
    optimizer = make_optimizer(model, hparams.lr, hparams.weight_decay)
    amp_dtype = amp_dtype_for(device, amp)
    return Training(
        make_criterion(hparams.pos_weight, device),
        optimizer,
        one_cycle(optimizer, hparams.lr, hparams.epochs * max(steps_per_epoch, 1)),
        torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        amp_dtype,
        math.ceil(PCT_START * hparams.epochs),
    )
