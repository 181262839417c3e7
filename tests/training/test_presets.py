"""Batch presets on the training device: evaluation is serving's input from the uint8 cache
within quantisation; training augments every image, never flips, and never reads back."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cache import build_cache, quantize
from training.data import deduplicate, load_dicom_folder, load_kaggle
from training.datasets import UnitImageDataset, make_loader
from training.engine import to_input, train_one_epoch
from training.optimisation import make_criterion, make_optimizer
from training.presets import (
    AUGMENTATION_PRESETS,
    EvalBatchPreset,
    TrainBatchPreset,
    to_unit,
)
from worker.preprocess import STD, prepare, standardize

# Half a grey level of the uint8 cache, through the largest 1/std (and float32 rounding).
QUANTISATION = 0.5 / 255 / min(STD) + 1e-6
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _left_bright(n: int = 8, size: int = 64) -> torch.Tensor:
    image = torch.full((n, size, size), 51, dtype=torch.uint8)  # 0.2
    image[:, :, : size // 2] = 204  # 0.8
    return image


def _device_inputs(images: np.ndarray, device: torch.device) -> np.ndarray:
    """The network's input as training and validation build it: the uint8 cache through the
    loader (pinned on CUDA), copied to ``device``, standardised there."""
    loader = make_loader(
        UnitImageDataset(images, np.zeros(len(images))),
        batch_size=4,
        train=False,
        pin_memory=device.type == "cuda",
    )
    preset = EvalBatchPreset(channels_last=True)
    batches = [to_input(x, device, preset).float().cpu() for x, _ in loader]
    assert all(b.dtype == torch.float32 for b in batches)
    return torch.cat(batches).numpy()


def _files(kaggle_dir: Path, study_dir: Path) -> list:
    jpegs, _ = deduplicate(load_kaggle(kaggle_dir).records)
    return jpegs[:3] + load_dicom_folder(study_dir).records[:5]  # CR and DX, several syntaxes


def test_device_input_from_the_uint8_cache_is_prepare_within_quantisation(
    kaggle_dir: Path, synthetic_study_dir: Path, tmp_path: Path
):
    """JPEG and DICOM files through the cache (uint8), the loader and the on-device
    standardisation: serving's prepare() input within half a grey level, and exactly
    worker.preprocess.standardize of the dequantised row."""
    records = _files(kaggle_dir, synthetic_study_dir)
    size = 48
    cache = build_cache(records, size, tmp_path, progress=False)
    assert cache.dtype == np.uint8 and cache.shape == (len(records), size, size)
    got = _device_inputs(cache, CPU)
    assert got.shape == (len(records), 3, size, size)
    for row, record, built in zip(cache, records, got, strict=True):
        served = prepare(record.path, size)
        np.testing.assert_array_equal(row, quantize(served.unit))
        np.testing.assert_allclose(built, served.input, rtol=0, atol=QUANTISATION)
        np.testing.assert_array_equal(built, standardize(row.astype(np.float32) / 255))
    assert np.abs(got - np.stack([prepare(r.path, size).input for r in records])).max() > 0


def test_eval_preset_takes_uint8_or_unit_floats_and_refuses_other_shapes():
    units = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    floats = EvalBatchPreset(channels_last=False)(torch.from_numpy(units))
    assert floats.is_contiguous()
    np.testing.assert_array_equal(floats.numpy(), np.stack([standardize(u) for u in units]))
    out = EvalBatchPreset()(torch.from_numpy(quantize(units)))
    assert out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        to_unit(torch.zeros(2, 3, 16, 16))
    with pytest.raises(TypeError, match="uint8 or floating"):
        to_unit(torch.zeros(2, 16, 16, dtype=torch.int32))


def test_train_preset_has_no_flip_and_keeps_left_on_the_left():
    preset = TrainBatchPreset.preset("published", 64, generator=torch.Generator().manual_seed(0))
    assert "Flip" not in repr(preset)
    for _ in range(40):
        out = preset(_left_bright())
        assert out.shape == (8, 3, 64, 64) and out.dtype == torch.float32
        # A crop (down to 8% of the area) may fall inside one half: then it is uniform.
        left, right = out[:, 0, :, :24].mean(dim=(1, 2)), out[:, 0, :, 40:].mean(dim=(1, 2))
        assert bool((left >= right - 1e-4).all())


def test_train_preset_augments_each_image_within_the_input_range():
    generator = torch.Generator().manual_seed(1)
    preset = TrainBatchPreset.preset("light", 48, generator=generator)
    image = quantize(np.random.default_rng(0).random((1, 64, 64)))
    images = torch.from_numpy(image).repeat(6, 1, 1)
    out = preset(images)
    assert out.shape == (6, 3, 48, 48)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(out[0], out[1])  # each image its own parameters
    low, high = standardize(np.zeros((1, 1))), standardize(np.ones((1, 1)))
    assert bool((out >= torch.from_numpy(low).view(1, 3, 1, 1) - 1e-5).all())
    assert bool((out <= torch.from_numpy(high).view(1, 3, 1, 1) + 1e-5).all())
    again = TrainBatchPreset.preset("light", 48, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again(images), out, rtol=0, atol=0)  # seeded: reproducible


def test_crops_follow_the_published_preset():
    """RandomResizedCrop scale 0.08-1 and aspect 3/4-4/3, always inside the image, drawn as
    torchvision's RandomResizedCrop draws them (its own draws are the reference)."""
    from torchvision.transforms import v2

    preset = TrainBatchPreset.preset("published", 224, generator=torch.Generator().manual_seed(2))
    box = preset.crop_boxes(20000, 224, 224, torch.empty(0))
    cx, cy, w, h = box.unbind(1)
    area, aspect = w * h, w / h
    scale, ratio = AUGMENTATION_PRESETS["published"]["scale"], (3 / 4, 4 / 3)
    assert float(area.min()) >= scale[0] - 1e-6 and float(area.max()) <= 1 + 1e-6
    assert float(aspect.min()) >= ratio[0] - 1e-5 and float(aspect.max()) <= ratio[1] + 1e-5
    assert float((cx.abs() + w).max()) <= 1 + 1e-6 and float((cy.abs() + h).max()) <= 1 + 1e-6
    torch.manual_seed(2)
    reference = []
    for _ in range(4000):
        _, _, height, width = v2.RandomResizedCrop.get_params(
            torch.empty(1, 224, 224), list(scale), list(ratio)
        )
        reference.append(height * width / 224**2)
    for q in (0.1, 0.5, 0.9):
        expected = float(np.quantile(reference, q))
        assert math.isclose(float(area.quantile(q)), expected, abs_tol=0.03), q


