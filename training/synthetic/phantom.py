"""Synthetic chest radiographs: pure numpy generators of presentation values.

Every function takes an explicit :class:`numpy.random.Generator` and returns float32 values in
[0, 1] with bright = dense (bone, heart, consolidation), as a radiologist sees a MONOCHROME2
image. Geometry works in normalised coordinates, y and x in [-1, 1] from the top left, so one
anatomy renders at any size. In a frontal (PA/AP) image the patient's right is on the image's
left, so the heart shadow bulges to the image's right.

The positive class adds one to three irregular, blurry opacities inside a lung field
(:func:`consolidation`). Overall exposure, contrast and gamma vary for both classes, so the
global brightness of an image says little about its label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Anatomy:
    """Per-patient shape parameters shared by the frontal and the lateral view."""

    body_width: float
    lung_width: float
    lung_height: float
    lung_center_y: float
    diaphragm_y: float
    heart_size: float
    rib_spacing: float
    soft_tissue: float
    lung_air: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's shape parameters."""
    return Anatomy(
        body_width=float(rng.uniform(0.80, 0.95)),
        lung_width=float(rng.uniform(0.25, 0.31)),
        lung_height=float(rng.uniform(0.56, 0.66)),
        lung_center_y=float(rng.uniform(-0.10, 0.0)),
        diaphragm_y=float(rng.uniform(0.40, 0.52)),
        heart_size=float(rng.uniform(0.22, 0.30)),
        rib_spacing=float(rng.uniform(0.12, 0.145)),
        soft_tissue=float(rng.uniform(0.42, 0.55)),
        lung_air=float(rng.uniform(0.24, 0.32)),
    )


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    height, width = shape
    if height < 8 or width < 8:
        raise ValueError(f"shape must be at least 8x8, got {shape}")
    y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    # Keep anatomy round on non-square images: x is scaled by the aspect ratio.
    return y, x * np.float32(width / height)


