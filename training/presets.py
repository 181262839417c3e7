"""Transforms from a cached [0, 1] image to the network's input, for training and evaluation.

Both start from the output of :func:`worker.preprocess.to_unit_image` (the gray, square,
[0, 1] image serving computes) and end with :func:`worker.preprocess.standardize`, so the
evaluation transform is exactly serving's preprocessing. Training adds RandomResizedCrop, a
small rotation and brightness/contrast jitter, and never a horizontal flip: left and right
matter in a chest radiograph (the heart is on the patient's left).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from worker.preprocess import standardize

logger = logging.getLogger(__name__)

# The augmentation presets `cxr-triage train --augment` offers. "published": the recipe of the
# strongest published results on the Kaggle pneumonia set (ImageNet-style RandomResizedCrop
# with scale 0.08-1 plus intensity jitter; never a horizontal flip: the heart is on the
# patient's left). "light": small crops and a few degrees of rotation, for tiny or synthetic
# data sets where the strong crops would hide the finding too often.
AUGMENTATION_PRESETS: dict[str, dict[str, Any]] = {
    "published": {
        "scale": (0.08, 1.0),
        "ratio": (3 / 4, 4 / 3),
        "rotation": 0.0,
        "brightness": 0.3,
        "contrast": 0.3,
    },
    "light": {
        "scale": (0.75, 1.0),
        "ratio": (0.9, 1.1),
        "rotation": 7.0,
        "brightness": 0.15,
        "contrast": 0.15,
    },
}


def _as_tensor(unit: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(unit, dtype=np.float32))  # a copy: memmaps are read-only
    if tensor.ndim != 2:
        raise ValueError(f"unit must be a 2-D image, got shape {tuple(tensor.shape)}")
    return tensor[None]


class ClassificationPresetTrain:
    """Augment a (H, W) [0, 1] image and standardise it to (3, size, size).

    Parameters
    ----------
    crop_size
        Output side in pixels.
    scale, ratio
        RandomResizedCrop's area and aspect ranges; close to 1 because a radiograph's
        framing varies little.
    rotation
        Maximum rotation in degrees (black fill, like serving's padding).
    brightness, contrast
        Jitter factors.

    Raises
    ------
    ValueError
        ``crop_size`` is not positive, or a range is inverted.
    """

    def __init__(
        self,
        *,
        crop_size: int,
        scale: tuple[float, float] = (0.75, 1.0),
        ratio: tuple[float, float] = (0.9, 1.1),
        rotation: float = 7.0,
        brightness: float = 0.15,
        contrast: float = 0.15,
    ) -> None:
        if crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be an increasing pair within (0, 1], got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be an increasing positive pair, got {ratio}")
        self.crop_size = crop_size
        self.transforms = v2.Compose(
            [
                v2.RandomResizedCrop(crop_size, scale=scale, ratio=ratio, antialias=True),
                v2.RandomRotation(rotation, fill=0.0),
                v2.ColorJitter(brightness=brightness, contrast=contrast),
            ]
        )

    def __call__(self, unit: np.ndarray | torch.Tensor) -> torch.Tensor:
        augmented = self.transforms(_as_tensor(unit)).clamp_(0.0, 1.0)
        return torch.from_numpy(standardize(augmented[0].numpy()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"

    @classmethod
    def preset(cls, name: str, crop_size: int) -> ClassificationPresetTrain:
        """The named preset of :data:`AUGMENTATION_PRESETS`.

        Raises
        ------
        ValueError
            ``name`` is not a preset.
        """
        if name not in AUGMENTATION_PRESETS:
            raise ValueError(f"augmentation preset must be one of {sorted(AUGMENTATION_PRESETS)}")
        return cls(crop_size=crop_size, **AUGMENTATION_PRESETS[name])


class ClassificationPresetEval:
    """Standardise a (H, W) [0, 1] image to (3, H, W): serving's last step, nothing else."""

    def __call__(self, unit: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(standardize(_as_tensor(unit)[0].numpy()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(standardize)"