def test_identity_parameters_give_the_eval_input():
    preset = TrainBatchPreset(
        crop_size=32, scale=(1, 1), ratio=(1, 1), rotation=0, brightness=0, contrast=0
    )
    images = torch.from_numpy(quantize(np.random.default_rng(3).random((4, 32, 32))))
    torch.testing.assert_close(preset(images), EvalBatchPreset()(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(AUGMENTATION_PRESETS))
def test_presets_run_on_the_meta_device(name):
    """A GPU's batch on the CPU: the presets run on any device and never read a value back
    (on ``meta`` any host read raises)."""
    meta = torch.device("meta")
    images = torch.empty((4, 64, 64), dtype=torch.uint8, device=meta)
    for preset in (TrainBatchPreset.preset(name, 64), EvalBatchPreset()):
        out = preset(images)
        assert out.device == meta and out.shape == (4, 3, 64, 64) and out.dtype == torch.float32


def test_an_epoch_on_the_meta_device_augments_there():
    meta = torch.device("meta")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 1),
    ).to(meta)  # fmt: skip
    optimizer = make_optimizer(model, 1e-3, 0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=2)
    batches = [(_left_bright(4, 32), torch.tensor([0.0, 1.0, 0.0, 1.0])) for _ in range(2)]
    stats = train_one_epoch(
        model, make_criterion(2.0, meta), optimizer, scheduler, batches, meta, 0,
        transform=TrainBatchPreset.preset("published", 32), channels_last=True, progress=False,
    )  # fmt: skip
    assert stats.images == 8 and stats.loss.device == meta


@pytest.mark.gpu
@needs_cuda
def test_cuda_input_from_the_cache_is_the_cpu_input(kaggle_dir, synthetic_study_dir, tmp_path):
    records = _files(kaggle_dir, synthetic_study_dir)
    cache = build_cache(records, 48, tmp_path, progress=False)
    cuda = _device_inputs(cache, torch.device("cuda"))
    np.testing.assert_allclose(cuda, _device_inputs(cache, CPU), rtol=0, atol=1e-6)
    for built, record in zip(cuda, records, strict=True):
        np.testing.assert_allclose(built, prepare(record.path, 48).input, atol=QUANTISATION)


@pytest.mark.gpu
@needs_cuda
def test_cuda_epoch_with_bf16_and_channels_last_never_syncs_the_host():
    """uint8 batches, pinned and copied without blocking, augmented on the GPU, bf16
    autocast, channels_last: no step synchronises with the host (CUDA's sync debug mode
    turns any synchronising call into an error)."""
    cuda = torch.device("cuda")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 1),
    ).to(cuda).to(memory_format=torch.channels_last)  # fmt: skip
    images = quantize(np.random.default_rng(0).random((64, 64, 64)))
    loader = make_loader(
        UnitImageDataset(images, np.arange(64) % 2), batch_size=16, train=True, pin_memory=True
    )
    optimizer = make_optimizer(model, 1e-3, 1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=8)
    epoch = partial(
        train_one_epoch,
        model,
        make_criterion(2.0, cuda),
        optimizer,
        scheduler,
        loader,
        cuda,
        amp_dtype=torch.bfloat16,
        channels_last=True,
        transform=TrainBatchPreset.preset("published", 64),
        progress=False,
    )
    epoch(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = epoch(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert stats.images == 64 and math.isfinite(float(stats.loss))