def _soft(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """A soft mask: 1 inside (positive distance), 0 outside, a logistic edge of width ``edge``."""
    return (1.0 / (1.0 + np.exp(-np.clip(signed_distance / edge, -30, 30)))).astype(np.float32)


def _ellipse(
    y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float, edge: float
) -> np.ndarray:
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    return _soft(1.0 - r, edge)


def _band(distance: np.ndarray, thickness: float, edge: float) -> np.ndarray:
    return _soft(thickness / 2 - np.abs(distance), edge)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance noise smoothed over ``scale`` of the image height."""
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=scale * shape[0])
    std = float(field.std())
    return field / std if std > 0 else field


def lung_masks(shape: tuple[int, int], anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks of the image-left and image-right lung fields of a frontal view."""
    y, x = _grid(shape)
    edge = 0.025
    masks = []
    for side in (-1.0, 1.0):
        cx = side * (anatomy.lung_width + 0.12)
        field = _ellipse(
            y, x, anatomy.lung_center_y, cx, anatomy.lung_height, anatomy.lung_width, edge
        )
        # Diaphragm dome: highest under the lung's centre, lower at the costophrenic angle.
        dome = (
            anatomy.diaphragm_y
            + (0.0 if side < 0 else 0.04)
            + 0.22 * ((x - cx) / anatomy.lung_width) ** 2
        )
        field = field * _soft(dome - y, edge)
        field = field * _soft(np.abs(x) - 0.1, edge)  # medial edge at the mediastinum
        masks.append(field)
    heart = _heart(y, x, anatomy)
    return masks[0] * (1.0 - 0.9 * heart), masks[1] * (1.0 - 0.9 * heart)


def _heart(y: np.ndarray, x: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    return _ellipse(
        y,
        x,
        anatomy.diaphragm_y - 0.2,
        0.13,
        anatomy.heart_size * 0.9,
        anatomy.heart_size * 1.25,
        0.03,
    )


def _ribs(y: np.ndarray, x: np.ndarray, anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Posterior ribs: bands that leave the spine and curve outward and down over the lungs."""
    ribs = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=np.float32)
    u = np.maximum(np.abs(x) - 0.06, 0.0)
    for k in range(10):
        y0 = -0.78 + k * anatomy.rib_spacing + float(rng.normal(0, 0.01))
        curve = y0 - 0.25 * u + 0.85 * u**2
        thickness = 0.035 + 0.004 * k
        ribs = np.maximum(ribs, _band(y - curve, thickness, 0.01))
    reach = _soft(anatomy.body_width * 0.9 - np.abs(x), 0.03)
    return ribs * reach * _soft(anatomy.diaphragm_y + 0.12 - y, 0.05)


def frontal_radiograph(
    rng: np.random.Generator,
    shape: tuple[int, int] = (512, 512),
    *,
    anatomy: Anatomy | None = None,
    clavicles: bool = True,
) -> np.ndarray:
    """A frontal (PA/AP) chest radiograph without findings, float32 in [0, 1], bright = dense.

    Parameters
    ----------
    rng
        The random generator; the same state gives the same image.
    shape
        (rows, columns), at least 8x8.
    anatomy
        The patient's shape; drawn from ``rng`` when omitted.
    clavicles
        Draw the clavicles.

    Raises
    ------
    ValueError
        ``shape`` is smaller than 8x8.
    """
    return finish(rng, _frontal_density(rng, shape, anatomy or sample_anatomy(rng), clavicles))


def _frontal_density(
    rng: np.random.Generator, shape: tuple[int, int], anatomy: Anatomy, clavicles: bool
) -> np.ndarray:
    """Density of a frontal view before exposure and noise (see :func:`finish`)."""
    y, x = _grid(shape)
    # Shoulders wider than the waist; a neck above them.
    half_width = anatomy.body_width * (0.92 + 0.08 * np.clip((y + 0.6) / 0.6, 0.0, 1.0))
    body = _soft(half_width - np.abs(x), 0.04) * _soft(y + 0.78, 0.04)
    neck = _soft(0.22 - np.abs(x), 0.03) * _soft(-0.7 - y, 0.03)
    image = 0.05 + anatomy.soft_tissue * np.maximum(body, neck)
    # Abdomen under the diaphragm is a little denser than the chest wall.
    image += 0.06 * body * _soft(y - anatomy.diaphragm_y - 0.1, 0.08)

    left, right = lung_masks(shape, anatomy)
    lungs = left + right
    texture = 0.015 * smooth_noise(rng, shape, 0.005) + 0.02 * smooth_noise(rng, shape, 0.04)
    image -= lungs * (anatomy.lung_air + texture)
    # Mediastinum, spine with vertebral segments, and the heart shadow.
    mediastinum = _soft(0.1 + 0.06 * np.clip(y + 0.3, 0, 1) - np.abs(x), 0.03) * body
    image += 0.08 * mediastinum
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * y / 0.085 + float(rng.uniform(0, 6.3)))
    image += 0.14 * _soft(0.055 - np.abs(x), 0.012) * vertebrae * _soft(y + 0.9, 0.02)
    image += 0.10 * _heart(y, x, anatomy) * body
    image += float(rng.uniform(0.07, 0.12)) * _ribs(y, x, anatomy, rng) * body
    if clavicles:
        for side in (-1.0, 1.0):
            along = np.clip((np.abs(x) - 0.08) / 0.55, 0.0, 1.0)
            curve = -0.62 - 0.12 * along + 0.05 * np.sin(np.pi * along)
            bone = _band(y - curve, 0.04, 0.01) * _soft(0.66 - np.abs(x), 0.02)
            image += 0.12 * bone * _soft(side * x, 0.01) * _soft(np.abs(x) - 0.08, 0.01)
    return image


def lateral_radiograph(
    rng: np.random.Generator,
    shape: tuple[int, int] = (512, 512),
    *,
    anatomy: Anatomy | None = None,
) -> np.ndarray:
    """A left lateral (LL) chest radiograph without findings: anterior on the image's left.

    Raises
    ------
    ValueError
        ``shape`` is smaller than 8x8.
    """
    return finish(rng, _lateral_density(rng, shape, anatomy or sample_anatomy(rng)))


def _lateral_density(
    rng: np.random.Generator, shape: tuple[int, int], anatomy: Anatomy
) -> np.ndarray:
    """Density of a lateral view before exposure and noise."""
    y, x = _grid(shape)
    body = _ellipse(y, x, 0.05, 0.0, 1.15, anatomy.body_width * 0.95, 0.02)
    image = 0.05 + (anatomy.soft_tissue + 0.08) * body
    # The superimposed arms make the upper chest denser.
    image += 0.10 * body * _soft(-0.45 - y, 0.1)
    lung = lateral_lung_mask(shape, anatomy)
    image -= lung * (anatomy.lung_air * 0.8 + 0.02 * smooth_noise(rng, shape, 0.03))
    image += 0.10 * _ellipse(y, x, anatomy.diaphragm_y - 0.12, -0.25, 0.25, 0.3, 0.04)  # heart
    spine_x = anatomy.body_width * 0.55
    vertebrae = 0.7 + 0.3 * np.cos(2 * np.pi * y / 0.09 + float(rng.uniform(0, 6.3)))
    image += 0.16 * _band(x - spine_x - 0.08 * y, 0.14, 0.015) * vertebrae * body
    image += (
        0.10
        * _band(x + anatomy.body_width * 0.78 - 0.05 * y, 0.05, 0.01)
        * _soft(0.3 - np.abs(y + 0.15), 0.05)
    )  # sternum
    return image


def lateral_lung_mask(shape: tuple[int, int], anatomy: Anatomy) -> np.ndarray:
    """Soft mask of the superimposed lungs of a lateral view."""
    y, x = _grid(shape)
    lung = _ellipse(
        y, x, anatomy.lung_center_y, 0.0, anatomy.lung_height, anatomy.body_width * 0.62, 0.03
    )
    dome = anatomy.diaphragm_y + 0.25 * (x / anatomy.body_width) ** 2
    return lung * _soft(dome - y, 0.03)


def consolidation(
    rng: np.random.Generator,
    lung_mask: np.ndarray,
    *,
    n_patches: int | None = None,
    intensity: tuple[float, float] = (0.25, 0.45),
    radius: tuple[float, float] = (0.11, 0.24),
) -> np.ndarray:
    """Additive density of one to three irregular, blurry opacities inside ``lung_mask``.

    Parameters
    ----------
    rng
        The random generator.
    lung_mask
        Soft mask (H, W) in [0, 1] of the lung fields where opacities may lie.
    n_patches
        How many opacities; 1 to 3 at random when omitted.
    intensity
        Range of each opacity's peak added density.
    radius
        Range of each opacity's radius, in normalised units (the image height is 2).

    Raises
    ------
    ValueError
        ``lung_mask`` is not 2-D or holds no lung, or ``n_patches`` is not positive.
    """
    mask = np.asarray(lung_mask, dtype=np.float32)
    if mask.ndim != 2:
        raise ValueError(f"lung_mask must be 2-D, got shape {mask.shape}")
    inside = np.argwhere(mask > 0.9)
    if len(inside) == 0:
        raise ValueError("lung_mask holds no lung (no value above 0.9)")
    count = int(rng.integers(1, 4)) if n_patches is None else n_patches
    if count < 1:
        raise ValueError(f"n_patches must be positive, got {n_patches}")
    y, x = _grid(mask.shape)
    height = mask.shape[0]
    density = np.zeros(mask.shape, dtype=np.float32)
    for _ in range(count):
        row, col = inside[int(rng.integers(len(inside)))]
        cy = -1.0 + 2.0 * row / (height - 1)
        cx = float(x[0, col])
        r = float(rng.uniform(*radius))
        blob = np.zeros(mask.shape, dtype=np.float32)
        # A few overlapping lobules make the outline irregular.
        for _ in range(int(rng.integers(3, 7))):
            oy, ox = rng.normal(0.0, 0.45 * r, size=2)
            s = r * float(rng.uniform(0.45, 0.9))
            blob += np.exp(-(((y - cy - oy) ** 2 + (x - cx - ox) ** 2) / (2 * s * s)))
        blob = np.clip(blob, 0.0, 1.0)
        mottle = 1.0 + 0.12 * smooth_noise(rng, mask.shape, 0.025)
        density = np.maximum(density, float(rng.uniform(*intensity)) * blob * mottle)
    return (gaussian_filter(density, sigma=0.006 * height) * mask).astype(np.float32)


def finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Exposure, contrast, gamma, quantum noise and a little blur; clipped to [0, 1].

    Exposure varies for both classes so that mean brightness does not give the label away.
    """
    height = image.shape[0]
    out = np.asarray(image, dtype=np.float32)
    out = gaussian_filter(out, sigma=max(0.4, 0.0015 * height))
    contrast = float(rng.uniform(0.75, 1.25))
    brightness = float(rng.uniform(-0.12, 0.12))
    out = np.clip((out - 0.3) * contrast + 0.3 + brightness, 0.0, 1.0)
    out = out ** float(rng.uniform(0.7, 1.45))
    out = out + rng.normal(0.0, float(rng.uniform(0.005, 0.02)), size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def frontal_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(rows, columns) of a frontal image: square or portrait (0.85 as wide), at random.

    Detectors are square or portrait; preprocessing must keep the whole field either way.
    """
    return (size, size) if rng.random() < 0.5 else (size, int(round(size * 0.85)))


def chest_radiograph(
    rng: np.random.Generator,
    shape: tuple[int, int] = (512, 512),
    *,
    positive: bool,
    view: str = "PA",
    anatomy: Anatomy | None = None,
) -> np.ndarray:
    """One radiograph of ``view`` (PA, AP or LL), with consolidation when ``positive``.

    The opacity is drawn into the anatomy before exposure and noise, as an X-ray would see it.

    Raises
    ------
    ValueError
        ``view`` is not PA, AP or LL.
    """
    if view not in {"PA", "AP", "LL"}:
        raise ValueError(f"view must be PA, AP or LL, got {view!r}")
    anatomy = anatomy or sample_anatomy(rng)
    if view == "LL":
        density = _lateral_density(rng, shape, anatomy)
        lungs = lateral_lung_mask(shape, anatomy)
    else:
        density = _frontal_density(rng, shape, anatomy, bool(rng.random() < 0.8))
        left, right = lung_masks(shape, anatomy)
        lungs = left if rng.random() < 0.5 else right
        if rng.random() < 0.25:
            lungs = left + right
    if positive:
        density = density + consolidation(rng, lungs)
    return finish(rng, density)
