"""Tests for `cfbi_jax.resize` against naive per-pixel NumPy references.

The references are written from the definitions in
`../shared/reference/cfbi-official-notes.md` §2 (PyTorch `align_corners=True`
bilinear and bicubic, PyTorch's legacy `mode='nearest'`) and evaluated pixel
by pixel in float64. The legacy-nearest rule is also checked against the
row lists the notes verified on PyTorch (121 -> 61 and 480 -> 121), and
`stride_size` against the feature-grid table of §3.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfbi_jax import resize


# ---------------------------------------------------------------- references
def np_ac_source(o, in_size, out_size):
  """align_corners=True source coordinate of output index `o` (float64)."""
  if out_size == 1:
    return 0.0
  return o * (in_size - 1) / (out_size - 1)


def np_bilinear_ac(x, size):
  """PyTorch bilinear, align_corners=True; `x` is `[N, H, W, C]`."""
  n, h, w, c = x.shape
  out_h, out_w = size
  out = np.zeros((n, out_h, out_w, c), np.float64)
  for i in range(out_h):
    sy = np_ac_source(i, h, out_h)
    y0 = min(int(math.floor(sy)), h - 1)
    y1 = min(y0 + 1, h - 1)
    ly = sy - y0
    for j in range(out_w):
      sx = np_ac_source(j, w, out_w)
      x0 = min(int(math.floor(sx)), w - 1)
      x1 = min(x0 + 1, w - 1)
      lx = sx - x0
      out[:, i, j] = (
          (1 - ly) * (1 - lx) * x[:, y0, x0]
          + (1 - ly) * lx * x[:, y0, x1]
          + ly * (1 - lx) * x[:, y1, x0]
          + ly * lx * x[:, y1, x1]
      )
  return out


def np_keys_cubic(d, a=-0.75):
  """Keys cubic convolution kernel at distance `d`."""
  d = abs(d)
  if d <= 1:
    return (a + 2) * d**3 - (a + 3) * d**2 + 1
  if d < 2:
    return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
  return 0.0


def np_bicubic_ac(x, size):
  """PyTorch bicubic, align_corners=True, A = -0.75, clamped taps."""
  n, h, w, c = x.shape
  out_h, out_w = size
  out = np.zeros((n, out_h, out_w, c), np.float64)
  for i in range(out_h):
    sy = np_ac_source(i, h, out_h)
    by = int(math.floor(sy))
    for j in range(out_w):
      sx = np_ac_source(j, w, out_w)
      bx = int(math.floor(sx))
      acc = np.zeros((n, c), np.float64)
      for ty in range(by - 1, by + 3):
        wy = np_keys_cubic(sy - ty)
        for tx in range(bx - 1, bx + 3):
          wx = np_keys_cubic(sx - tx)
          acc += wy * wx * x[:, min(max(ty, 0), h - 1), min(max(tx, 0), w - 1)]
      out[:, i, j] = acc
  return out


def np_legacy_nearest_indices(in_size, out_size):
  """src = min(floor(dst * float32(in / out)), in - 1), scalar by scalar."""
  scale = np.float32(in_size / out_size)
  return np.array(
      [
          min(int(np.floor(np.float32(d) * scale)), in_size - 1)
          for d in range(out_size)
      ]
  )


def random_image(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ bilinear
RESIZE_CASES = [
    pytest.param((7, 9), (13, 17), id='up_odd'),
    pytest.param((13, 17), (7, 9), id='down_odd'),
    pytest.param((9, 11), (5, 6), id='down_half_plus_one'),
    pytest.param((5, 8), (12, 3), id='up_h_down_w'),
    pytest.param((6, 10), (1, 4), id='out_height_1'),
    pytest.param((1, 4), (5, 7), id='in_height_1'),
]


@pytest.mark.parametrize('in_size,out_size', RESIZE_CASES)
def test_bilinear_matches_naive(in_size, out_size):
  x = random_image((2,) + in_size + (3,), seed=0)
  got = np.asarray(resize.resize_bilinear_ac(jnp.asarray(x), out_size))
  assert got.shape == (2,) + out_size + (3,)
  np.testing.assert_allclose(
      got, np_bilinear_ac(x.astype(np.float64), out_size), atol=2e-6
  )


def test_bilinear_odd_to_half_grid_is_strided_subsample():
  # AC-bilinear from n to (n - 1) / 2 + 1 lands on integer sources 0, 2, 4,
  # ..., which is what CFBI's local-matching downsample relies on (§22.4).
  x = random_image((1, 11, 15, 2), seed=1)
  got = np.asarray(resize.resize_bilinear_ac(jnp.asarray(x), (6, 8)))
  np.testing.assert_allclose(got, x[:, ::2, ::2], atol=1e-6)


def test_bilinear_identity_when_sizes_equal():
  x = random_image((2, 7, 5, 3), seed=2)
  got = np.asarray(resize.resize_bilinear_ac(jnp.asarray(x), (7, 5)))
  np.testing.assert_array_equal(got, x)


def test_bilinear_hand_computed_1d():
  # 3 -> 5 with align_corners: sources 0, 0.5, 1, 1.5, 2.
  x = np.array([0.0, 2.0, 10.0], np.float32).reshape(1, 1, 3, 1)
  got = np.asarray(resize.resize_bilinear_ac(jnp.asarray(x), (1, 5)))
  np.testing.assert_allclose(got.ravel(), [0.0, 1.0, 2.0, 6.0, 10.0], atol=1e-6)


def test_bilinear_under_jit_and_extra_batch_axes():
  x = random_image((2, 3, 6, 5, 4), seed=3)
  fn = jax.jit(lambda v: resize.resize_bilinear_ac(v, (9, 4)))
  got = np.asarray(fn(jnp.asarray(x)))
  want = np_bilinear_ac(x.reshape(6, 6, 5, 4).astype(np.float64), (9, 4))
  np.testing.assert_allclose(got.reshape(6, 9, 4, 4), want, atol=2e-6)


# ------------------------------------------------------------------- bicubic
@pytest.mark.parametrize('in_size,out_size', RESIZE_CASES)
def test_bicubic_matches_naive(in_size, out_size):
  x = random_image((2,) + in_size + (3,), seed=4)
  got = np.asarray(resize.resize_bicubic_ac(jnp.asarray(x), out_size))
  assert got.shape == (2,) + out_size + (3,)
  np.testing.assert_allclose(
      got, np_bicubic_ac(x.astype(np.float64), out_size), atol=1e-5
  )


def test_bicubic_identity_when_sizes_equal():
  x = random_image((1, 6, 9, 2), seed=5)
  got = np.asarray(resize.resize_bicubic_ac(jnp.asarray(x), (6, 9)))
  np.testing.assert_allclose(got, x, atol=1e-6)


def test_bicubic_uses_a_minus_075_not_jax_cubic():
  # A half-way sample between 4 taps: weights with A = -0.75 are
  # (-0.09375, 0.59375, 0.59375, -0.09375); A = -0.5 would give -0.0625.
  x = np.array([0.0, 0.0, 1.0, 0.0, 0.0], np.float32).reshape(1, 1, 5, 1)
  got = np.asarray(resize.resize_bicubic_ac(jnp.asarray(x), (1, 9))).ravel()
  # Output 3 samples source 1.5 (taps 0..3), output 5 samples 2.5 (taps 1..4).
  np.testing.assert_allclose(got[3], 0.59375, atol=1e-6)
  np.testing.assert_allclose(got[5], 0.59375, atol=1e-6)
  # Output 1 samples 0.5: taps -1 (clamped to 0), 0, 1, 2 -> only tap 2 = 1.
  np.testing.assert_allclose(got[1], -0.09375, atol=1e-6)


def test_bicubic_clamps_border_taps():
  # A constant image stays constant (weights sum to 1, taps are clamped,
  # never zero-filled).
  x = np.full((1, 4, 5, 1), 3.0, np.float32)
  got = np.asarray(resize.resize_bicubic_ac(jnp.asarray(x), (11, 7)))
  np.testing.assert_allclose(got, 3.0, atol=1e-5)


# ------------------------------------------------------------ legacy nearest
NEAREST_PAIRS = [
    (121, 61),
    (480, 121),
    (854, 213),
    (720, 145),
    (1280, 261),
    (465, 117),
    (117, 59),
    (7, 3),
    (5, 9),
    (10, 10),
    (3, 1),
]


@pytest.mark.parametrize('in_size,out_size', NEAREST_PAIRS)
def test_legacy_nearest_indices_formula(in_size, out_size):
  np.testing.assert_array_equal(
      resize.legacy_nearest_indices(in_size, out_size),
      np_legacy_nearest_indices(in_size, out_size),
  )


def test_legacy_nearest_121_to_61_hand_verified():
  want = [0] + list(range(1, 120, 2))  # 0, 1, 3, 5, ..., 119
  assert len(want) == 61
  np.testing.assert_array_equal(resize.legacy_nearest_indices(121, 61), want)


def test_legacy_nearest_480_to_121_hand_verified():
  idx = resize.legacy_nearest_indices(480, 121)
  assert len(idx) == 121
  np.testing.assert_array_equal(idx[:5], [0, 3, 7, 11, 15])
  # Not half-pixel nearest, which would start 1, 5, 9.
  assert idx[1] != 5


def test_resize_labels_nearest_2d_and_batched():
  rng = np.random.default_rng(6)
  labels = rng.integers(-1, 5, size=(2, 3, 13, 10)).astype(np.int32)
  got = np.asarray(resize.resize_labels_nearest(jnp.asarray(labels), (7, 4)))
  rows = np_legacy_nearest_indices(13, 7)
  cols = np_legacy_nearest_indices(10, 4)
  want = np.empty((2, 3, 7, 4), np.int32)
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      want[..., i, j] = labels[..., r, c]
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32
  got2d = np.asarray(
      resize.resize_labels_nearest(jnp.asarray(labels[0, 0]), (7, 4))
  )
  np.testing.assert_array_equal(got2d, want[0, 0])


def test_resize_labels_nearest_upsample_and_identity():
  labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
  got = np.asarray(resize.resize_labels_nearest(jnp.asarray(labels), (6, 8)))
  # 3 -> 6 and 4 -> 8 with scale 0.5: every source row/col repeated twice.
  np.testing.assert_array_equal(got, labels.repeat(2, 0).repeat(2, 1))
  same = np.asarray(resize.resize_labels_nearest(jnp.asarray(labels), (3, 4)))
  np.testing.assert_array_equal(same, labels)


# --------------------------------------------------------------- stride_size
@pytest.mark.parametrize(
    'size,strides',
    [
        (481, {4: 121, 8: 61, 16: 31}),
        (849, {4: 213, 8: 107, 16: 54}),
        (465, {4: 117, 8: 59, 16: 30}),
        (577, {4: 145, 8: 73, 16: 37}),
        (1041, {4: 261, 8: 131, 16: 66}),
    ],
)
def test_stride_size_table(size, strides):
  for stride, want in strides.items():
    assert resize.stride_size(size, stride) == want, (size, stride)
  assert resize.stride_size(size, 1) == size
  assert resize.stride_size(size, 2) == (size - 1) // 2 + 1
