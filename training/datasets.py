"""Torch datasets over cached images, and the data loaders that feed the training loop.

Images are decoded and reduced once (:mod:`training.cache`) to serving's [0, 1] image,
quantised to uint8, so an epoch reads small arrays instead of decoding JPEG or DICOM files.
A dataset hands back the cached rows as they are (uint8, one channel): augmentation and
standardisation happen on whole batches on the training device (:mod:`training.presets`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

MAX_WORKERS = 8


def default_workers() -> int:
    """Loader processes for this machine: the CPUs this process may run on, less one for the
    training loop, at most :data:`MAX_WORKERS` (a cached uint8 row costs little to fetch)."""
    return max(0, min(MAX_WORKERS, len(os.sched_getaffinity(0)) - 1))


class UnitImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image, label) pairs from (N, H, W) cached images (an array or a memmap), unchanged:
    uint8 rows (or [0, 1] floats) of shape (H, W), for a batch preset of
    :mod:`training.presets` to turn into the network's input on the device.

    Parameters
    ----------
    images
        All cached images; ``indices`` selects this dataset's rows.
    labels
        0/1 per image (all of ``images``).
    indices
        Rows of ``images`` in this dataset; all when omitted.

    Raises
    ------
    ValueError
        ``images`` is not 3-D, or ``labels`` does not match it.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if images.ndim != 3:
            raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"labels has {len(labels)} entries for {len(images)} images")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.float32)
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[item])
        image = np.array(self.images[row])  # a copy out of the (read-only) memmap
        return torch.from_numpy(image), torch.tensor(self.labels[row])

    def __getitems__(self, items: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one read (the DataLoader asks for it so, then
        :func:`keep_batch` passes it on): about 30 times faster than item by item."""
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        return torch.from_numpy(self.images[rows]), torch.from_numpy(self.labels[rows])

    @property
    def targets(self) -> np.ndarray:
        return self.labels[self.indices]


class ServedImageDataset(UnitImageDataset):
    """(image, label) pairs as serving makes them: each image with a file is read again through
    :func:`worker.preprocess.prepare` (its [0, 1] float32 image, not the uint8 cache row), so
    the scores that set the temperature and every tau are the deployed model's on serving's own
    input; an image without a file (synthetic: defined by its uint8 row) is its row / 255.

    Parameters
    ----------
    images, labels, indices
        As for :class:`UnitImageDataset`.
    paths
        The file of each image of ``images`` (None where there is none).
    size
        The model's input size.

    Raises
    ------
    ValueError
        As for :class:`UnitImageDataset`, or ``paths`` does not match ``images``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        paths: Sequence[Path | None],
        size: int,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        super().__init__(images, labels, indices)
        if len(paths) != len(images):
            raise ValueError(f"paths has {len(paths)} entries for {len(images)} images")
        self.paths = list(paths)
        self.size = size

    def _unit(self, row: int) -> np.ndarray:
        from worker.preprocess import prepare

        path = self.paths[row]
        if path is None:
            return np.asarray(self.images[row], dtype=np.float32) / np.float32(255)
        return prepare(path, self.size).unit.astype(np.float32, copy=False)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[item])
        return torch.from_numpy(self._unit(row)), torch.tensor(self.labels[row])

    def __getitems__(self, items: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        units = np.stack([self._unit(int(row)) for row in rows])
        return torch.from_numpy(units), torch.from_numpy(self.labels[rows])


def keep_batch(batch: Any) -> Any:
    """The collate function for a dataset that reads whole batches (``__getitems__``)."""
    return batch


def make_loader(
    dataset: Dataset[tuple[torch.Tensor, torch.Tensor]],
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A seeded loader: shuffled with dropped last batch for training, in order for evaluation.

    A :class:`UnitImageDataset` is read a batch at a time (uint8 (N, H, W) batches).

    Raises
    ------
    ValueError
        ``batch_size`` is not positive or ``workers`` is negative.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must not be negative, got {workers}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,  # type: ignore[arg-type]
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=generator,
        collate_fn=keep_batch if isinstance(dataset, UnitImageDataset) else None,
    )
