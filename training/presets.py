"""Batch transforms on the training device: cached uint8 images to the network's input.

The cache (:mod:`training.cache`) holds :func:`worker.preprocess.prepare`'s [0, 1] image
quantised to uint8, one channel. The data loader hands back (N, H, W) uint8 batches, a
twelfth of the bytes of 3-channel float32; they are copied to the training device as they
are, and everything else happens there on the whole batch:

* :class:`EvalBatchPreset`: ``x / 255``, then the ImageNet mean and std into three
  channels. For a row ``u8`` this is exactly ``worker.preprocess.standardize(u8 / 255)``
  (the same float32 operations), so validation sees serving's input up to the 8-bit
  quantisation of the cache.
* :class:`TrainBatchPreset`: the same, after a per-image RandomResizedCrop (and rotation)
  done as one affine ``grid_sample`` and brightness/contrast jitter in a random order per
  image, as torchvision's ``RandomResizedCrop``, ``RandomRotation`` and ``ColorJitter`` do
  one image at a time. Never a horizontal flip: the heart is on the patient's left.

Every random parameter is drawn on the device and nothing is read back to the host, so a
training step never waits for the GPU (the transforms run on the ``meta`` device, where any
such read raises). The output is channels_last, the layout autocast convolutions want.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from worker.preprocess import MEAN, STD

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

_MEAN32 = np.array(MEAN, dtype=np.float32)
_STD32 = np.array(STD, dtype=np.float32)
_CROP_TRIES = 10  # as torchvision's RandomResizedCrop.get_params


@functools.cache
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 mean and std on ``device``, copied there once (a copy per step would wait
    for the GPU)."""
    return torch.from_numpy(_MEAN32).to(device), torch.from_numpy(_STD32).to(device)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) cached images to (N, 1, H, W) float32 in [0, 1].

    uint8 is divided by 255 (the cache's quantisation); a floating batch (an fp16 cache,
    synthetic arrays) is taken as [0, 1] values.

    Raises
    ------
    ValueError
        ``images`` is not a batch of one-channel images.
    TypeError
        ``images`` is neither uint8 nor floating point.
    """
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)  # float() made a new tensor: dividing in place is safe
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.float()


def standardize(unit: torch.Tensor, *, channels_last: bool = True) -> torch.Tensor:
    """(N, 1, H, W) [0, 1] images to the network's (N, 3, H, W) float32 input.

    Channel ``c`` is ``(unit - MEAN[c]) / STD[c]`` in float32, the operations of
    :func:`worker.preprocess.standardize`; the channels are broadcast along the last
    dimension, so the channels_last result needs no extra copy.
    """
    mean, std = _constants(unit.device)
    out = (unit[:, 0, :, :, None] - mean).div_(std)  # (N, H, W, 3)
    out = out.permute(0, 3, 1, 2)  # (N, 3, H, W) with channels_last strides
    return out if channels_last else out.contiguous()


class EvalBatchPreset:
    """Cached images to the network's input on their device: serving's last step only."""

    def __init__(self, *, channels_last: bool = True) -> None:
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return standardize(to_unit(images), channels_last=self.channels_last)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(x / 255, ImageNet mean/std, 3 channels)"


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: Any) -> torch.Tensor:
    u = torch.rand(n, device=like.device, generator=generator)
    return u * (high - low) + low


class TrainBatchPreset:
    """Augment a batch of cached images on its device and standardise it.

    Per image: RandomResizedCrop to ``crop_size`` (``scale`` of the area, aspect in
    ``ratio``, drawn as torchvision draws it: up to ten tries, else the whole image), a
    rotation up to ``rotation`` degrees with black corners, then brightness and contrast
    jitter in a random order, clipped to [0, 1]. The crop, the resize and the rotation are
    one bilinear ``grid_sample``; the cache's rows are already at the crop size, so a crop is
    only ever enlarged and needs no antialiasing.

    Parameters
    ----------
    crop_size
        Output side in pixels.
    scale, ratio
        RandomResizedCrop's area and aspect ranges.
    rotation
        Maximum rotation in degrees (0: none).
    brightness, contrast
        Jitter factors, as torchvision's ColorJitter.
    channels_last
        Return a channels_last tensor (the layout autocast convolutions want).
    generator
        A generator on the batches' device; the global one when None.

    Raises
    ------
    ValueError
        ``crop_size`` is not positive, a range is inverted, or a factor is negative.
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
        channels_last: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be an increasing pair within (0, 1], got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be an increasing positive pair, got {ratio}")
        if min(rotation, brightness, contrast) < 0:
            raise ValueError("rotation, brightness and contrast must not be negative")
        self.crop_size = crop_size
        self.scale, self.ratio = scale, ratio
        self.rotation, self.brightness, self.contrast = rotation, brightness, contrast
        self.channels_last = channels_last
        self.generator = generator

    @classmethod
    def preset(cls, name: str, crop_size: int, **kwargs: Any) -> TrainBatchPreset:
        """The named preset of :data:`AUGMENTATION_PRESETS`.

        Raises
        ------
        ValueError
            ``name`` is not a preset.
        """
        if name not in AUGMENTATION_PRESETS:
            raise ValueError(f"augmentation preset must be one of {sorted(AUGMENTATION_PRESETS)}")
        return cls(crop_size=crop_size, **AUGMENTATION_PRESETS[name], **kwargs)

    def crop_boxes(self, n: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """(n, 4) crops as (centre x, centre y, half width, half height) in grid_sample's
        normalised coordinates ([-1, 1] is the whole image), drawn on ``like``'s device."""
        g = self.generator
        tries = (n, _CROP_TRIES)
        area = torch.rand(tries, device=like.device, generator=g)
        area = area * (self.scale[1] - self.scale[0]) + self.scale[0]
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(
            torch.rand(tries, device=like.device, generator=g) * (log_high - log_low) + log_low
        )
        # Fractions of the sides: w = sqrt(area * H * W * aspect) pixels, over W.
        frac_w = torch.sqrt(area * aspect * (height / width))
        frac_h = torch.sqrt(area / aspect * (width / height))
        fits = (frac_w <= 1) & (frac_h <= 1)
        first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits (or try 0)
        any_fit = fits.any(dim=1)
        one = torch.ones((), device=like.device)
        frac_w = torch.where(any_fit, frac_w.gather(1, first)[:, 0], one)
        frac_h = torch.where(any_fit, frac_h.gather(1, first)[:, 0], one)
        centre = torch.rand((n, 2), device=like.device, generator=g) * 2 - 1
        cx = centre[:, 0] * (1 - frac_w)
        cy = centre[:, 1] * (1 - frac_h)
        return torch.stack([cx, cy, frac_w, frac_h], dim=1)

    def crop(self, unit: torch.Tensor) -> torch.Tensor:
        """RandomResizedCrop (and rotation) of (N, 1, H, W) [0, 1] images, one grid_sample."""
        n, _, height, width = unit.shape
        box = self.crop_boxes(n, height, width, unit)
        angle = _uniform(n, -self.rotation, self.rotation, unit, self.generator)
        angle = angle * (math.pi / 180)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output -> input: rotate in the (square) output, then map the output square onto the
        # crop box: x_in = cx + w (cos x - sin y), y_in = cy + h (sin x + cos y).
        theta = torch.stack(
            [
                torch.stack([box[:, 2] * cos, -box[:, 2] * sin, box[:, 0]], dim=1),
                torch.stack([box[:, 3] * sin, box[:, 3] * cos, box[:, 1]], dim=1),
            ],
            dim=1,
        )
        size = (n, 1, self.crop_size, self.crop_size)
        grid = F.affine_grid(theta, list(size), align_corners=False)
        # The box lies inside the image; "border" keeps the half pixel at its edges from
        # blending with black, as a resize of the cropped pixels does.
        out = F.grid_sample(unit, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.rotation > 0:
            # Black outside the rotated crop, as RandomRotation(fill=0) after the crop.
            rotated = F.affine_grid(
                torch.stack(
                    [
                        torch.stack([cos, -sin, torch.zeros_like(cos)], dim=1),
                        torch.stack([sin, cos, torch.zeros_like(cos)], dim=1),
                    ],
                    dim=1,
                ),
                list(size),
                align_corners=False,
            )
            inside = (rotated.abs() <= 1).all(dim=-1)
            out = out * inside.unsqueeze(1)
        return out

    def jitter(self, unit: torch.Tensor) -> torch.Tensor:
        """Brightness and contrast jitter (ColorJitter's formulas), in a random order per
        image, on (N, 1, H, W) [0, 1] images."""
        n = unit.shape[0]
        g = self.generator
        shape = (n, 1, 1, 1)
        bright = _uniform(n, max(0.0, 1 - self.brightness), 1 + self.brightness, unit, g)
        contrast = _uniform(n, max(0.0, 1 - self.contrast), 1 + self.contrast, unit, g)
        bright, contrast = bright.view(shape), contrast.view(shape)

        def adjust_brightness(x: torch.Tensor) -> torch.Tensor:
            return (x * bright).clamp_(0.0, 1.0)

        def adjust_contrast(x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x * contrast).add_((1 - contrast) * mean).clamp_(0.0, 1.0)

        brightness_first = torch.rand(shape, device=unit.device, generator=g) < 0.5
        return torch.where(
            brightness_first,
            adjust_contrast(adjust_brightness(unit)),
            adjust_brightness(adjust_contrast(unit)),
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        augmented = self.jitter(self.crop(to_unit(images)))  # jitter clips to [0, 1]
        return standardize(augmented, channels_last=self.channels_last)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, scale={self.scale}, "
            f"ratio={self.ratio}, rotation={self.rotation}, brightness={self.brightness}, "
            f"contrast={self.contrast})"
        )
