"""Torch datasets over cached [0, 1] images, and the data loaders that feed the training loop.

Images are decoded and reduced once (:mod:`training.cache`) to what
:func:`worker.preprocess.to_unit_image` gives, so an epoch reads arrays instead of decoding
JPEG or DICOM files, and the GPU is not starved by decoding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

Transform = Callable[[np.ndarray], torch.Tensor]


class UnitImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(input, label) pairs from (N, H, W) [0, 1] images (an array or a memmap).

    Parameters
    ----------
    images
        All cached images; ``indices`` selects this dataset's rows.
    labels
        0/1 per image (all of ``images``).
    transform
        A preset from :mod:`training.presets`.
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
        transform: Transform,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if images.ndim != 3:
            raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"labels has {len(labels)} entries for {len(images)} images")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.float32)
        self.transform = transform
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[item])
        image = np.array(self.images[row], dtype=np.float32)  # copy out of a memmap
        return self.transform(image), torch.tensor(self.labels[row])

    @property
    def targets(self) -> np.ndarray:
        return self.labels[self.indices]


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
    )
