"""High-depth grayscale images (PIL modes I;16, I, F) become 8-bit RGB by their value range
(issue 26: ``to_rgb``'s stretch branch had no test). Each case is compared with a NumPy
hand computation of the documented rule on a non-square image:

* 16-bit unsigned (I;16, or I within 0..65535): v / 257, rounded;
* float in [0, 1] (F): v * 255, rounded;
* anything else (negative integers, I above 65535, floats outside [0, 1]): stretched,
  (v - min(v, 0)) / (max(v, 0) - min(v, 0)) * 255, rounded (the range always includes 0);
  a range of zero width gives black.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnviz.data.images import to_rgb

H, W = 3, 5


def _stretched(v: np.ndarray) -> np.ndarray:
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.round((v.astype(np.float64) - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _check(img: Image.Image, expected_gray: np.ndarray) -> None:
    out = to_rgb(img)
    arr = np.asarray(out)
    assert out.mode == "RGB" and arr.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], expected_gray)


def test_sixteen_bit_unsigned_is_divided_by_257():
    v = ((np.arange(H * W).reshape(H, W) * 4700 + 1) % 65536).astype(np.uint16)
    v[0, -1] = 60000  # below 65535: a stretch to the maximum would give other values
    img = Image.fromarray(v)  # uint16 -> mode I;16
    assert img.mode == "I;16"
    _check(img, np.round(v / 257.0).astype(np.uint8))


def test_mode_i_within_sixteen_bits_is_divided_by_257():
    v = (np.arange(H * W, dtype=np.int32).reshape(H, W) * 4001) % 65536
    _check(Image.fromarray(v, mode="I"), np.round(v / 257.0).astype(np.uint8))


@pytest.mark.parametrize(
    "values",
    [
        np.arange(H * W, dtype=np.int32).reshape(H, W) * 37 - 200,  # negatives: stretched
        np.arange(H * W, dtype=np.int32).reshape(H, W) * 10_000 + 70_000,  # above 16 bits
        -np.arange(1, H * W + 1, dtype=np.int32).reshape(H, W) * 5,  # all negative
    ],
    ids=["negative", "above-16-bit", "all-negative"],
)
def test_other_integer_ranges_are_stretched_over_a_range_that_includes_zero(values):
    _check(Image.fromarray(values, mode="I"), _stretched(values))


def test_float_in_the_unit_interval_is_multiplied_by_255():
    v = (np.arange(H * W, dtype=np.float32).reshape(H, W) / (H * W)) ** 2  # max < 1: no stretch
    _check(Image.fromarray(v, mode="F"), np.round(v.astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    "values",
    [
        np.linspace(-1.5, 0.5, H * W, dtype=np.float32).reshape(H, W),
        np.linspace(0.25, 3.0, H * W, dtype=np.float32).reshape(H, W),
        np.linspace(0.0, 1.5, H * W, dtype=np.float32).reshape(H, W),
    ],
    ids=["negative", "above-one", "up-to-1.5"],
)
def test_float_outside_the_unit_interval_is_stretched(values):
    _check(Image.fromarray(values, mode="F"), _stretched(values))


def test_a_constant_zero_range_gives_black_and_a_constant_value_keeps_zero_in_range():
    zero = np.zeros((H, W), np.int32)
    big = np.full((H, W), 100_000, np.int32)  # range [0, 100000]: the constant is white
    _check(Image.fromarray(zero, mode="I"), np.zeros((H, W), np.uint8))
    _check(Image.fromarray(big, mode="I"), np.full((H, W), 255, np.uint8))
    neg = np.full((H, W), -3.0, np.float32)  # range [-3, 0]: the constant is black
    _check(Image.fromarray(neg, mode="F"), np.zeros((H, W), np.uint8))
