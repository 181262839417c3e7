"""The reduced-resolution JPEG 2000 decode gives the model the same input as a full decode.

The encoding corpus of test_encoding_equivalence (and a larger image, where the reduce factor
is above 1) is encoded as JPEG 2000 lossless and lossy, decoded through
``decode_for_model`` and compared with the full decode of the same file. The GPU path
(nvImageCodec) is checked for its selection and fallbacks with a stand-in module, and for its
pixels with nvImageCodec's CPU backend where the package is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSLossless

from tests.worker.test_encoding_equivalence import base_image, make_ds
from worker.decoders import (
    FULL,
    NVIMGCODEC,
    _import_nvimgcodec,
    decode_for_model,
    glymur_available,
    gpu_decoder,
    imagecodecs_available,
    reduce_factor,
)
from worker.preprocess import decode, pixel_transform, standardize, to_unit_image

SIZE = 64
needs_glymur = pytest.mark.skipif(not glymur_available(), reason="glymur/libopenjp2 missing")


def _model_input(pixels: np.ndarray, ds: Dataset, size: int) -> np.ndarray:
    return standardize(to_unit_image(pixels, pixel_transform(ds), size))


def _roundtrip(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _compress(ds: Dataset, syntax: str) -> None:
    """Encode ``ds`` in ``syntax``; lossy JPEG 2000 at 80 dB PSNR."""
    if syntax == JPEG2000:
        ds.compress(syntax, j2k_psnr=[80.0], j2k_lossless=False)
    else:
        ds.compress(syntax)


def _large_image(rows: int = 1024, columns: int = 896) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    noise = np.random.default_rng(0).normal(0.0, 0.01, (rows, columns))
    img = (
        0.5
        + 0.3 * np.sin(x / 57.0) * np.cos(y / 83.0)
        + 0.15 * np.exp(-((x - 500) ** 2 + (y - 400) ** 2) / 12000.0)
        + noise
    )
    return np.clip(img, 0.0, 1.0)


def test_reduce_factor_keeps_the_longer_side_at_least_the_input() -> None:
    assert reduce_factor(2048, 2048, 224, 5) == 3  # 256 >= 224, 128 < 224
    assert reduce_factor(2048, 2048, 256, 5) == 3
    assert reduce_factor(2048, 2048, 257, 5) == 2
    assert reduce_factor(2048, 1600, 224, 2) == 2  # capped by the codestream's levels
    assert reduce_factor(100, 80, 224, 5) == 0  # smaller than the input: full resolution
    assert reduce_factor(2048, 2048, 224, 5, margin=2.0) == 2
    with pytest.raises(ValueError):
        reduce_factor(0, 10, 224, 5)


@needs_glymur
@pytest.mark.parametrize(
    ("shape_name", "syntax", "tolerance"),
    [
        ("corpus", JPEG2000Lossless, 0.05),
        ("large", JPEG2000Lossless, 0.3),
        ("large", JPEG2000, 0.3),
    ],
)
@pytest.mark.parametrize("with_window", [True, False], ids=["window", "no-window"])
def test_reduced_j2k_matches_the_full_decode(
    tmp_path: Path, shape_name: str, syntax: str, tolerance: float, with_window: bool
) -> None:
    img = base_image() if shape_name == "corpus" else _large_image()
    v12 = np.round(img * 4095)
    ds = make_ds(v12, bits=12, window=(2048.0, 4096.0) if with_window else None)
    _compress(ds, syntax)
    read = _roundtrip(ds, tmp_path / "image.dcm")
    fast = decode_for_model(read, SIZE)
    assert fast.path.startswith("j2k-r")
    if shape_name == "large":
        assert fast.path == "j2k-r4"  # 1024 / 16 = 64 >= SIZE
    full = _model_input(decode(read), read, SIZE)
    got = _model_input(fast.pixels, read, SIZE)
    # The reduced levels are the wavelet's low-pass band, not the resize's filter: the images
    # agree closely on average; pixel noise (the large image) is filtered a little differently,
    # so single pixels differ more. The benchmark measures the score difference on radiographs.
    mean_diff = float(np.mean(np.abs(got - full)))
    max_diff = float(np.max(np.abs(got - full)))
    print(f"{shape_name} {syntax} window={with_window}: mean {mean_diff:.4f} max {max_diff:.4f}")
    assert mean_diff <= 0.01
    assert max_diff <= tolerance


def test_jpeg_ls_is_decoded_bit_identically(tmp_path: Path) -> None:
    ds = make_ds(np.round(base_image() * 4095), bits=12)
    ds.compress(JPEGLSLossless)
    read = _roundtrip(ds, tmp_path / "ls.dcm")
    fast = decode_for_model(read, SIZE)
    assert fast.path == ("jpegls-ic" if imagecodecs_available() else FULL)
    np.testing.assert_array_equal(fast.pixels, decode(read))


@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmtk's dcmcjpeg is not installed")
def test_lossless_jpeg_is_decoded_bit_identically(tmp_path: Path) -> None:
    plain = tmp_path / "plain.dcm"
    make_ds(np.round(base_image() * 4095), bits=12).save_as(plain, enforce_file_format=True)
    encoded = tmp_path / "sv1.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(plain), str(encoded)], check=True, capture_output=True)
    read = pydicom.dcmread(encoded)
    fast = decode_for_model(read, SIZE)
    assert fast.path == ("ljpeg-ic" if imagecodecs_available() else FULL)
    np.testing.assert_array_equal(fast.pixels, decode(read))


def test_uncompressed_takes_the_full_decode(tmp_path: Path) -> None:
    read = _roundtrip(make_ds(np.round(base_image() * 4095), bits=12), tmp_path / "plain.dcm")
    fast = decode_for_model(read, SIZE)
    assert fast.path == FULL
    np.testing.assert_array_equal(fast.pixels, decode(read))


@needs_glymur
def test_without_glymur_jpeg2000_takes_the_full_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_ds(np.round(base_image() * 4095), bits=12)
    ds.compress(JPEG2000Lossless)
    read = _roundtrip(ds, tmp_path / "j2k.dcm")
    monkeypatch.setattr("worker.decoders.glymur_available", lambda: False)
    fast = decode_for_model(read, SIZE)
    assert fast.path == FULL
    np.testing.assert_array_equal(fast.pixels, decode(read))


@needs_glymur
def test_reduced_j2k_scores_within_2e3_of_the_full_decode(tmp_path: Path, model_file: Path) -> None:
    from governance.registry import sha256_file
    from tests.worker.conftest import INPUT_SIZE
    from worker.inference import ModelSpec, calibrate, load_model, predict_logits

    spec = ModelSpec("t", str(model_file), sha256_file(model_file), INPUT_SIZE)
    model = load_model(spec, device="cpu", precision="fp32")
    full_inputs, fast_inputs = [], []
    for index, (img, syntax) in enumerate(
        [
            (base_image(), JPEG2000Lossless),
            (_large_image(), JPEG2000Lossless),
            (_large_image(), JPEG2000),
        ]
    ):
        ds = make_ds(np.round(img * 4095), bits=12)
        _compress(ds, syntax)
        read = _roundtrip(ds, tmp_path / f"{index}.dcm")
        full_inputs.append(_model_input(decode(read), read, INPUT_SIZE))
        fast = decode_for_model(read, INPUT_SIZE)
        assert fast.path.startswith("j2k-r") and fast.path != "j2k-r0"
        fast_inputs.append(_model_input(fast.pixels, read, INPUT_SIZE))
    full = calibrate(predict_logits(model, np.stack(full_inputs)), 1.0)
    got = calibrate(predict_logits(model, np.stack(fast_inputs)), 1.0)
    assert float(np.max(np.abs(full - got))) <= 2e-3


# --- GPU decoding through nvImageCodec (worker.decoders.gpu_decoder) ------------------------------


def _cpu_nvimgcodec_decoder() -> Any | None:
    """nvImageCodec's CPU-only decoder (the GPU path's glue without a GPU), or None."""
    nvimgcodec = _import_nvimgcodec()
    if nvimgcodec is None:
        return None
    try:
        return nvimgcodec.Decoder(
            device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
            backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)],
        )
    except Exception:
        return None


needs_nvimgcodec = pytest.mark.skipif(
    _import_nvimgcodec() is None,
    reason="nvidia-nvimgcodec-cu13 (the `gpu` extra) is not installed",
)


class FakeNvimgcodec:
    """Stands in for ``nvidia.nvimgcodec``: its decoder answers with ``answer(codestream)``.

    ``answer`` returns an array (decoded), None (nvImageCodec's failure) or raises.
    """

    def __init__(self, answer: Callable[[bytes], np.ndarray | None], precision: int = 12) -> None:
        self.answer = answer
        self.precision = precision
        self.decoders_made = 0
        self.ColorSpec = SimpleNamespace(UNCHANGED="unchanged")
        self.BackendKind = SimpleNamespace(GPU_ONLY="gpu")

    def Backend(self, kind: str) -> str:  # noqa: N802 (nvImageCodec's names)
        return kind

    def DecodeParams(self, **kwargs: Any) -> dict[str, Any]:  # noqa: N802
        return kwargs

    def CodeStream(self, data: bytes) -> SimpleNamespace:  # noqa: N802
        rows, columns = self.shape
        return SimpleNamespace(
            data=data, num_channels=1, height=rows, width=columns, precision=self.precision
        )

    def Decoder(self, **kwargs: Any) -> SimpleNamespace:  # noqa: N802
        self.decoders_made += 1

        def decode(code: SimpleNamespace, params: Any = None) -> Any:
            pixels = self.answer(code.data)
            return None if pixels is None else SimpleNamespace(cpu=lambda: pixels)

        return SimpleNamespace(decode=decode)

    shape: tuple[int, int] = (0, 0)


@pytest.fixture
def fresh_gpu_decoder() -> Iterator[None]:
    gpu_decoder.cache_clear()
    yield
    gpu_decoder.cache_clear()


def _j2k_file(tmp_path: Path, syntax: str = JPEG2000Lossless) -> Dataset:
    ds = make_ds(np.round(base_image() * 4095), bits=12)
    kwargs = {"j2k_lossless": False, "j2k_psnr": [80.0]} if syntax == JPEG2000 else {}
    ds.compress(syntax, **kwargs)  # type: ignore[arg-type]
    return _roundtrip(ds, tmp_path / "j2k.dcm")


def _use_fake_gpu(
    monkeypatch: pytest.MonkeyPatch, fake: FakeNvimgcodec, read: Dataset, cuda: bool
) -> None:
    import torch

    fake.shape = (int(read.Rows), int(read.Columns))
    monkeypatch.setattr("worker.decoders._import_nvimgcodec", lambda: fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)


def test_without_cuda_the_gpu_path_is_not_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_gpu_decoder: None
) -> None:
    read = _j2k_file(tmp_path)
    cpu = decode_for_model(read, SIZE)
    fake = FakeNvimgcodec(lambda data: pytest.fail("decoded on a GPU that is not there"))
    _use_fake_gpu(monkeypatch, fake, read, cuda=False)

    assert gpu_decoder() is None and fake.decoders_made == 0
    got = decode_for_model(read, SIZE)
    assert got.path == cpu.path != NVIMGCODEC  # the CPU path is recorded
    np.testing.assert_array_equal(got.pixels, cpu.pixels)


def test_with_cuda_jpeg2000_is_decoded_on_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_gpu_decoder: None
) -> None:
    read = _j2k_file(tmp_path)
    full = decode(read)
    # nvImageCodec answers (rows, columns, 1); the path gives the full decode's shape and dtype.
    fake = FakeNvimgcodec(lambda data: full.astype(np.uint16)[..., None])
    _use_fake_gpu(monkeypatch, fake, read, cuda=True)

    got = decode_for_model(read, SIZE)
    assert got.path == NVIMGCODEC
    assert got.pixels.shape == full.shape and got.pixels.dtype == full.dtype
    np.testing.assert_array_equal(got.pixels, full)
    decode_for_model(read, SIZE)
    assert fake.decoders_made == 1  # one decoder per process


def _raise(data: bytes) -> np.ndarray:
    raise RuntimeError("nvjpeg2k: out of memory")


@pytest.mark.parametrize(
    ("answer", "precision"),
    [
        (_raise, 12),
        (lambda data: None, 12),  # nvImageCodec could not decode it
        (lambda data: np.zeros((3, 3), np.uint16), 12),  # not the header's size
        (lambda data: np.zeros((160, 128), np.int16), 12),  # signed: not what the header says
        (lambda data: pytest.fail("decoded a mismatched codestream"), 16),
    ],
    ids=["raises", "none", "wrong-size", "wrong-sign", "precision-differs"],
)
def test_a_failing_gpu_decode_falls_back_to_the_cpu_paths(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_gpu_decoder: None,
    answer: Callable[[bytes], np.ndarray | None],
    precision: int,
) -> None:
    read = _j2k_file(tmp_path)
    cpu = decode_for_model(read, SIZE)
    _use_fake_gpu(monkeypatch, FakeNvimgcodec(answer, precision), read, cuda=True)

    got = decode_for_model(read, SIZE)
    assert got.path == cpu.path != NVIMGCODEC
    np.testing.assert_array_equal(got.pixels, cpu.pixels)


@needs_nvimgcodec
@pytest.mark.parametrize(
    ("shape_name", "syntax"),
    [("corpus", JPEG2000Lossless), ("large", JPEG2000Lossless), ("large", JPEG2000)],
)
def test_nvimgcodec_decodes_bit_identically_to_the_full_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape_name: str, syntax: str
) -> None:
    # The GPU path's own code with nvImageCodec's CPU backend (OpenJPEG), as no GPU is needed.
    decoder = _cpu_nvimgcodec_decoder()
    if decoder is None:
        pytest.skip("nvImageCodec's CPU-only decoder cannot be created here")
    monkeypatch.setattr("worker.decoders.gpu_decoder", lambda: decoder)
    img = base_image() if shape_name == "corpus" else _large_image()
    ds = make_ds(np.round(img * 4095), bits=12)
    kwargs = {"j2k_lossless": False, "j2k_psnr": [80.0]} if syntax == JPEG2000 else {}
    ds.compress(syntax, **kwargs)  # type: ignore[arg-type]
    read = _roundtrip(ds, tmp_path / "image.dcm")

    got = decode_for_model(read, SIZE)
    full = decode(read)
    assert got.path == NVIMGCODEC
    assert got.pixels.shape == full.shape and got.pixels.dtype == full.dtype
    np.testing.assert_array_equal(got.pixels, full)


@needs_nvimgcodec
def test_nvimgcodec_lossy_scores_within_2e3_of_the_full_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    from governance.registry import sha256_file
    from tests.worker.conftest import INPUT_SIZE
    from worker.inference import ModelSpec, calibrate, load_model, predict_logits

    decoder = _cpu_nvimgcodec_decoder()
    if decoder is None:
        pytest.skip("nvImageCodec's CPU-only decoder cannot be created here")
    monkeypatch.setattr("worker.decoders.gpu_decoder", lambda: decoder)
    spec = ModelSpec("t", str(model_file), sha256_file(model_file), INPUT_SIZE)
    model = load_model(spec, device="cpu", precision="fp32")
    full_inputs, gpu_inputs = [], []
    for index, img in enumerate([base_image(), _large_image()]):
        ds = make_ds(np.round(img * 4095), bits=12)
        ds.compress(JPEG2000, j2k_lossless=False, j2k_psnr=[60.0])  # type: ignore[arg-type]
        read = _roundtrip(ds, tmp_path / f"{index}.dcm")
        full_inputs.append(_model_input(decode(read), read, INPUT_SIZE))
        got = decode_for_model(read, INPUT_SIZE)
        assert got.path == NVIMGCODEC
        gpu_inputs.append(_model_input(got.pixels, read, INPUT_SIZE))
    full = calibrate(predict_logits(model, np.stack(full_inputs)), 1.0)
    got_scores = calibrate(predict_logits(model, np.stack(gpu_inputs)), 1.0)
    assert float(np.max(np.abs(full - got_scores))) <= 2e-3
