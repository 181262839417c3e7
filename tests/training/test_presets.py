"""Training and evaluation transforms: evaluation is serving's; training never flips."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from training.presets import ClassificationPresetEval, ClassificationPresetTrain
from worker.preprocess import PixelTransform, preprocess, standardize, to_unit_image

FLIPS = (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)


def _left_bright(size: int = 64) -> np.ndarray:
    image = np.full((size, size), 0.2, dtype=np.float32)
    image[:, : size // 2] = 0.8
    return image


def test_train_pipeline_has_no_flip_and_keeps_left_on_the_left():
    preset = ClassificationPresetTrain(crop_size=64)
    assert not any(isinstance(t, FLIPS) for t in preset.transforms.transforms)
    assert "Flip" not in repr(preset)
    torch.manual_seed(0)
    image = _left_bright()
    for _ in range(300):
        out = preset(image)
        assert out.shape == (3, 64, 64)
        assert out[0, :, :24].mean() > out[0, :, 40:].mean()


def test_train_pipeline_augments():
    preset = ClassificationPresetTrain(crop_size=48)
    torch.manual_seed(1)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    outs = [preset(image) for _ in range(4)]
    assert outs[0].shape == (3, 48, 48)
    assert not torch.equal(outs[0], outs[1])


def test_eval_pipeline_is_serving_preprocessing():
    gray = (np.random.default_rng(2).random((90, 70)) * 255).astype(np.uint8)
    unit = to_unit_image(gray, PixelTransform(), 64)
    out = ClassificationPresetEval()(unit)
    np.testing.assert_array_equal(out.numpy(), preprocess(gray, 64))
    np.testing.assert_array_equal(out.numpy(), standardize(unit))
