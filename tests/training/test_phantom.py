"""The synthetic radiograph generators: ranges, determinism, where the opacities go."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.synthetic import studies as synthetic
from training.synthetic.phantom import (
    chest_radiograph,
    consolidation,
    frontal_radiograph,
    lateral_radiograph,
    lung_masks,
    sample_anatomy,
)


@pytest.mark.parametrize("make", [frontal_radiograph, lateral_radiograph])
@pytest.mark.parametrize("shape", [(64, 64), (96, 80)])
def test_generators_give_unit_float32_images_reproducibly(make, shape):
    a = make(np.random.default_rng(1), shape)
    b = make(np.random.default_rng(1), shape)
    c = make(np.random.default_rng(2), shape)
    assert a.dtype == np.float32 and a.shape == shape
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_frontal_anatomy_lungs_darker_than_mediastinum_and_heart_on_image_right():
    rng = np.random.default_rng(0)
    image = frontal_radiograph(rng, (128, 128))
    anatomy = sample_anatomy(np.random.default_rng(0))
    left, right = lung_masks((128, 128), anatomy)
    assert left[:, :64].sum() > 10 * left[:, 64:].sum()  # image-left lung on the left half
    assert right[:, 64:].sum() > 10 * right[:, :64].sum()
    spine = image[40:80, 62:66].mean()
    lung = image[40:80, 25:40].mean()
    assert spine > lung + 0.1
    assert image[:, :3].mean() < 0.2  # air outside the body is dark


def test_consolidation_stays_inside_the_lung_mask():
    anatomy = sample_anatomy(np.random.default_rng(3))
    left, _ = lung_masks((128, 128), anatomy)
    density = consolidation(np.random.default_rng(4), left, n_patches=2)
    assert density.max() > 0.1
    outside = density[left < 0.01]
    assert outside.size and outside.max() < 0.01


def test_consolidation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="lung_mask"):
        consolidation(np.random.default_rng(0), np.zeros((32, 32)))
    with pytest.raises(ValueError, match="n_patches"):
        consolidation(np.random.default_rng(0), np.ones((32, 32)), n_patches=0)
    with pytest.raises(ValueError, match="view"):
        chest_radiograph(np.random.default_rng(0), (64, 64), positive=True, view="XX")


def test_positive_adds_density_in_the_lungs_only():
    """Same random stream, same anatomy: the positive differs from the negative by an opacity."""
    anatomy = sample_anatomy(np.random.default_rng(9))
    neg = chest_radiograph(np.random.default_rng(5), (128, 128), positive=False, anatomy=anatomy)
    pos = chest_radiograph(np.random.default_rng(5), (128, 128), positive=True, anatomy=anatomy)
    left, right = lung_masks((128, 128), anatomy)
    lungs = np.clip(left + right, 0, 1)
    # The positive draws extra random numbers, so noise differs a little everywhere; the
    # opacity adds clearly more inside the lungs.
    assert (pos - neg)[lungs > 0.9].max() > 0.1


def test_label_is_not_given_away_by_global_brightness():
    images, labels = synthetic.synthetic_arrays(200, size=32, seed=1, render_size=64)
    auc = roc_auc_score(labels, images.reshape(len(images), -1).mean(axis=1))
    assert 0.3 < auc < 0.75


def test_synthetic_arrays_shape_balance_and_determinism(synthetic_arrays):
    images, labels = synthetic_arrays
    assert images.shape == (64, 64, 64) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.sum() == 32
    a, labels_a = synthetic.synthetic_arrays(6, size=32, seed=2, render_size=64)
    b, labels_b = synthetic.synthetic_arrays(6, size=32, seed=2, render_size=64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(labels_a, labels_b)
    with pytest.raises(ValueError, match="positive_fraction"):
        synthetic.synthetic_arrays(4, positive_fraction=2)
