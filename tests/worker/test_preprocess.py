"""Each preprocessing step on tiny arrays with known answers, and DICOM header handling."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from worker.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PixelTransform,
    apply_rescale,
    apply_window,
    fit_size,
    invert,
    pad_to_square,
    pixel_transform,
    preprocess,
    resize_to_fit,
    scale_to_unit,
    standardize,
    to_unit_image,
)


def test_rescale_known_values() -> None:
    out = apply_rescale(np.array([0, 1, 2], dtype=np.uint16), slope=2.0, intercept=-1.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-1.0, 1.0, 3.0])


def test_rescale_identity_keeps_values() -> None:
    np.testing.assert_array_equal(apply_rescale(np.array([5, 7])), [5.0, 7.0])


@pytest.mark.parametrize("slope", [0.0, float("nan"), float("inf")])
def test_rescale_rejects_bad_slope(slope: float) -> None:
    with pytest.raises(ValueError, match="slope"):
        apply_rescale(np.zeros(2), slope=slope)


def test_linear_window_follows_ps3_3() -> None:
    # PS3.3 C.11.2.1.2.1, center 2048 width 4096: x <= c - 0.5 - (w-1)/2 = 0 -> 0,
    # x > c - 0.5 + (w-1)/2 = 4095 -> 1, and the midpoint c - 0.5 -> 0.5.
    out = apply_window(np.array([-10, 0, 2047.5, 4095, 5000]), center=2048, width=4096)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_linear_exact_window() -> None:
    out = apply_window(np.array([40.0, 50.0, 60.0]), center=50, width=20, function="LINEAR_EXACT")
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_sigmoid_window_midpoint_is_half() -> None:
    out = apply_window(np.array([50.0, 1e6, -1e6]), center=50, width=20, function="SIGMOID")
    np.testing.assert_allclose(out, [0.5, 1.0, 0.0], atol=1e-6)


def test_window_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="width"):
        apply_window(np.zeros(2), center=0, width=0.5)
    with pytest.raises(ValueError, match="function"):
        apply_window(np.zeros(2), center=0, width=10, function="CUBIC")


def test_scale_to_unit_maps_percentile_range() -> None:
    values = np.arange(1001, dtype=np.float32)  # percentiles 0.5/99.5 are 5 and 995
    out = scale_to_unit(values)
    assert out[5] == pytest.approx(0.0) and out[995] == pytest.approx(1.0)
    assert out[500] == pytest.approx(0.5)
    assert out.min() == 0.0 and out.max() == 1.0


def test_scale_to_unit_constant_image_is_zero() -> None:
    np.testing.assert_array_equal(scale_to_unit(np.full((3, 3), 7.0)), np.zeros((3, 3)))


def test_invert() -> None:
    np.testing.assert_allclose(invert(np.array([0.0, 0.25, 1.0])), [1.0, 0.75, 0.0])


def test_fit_size_keeps_aspect_ratio() -> None:
    assert fit_size(100, 50, 10) == (10, 5)
    assert fit_size(50, 100, 10) == (5, 10)
    assert fit_size(3, 1000, 10) == (1, 10)
    with pytest.raises(ValueError, match="size"):
        fit_size(10, 10, 0)


def test_resize_keeps_constant_and_shape() -> None:
    out = resize_to_fit(np.full((200, 100), 3.0), 20)
    assert out.shape == (20, 10)
    np.testing.assert_allclose(out, 3.0, rtol=1e-6)


def test_resize_antialiases_a_checkerboard() -> None:
    board = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)
    out = resize_to_fit(board, 16)
    # Without antialiasing, sampling a 1-pixel checkerboard aliases to 0s or 1s.
    np.testing.assert_allclose(out, 0.5, atol=0.05)


def test_pad_to_square_centres_the_image() -> None:
    out = pad_to_square(np.ones((2, 4), dtype=np.float32), 4)
    expected = np.zeros((4, 4))
    expected[1:3, :] = 1
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="fit"):
        pad_to_square(np.ones((5, 4)), 4)


def test_standardize_uses_imagenet_statistics() -> None:
    out = standardize(np.zeros((2, 2), dtype=np.float32))
    assert out.shape == (3, 2, 2)
    np.testing.assert_allclose(out[:, 0, 0], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        standardize(np.zeros((1, 2, 2)))


def test_to_unit_image_window_and_inversion() -> None:
    stored = np.array([[0, 4095], [4095, 0]], dtype=np.uint16)
    plain = to_unit_image(stored, PixelTransform(window=(2048, 4096)), 2)
    inverted = to_unit_image(stored, PixelTransform(window=(2048, 4096), invert=True), 2)
    np.testing.assert_allclose(plain, [[0, 1], [1, 0]], atol=1e-6)
    np.testing.assert_allclose(inverted, 1 - plain, atol=1e-6)


def _header(**attrs: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def test_pixel_transform_reads_header() -> None:
    ds = _header(
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope="2",
        RescaleIntercept="-5",
        WindowCenter=["100", "200"],
        WindowWidth=["50", "80"],
        VOILUTFunction="LINEAR",
    )
    transform = pixel_transform(ds)
    assert transform == PixelTransform(
        slope=2.0, intercept=-5.0, window=(100.0, 50.0), voi_function="LINEAR", invert=True
    )


def test_pixel_transform_defaults_without_attributes() -> None:
    assert pixel_transform(_header(PhotometricInterpretation="MONOCHROME2")) == PixelTransform()


def test_pixel_transform_rejects_unknown_photometric() -> None:
    with pytest.raises(ValueError, match="photometric"):
        pixel_transform(_header(PhotometricInterpretation="CMYK"))


def test_preprocess_shape_and_range() -> None:
    gray = np.linspace(0, 255, 60 * 40).reshape(60, 40).astype(np.uint8)
    out = preprocess(gray, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    low = float(((0 - IMAGENET_MEAN) / IMAGENET_STD).min())
    high = float(((1 - IMAGENET_MEAN) / IMAGENET_STD).max())
    assert low - 1e-5 <= out.min() and out.max() <= high + 1e-5


def test_prepare_returns_input_unit_statistics_and_stage_times(tmp_path) -> None:
    from PIL import Image

    from worker.preprocess import prepare

    gray = np.tile(np.linspace(0, 255, 40, dtype=np.float32), (20, 1)).astype(np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(gray, mode="L").save(path)
    prepared = prepare(path, 40)
    np.testing.assert_array_equal(prepared.input, standardize(prepared.unit))
    np.testing.assert_array_equal(prepared.input, preprocess(gray, 40))
    assert prepared.unit.shape == (40, 40)
    stats = prepared.stats  # of the 20 x 40 image, not the black padding
    assert 0.45 < stats.mean < 0.55 and stats.std > 0.25
    assert stats.fraction_at_0 == pytest.approx(1 / 40) and stats.fraction_at_1 == pytest.approx(
        1 / 40
    )
    assert prepared.started_at <= prepared.decoded_at <= prepared.preprocessed_at
    assert prepared.decode_seconds >= 0 and prepared.preprocess_seconds >= 0
