"""The loaders of a ``cxr-triage train`` run: cached batches to train on, served files to score."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.datasets import ServedImageDataset, UnitImageDataset, make_loader
from training.options import RunOptions
from training.prepare import PreparedData
from training.presets import EvalBatchPreset, TrainBatchPreset

logger = logging.getLogger(__name__)


@dataclass
class Loaders:
    """Loaders of cached uint8 batches and the batch presets that make them the network's
    input on the training device (augmented for training, serving's input for the rest)."""

    train: Any
    val: Any
    test: Any | None
    augment: TrainBatchPreset
    evaluation: EvalBatchPreset
    #: validation and test as serving reads them (files through ``prepare``, not the uint8
    #: cache): what the exported model is scored on to fit the temperature and every tau
    val_served: Any
    test_served: Any | None


def build_loaders(args: argparse.Namespace, options: RunOptions, data: PreparedData) -> Loaders:
    """Training loader (shuffled) and validation/test loaders (in order), pinned on CUDA."""
    train_idx, val_idx, test_idx = (data.indices(s) for s in ("train", "val", "test"))
    kw = {
        "workers": options.workers,
        "seed": args.seed,
        "pin_memory": options.device.type == "cuda",
    }
    batch_size = options.batch_size

    def loader(idx: np.ndarray, train: bool) -> Any:
        dataset = UnitImageDataset(data.images, data.labels, idx)
        return make_loader(dataset, batch_size=batch_size * (1 if train else 2), train=train, **kw)

    paths = [record.path for record in data.records]

    def served(idx: np.ndarray) -> Any:
        dataset = ServedImageDataset(data.images, data.labels, paths, args.input_size, idx)
        return make_loader(dataset, batch_size=batch_size * 2, train=False, **kw)

    channels_last = options.channels_last
    with_test = len(set(data.labels[test_idx].tolist())) == 2
    return Loaders(
        loader(train_idx, True),
        loader(val_idx, False),
        loader(test_idx, False) if with_test else None,
        TrainBatchPreset.preset(args.augment, args.input_size, channels_last=channels_last),
        EvalBatchPreset(channels_last=channels_last),
        served(val_idx),
        served(test_idx) if with_test else None,
    )
