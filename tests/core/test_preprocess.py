import numpy as np
import pytest

from crane_x7_vla import preprocess
from crane_x7_vla.episode import jpeg
from crane_x7_vla.preprocess import ImageSpec, Normalizer, prepare_image


def gradient_image(w=320, h=240):
    x = np.linspace(0, 255, w, dtype=np.float32)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = x[None, :]
    img[:, :, 2] = 255 - x[None, :]
    return img


def test_inference_is_a_centre_crop_and_deterministic():
    img = gradient_image()
    spec = ImageSpec(64, 64, crop_scale=0.81)
    a = prepare_image(img, spec)
    b = prepare_image(img, spec)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # symmetric crop: red at the left edge mirrors blue at the right edge
    assert abs(int(a[32, 0, 0]) - int(a[32, -1, 2])) <= 2


def test_training_crop_is_random_but_reproducible():
    img = gradient_image()
    spec = ImageSpec(64, 64, crop_scale=0.5, color_jitter=0.0)
    a = prepare_image(img, spec, train=True, rng=np.random.default_rng(1))
    b = prepare_image(img, spec, train=True, rng=np.random.default_rng(1))
    c = [prepare_image(img, spec, train=True, rng=np.random.default_rng(s)) for s in range(2, 8)]
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, x) for x in c)
    with pytest.raises(ValueError, match="needs an rng"):
        prepare_image(img, spec, train=True)


def test_jpeg_input_matches_array_input():
    img = gradient_image(640, 480)
    spec = ImageSpec(224, 224)
    from_array = prepare_image(img, spec).astype(int)
    from_jpeg = prepare_image(jpeg.encode(img, 95), spec).astype(int)
    assert np.abs(from_array - from_jpeg).mean() < 4


def test_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB uint8"):
        prepare_image(np.zeros((10, 10), np.uint8))


def test_parse_image_size():
    assert preprocess.parse_image_size("224x160") == (224, 160)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        preprocess.parse_image_size("224")


def test_normalizer_round_trip_and_constant_dimension():
    stats = {"action": {"q01": [0.0, -1.0, 0.5], "q99": [2.0, 1.0, 0.5], "min": [0, 0, 0], "max": [1, 1, 1]}}
    norm = Normalizer.from_stats(stats, "action")
    x = np.array([[1.0, 0.5, 0.5], [0.0, -1.0, 0.5]])
    y = norm.normalize(x)
    np.testing.assert_allclose(y, [[0.0, 0.5, 0.0], [-1.0, -1.0, 0.0]])
    np.testing.assert_allclose(norm.unnormalize(y), x)
    assert norm.normalize(np.array([5.0, 0, 0]))[0] == 1.0  # clipped
    with pytest.raises(KeyError, match="proprio"):
        Normalizer.from_stats(stats, "proprio")
