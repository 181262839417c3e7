"""Grad-CAM of the image that decided a study's score, handed to the results package as arrays.

Grad-CAM (Selvaraju et al., 2017) on the last residual stage (``layer4``) of the exported
ResNet-50: the channel weights are the spatially averaged gradients of the logit, the map is the
ReLU of the weighted sum, upsampled to the input. A model without ResNet stages falls back to the
input gradient (vanilla saliency). The model file is loaded unfrozen (the serving copy is frozen
and optimised for inference, which drops what autograd needs) and cached per version.

What leaves this module is an ``.npz`` per study and model version (no patient identifiers):

- ``overlay``: the scored image at :data:`DISPLAY_SIZE` px (the serving preprocessing's geometry,
  so the map lines up) blended with the heatmap, RGB uint8;
- ``heatmap``: the map in [0, 1] at the same size, float16;
- ``sop_instance_uid``: the source image.

The results package turns ``overlay`` into the Secondary Capture (with its caption burned in);
the web shows ``overlay.png`` written beside it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance.db import Store
from governance.models import ImageInference, Instance, ModelVersion, Study, StudyInference
from worker.preprocess import decode, pixel_transform, standardize, to_unit_image

logger = logging.getLogger(__name__)

DISPLAY_SIZE = 512
ALPHA = 0.4
_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

_modules: dict[str, Any] = {}
_lock = threading.Lock()


def grad_cam(module: Any, tensor: np.ndarray) -> np.ndarray:
    """The Grad-CAM map in [0, 1] of one standardised image (3, H, W), at (H, W).

    Raises
    ------
    ValueError
        ``tensor`` is not a (3, H, W) array.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"tensor must have shape (3, H, W), got {tensor.shape}")
    x = torch.from_numpy(np.ascontiguousarray(tensor, dtype=np.float32))[None]
    height, width = tensor.shape[1:]
    with torch.enable_grad():
        if all(hasattr(module, name) for name in (*_RESNET_STAGES, "avgpool", "fc")):
            features = x
            for name in _RESNET_STAGES:
                features = getattr(module, name)(features)
            features.retain_grad()
            logit = module.fc(torch.flatten(module.avgpool(features), 1)).sum()
            logit.backward()
            assert features.grad is not None
            weights = features.grad.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * features).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
            result = cam[0, 0].detach().numpy()
        else:
            x.requires_grad_(True)
            module(x).sum().backward()
            assert x.grad is not None
            result = x.grad[0].abs().amax(dim=0).numpy()
    low, high = float(result.min()), float(result.max())
    if high - low < 1e-12:
        return np.zeros((height, width), dtype=np.float32)
    return ((result - low) / (high - low)).astype(np.float32)


def colorize(unit: np.ndarray, heatmap: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Blend a gray image and a heatmap (both (H, W) in [0, 1]) into RGB uint8 (jet-like)."""
    if unit.shape != heatmap.shape or unit.ndim != 2:
        raise ValueError(f"unit {unit.shape} and heatmap {heatmap.shape} must be equal 2-D shapes")
    h = np.clip(heatmap, 0.0, 1.0)
    color = np.stack(
        [
            np.clip(1.5 - np.abs(4 * h - 3), 0, 1),
            np.clip(1.5 - np.abs(4 * h - 2), 0, 1),
            np.clip(1.5 - np.abs(4 * h - 1), 0, 1),
        ],
        axis=-1,
    )
    gray = np.repeat(np.clip(unit, 0, 1)[..., None], 3, axis=-1)
    weight = alpha * h[..., None]  # where the map is cold the radiograph shows through
    return np.round(255 * ((1 - weight) * gray + weight * color)).astype(np.uint8)


def _module(model: ModelVersion) -> Any:
    import torch

    from worker.model import load_scripted

    with _lock:
        if model.version not in _modules:
            _modules.clear()  # one version at a time: the active one
            _modules[model.version] = load_scripted(
                model.path, model.sha256, torch.device("cpu"), model.input_size
            )
        return _modules[model.version]


def compute_study_heatmap(store: Store, settings: Settings, study_uid: str) -> Path | None:
    """Grad-CAM of the study's highest-scoring image by its current model; the ``.npz`` path.

    None when the study has no scored image. Idempotent: an existing file is kept.
    """
    with store.read() as session:
        row = session.execute(
            select(Instance.path, Instance.sop_instance_uid, ModelVersion)
            .join(ImageInference, ImageInference.instance_id == Instance.id)
            .join(Study, Study.id == Instance.study_id)
            .join(StudyInference, StudyInference.id == Study.result_id)
            .join(ModelVersion, ModelVersion.id == StudyInference.model_version_id)
            .where(
                Study.study_instance_uid == study_uid,
                ImageInference.model_version_id == StudyInference.model_version_id,
                ImageInference.probability.is_not(None),
            )
            .order_by(ImageInference.probability.desc())
            .limit(1)
        ).first()
        if row is None:
            return None
        path, sop_uid, model = row
        session.expunge(model)
    out = settings.heatmap_file(study_uid, model.version)
    if out.exists():
        return out
    ds = pydicom.dcmread(path)
    transform = pixel_transform(ds)
    pixels = decode(ds)
    cam = grad_cam(_module(model), standardize(to_unit_image(pixels, transform, model.input_size)))
    display = to_unit_image(pixels, transform, DISPLAY_SIZE)
    heatmap = np.asarray(
        Image.fromarray(cam).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.BILINEAR)
    )
    overlay = colorize(display, heatmap)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.npz")
    np.savez_compressed(
        partial, overlay=overlay, heatmap=heatmap.astype(np.float16), sop_instance_uid=sop_uid
    )
    Image.fromarray(overlay).save(out.with_suffix(".png"))
    partial.replace(out)
    logger.info("study %s: heatmap of %s by model %s", study_uid, sop_uid, model.version)
    return out
