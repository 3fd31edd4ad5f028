"""Resizing rules of the official CFBI code, reproduced exactly.

The official PyTorch code resizes with three different rules, and parity
depends on using the right one in the right place
(`../shared/reference/cfbi-official-notes.md` §2):

* `resize_bilinear_ac`: `F.interpolate(mode='bilinear', align_corners=True)`,
  used for every feature map and for the logits.
* `resize_bicubic_ac`: `F.interpolate(mode='bicubic', align_corners=True)`,
  Keys cubic with A = -0.75 and clamped borders (used once, in the ensembler
  decoder). `jax.image.resize('cubic')` uses A = -0.5 and half-pixel centres,
  so it is deliberately not used.
* `resize_labels_nearest`: PyTorch's legacy `mode='nearest'` with an explicit
  size, src = min(floor(dst * float32(in / out)), in - 1). It is used for
  every label map (reference, previous, CFBI's half-resolution grid).
* `resize_cubic_cv2`: OpenCV's `INTER_CUBIC` on a float32 image (half-pixel
  centres, Keys cubic A = -0.75 with the fourth weight as 1 minus the
  others, replicated borders, horizontal pass first), which the official
  loader (`dataloaders/custom_transforms.py::MultiRestrictSize`, notes §3)
  applies to the [0, 255] float frame before normalising; the inference
  step runs it on the device (`inference/step.py::network_input`).

All functions take the spatial axes of an NHWC (or HW / NHW for labels)
array. Sampling positions and weights are computed in NumPy float32 at trace
time (sizes are static), then applied with gathers so the arithmetic is the
same two- (or four-) term lerp PyTorch evaluates.
"""

from typing import Tuple

import jax.numpy as jnp
import numpy as np


def _ac_source(in_size: int, out_size: int) -> np.ndarray:
  """align_corners=True source coordinates, as PyTorch computes them (float32)."""
  if out_size > 1:
    scale = np.float32(in_size - 1) / np.float32(out_size - 1)
  else:
    scale = np.float32(0.0)
  return np.arange(out_size, dtype=np.float32) * scale


def _linear_taps(in_size: int, out_size: int):
  src = _ac_source(in_size, out_size)
  i0 = np.floor(src).astype(np.int32)
  i0 = np.minimum(i0, in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = (src - i0.astype(np.float32)).astype(np.float32)
  return i0, i1, lam


def _resize_axis_linear(
    x: jnp.ndarray, axis: int, out_size: int
) -> jnp.ndarray:
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  i0, i1, lam = _linear_taps(in_size, out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  lam = jnp.asarray(lam.reshape(shape), dtype=x.dtype)
  x0 = jnp.take(x, jnp.asarray(i0), axis=axis)
  x1 = jnp.take(x, jnp.asarray(i1), axis=axis)
  return x0 * (1 - lam) + x1 * lam


def resize_bilinear_ac(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """Bilinear resize with align_corners=True on the spatial axes.

  Args:
    x: `[..., height, width, channels]` array.
    size: output `(height, width)`.

  Returns:
    `[..., size[0], size[1], channels]` array of the same dtype.
  """
  x = _resize_axis_linear(x, x.ndim - 3, size[0])
  return _resize_axis_linear(x, x.ndim - 2, size[1])


def _cubic_coefficients(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic weights for the taps at -1, 0, 1, 2 (PyTorch's formula)."""
  t = t.astype(np.float32)
  a = np.float32(a)

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack(
      [far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1
  ).astype(np.float32)


def _resize_axis_cubic(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  src = _ac_source(in_size, out_size)
  base = np.floor(src).astype(np.int32)
  t = src - base.astype(np.float32)
  weights = _cubic_coefficients(t)  # [out, 4]
  shape = [1] * x.ndim
  shape[axis] = out_size
  out = None
  for tap in range(4):
    idx = np.clip(base - 1 + tap, 0, in_size - 1)
    w = jnp.asarray(weights[:, tap].reshape(shape), dtype=x.dtype)
    term = jnp.take(x, jnp.asarray(idx), axis=axis) * w
    out = term if out is None else out + term
  return out


def resize_bicubic_ac(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """Bicubic resize (A = -0.75, clamped borders) with align_corners=True.

  PyTorch interpolates along the width first, then along the height; the
  same order is used here.

  Args:
    x: `[..., height, width, channels]` array.
    size: output `(height, width)`.

  Returns:
    `[..., size[0], size[1], channels]` array.
  """
  x = _resize_axis_cubic(x, x.ndim - 2, size[1])
  return _resize_axis_cubic(x, x.ndim - 3, size[0])


def legacy_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of PyTorch's legacy nearest resize (float32 scale)."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1).astype(np.int32)


def resize_labels_nearest(
    labels: jnp.ndarray, size: Tuple[int, int]
) -> jnp.ndarray:
  """Legacy-nearest resize of an integer label map (PyTorch `mode='nearest'`).

  Args:
    labels: `[..., height, width]` integer array.
    size: output `(height, width)`.

  Returns:
    `[..., size[0], size[1]]` array of the same dtype.
  """
  h, w = labels.shape[-2:]
  if (h, w) == tuple(size):
    return labels
  rows = jnp.asarray(legacy_nearest_indices(h, size[0]))
  cols = jnp.asarray(legacy_nearest_indices(w, size[1]))
  labels = jnp.take(labels, rows, axis=labels.ndim - 2)
  return jnp.take(labels, cols, axis=labels.ndim - 1)


def stride_size(size: int, stride: int) -> int:
  """Feature-grid size at `stride` for an input side: (n - 1) // stride + 1.

  This is what the official backbone produces (k x k convs with padding
  (k - 1) / 2 and stride 2), exact for the 16k+1 sizes the official pipeline
  feeds it.
  """
  for _ in range(int(np.log2(stride))):
    size = (size - 1) // 2 + 1
  return size


def _cv2_cubic_weights(fx: np.ndarray) -> np.ndarray:
  """OpenCV's `interpolateCubic` (float32), `[n, 4]`."""
  a = np.float32(-0.75)
  x = fx.astype(np.float32)
  one = np.float32(1)
  c0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
  c1 = ((a + 2) * x - (a + 3)) * x * x + one
  c2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
  c3 = one - c0 - c1 - c2
  return np.stack([c0, c1, c2, c3], axis=-1).astype(np.float32)


def _cv2_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
  scale = 1.0 / (out_size / in_size)
  fx = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
  sx = np.floor(fx).astype(np.int64)
  weights = _cv2_cubic_weights(fx - sx.astype(np.float32))
  index = np.clip(sx[:, None] + np.arange(-1, 3)[None], 0, in_size - 1)
  return index, weights


def resize_cubic_cv2(image: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """`cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)` for float32.

  Each output pixel accumulates its four taps from zero in tap order, first
  along the width, then along the height, as OpenCV does; the taps are
  static gathers.

  Args:
    image: `[H, W, C]` float32 image (values in [0, 255], not clipped).
    size: output `(height, width)`.

  Returns:
    `[height, width, C]` float32.
  """
  image = jnp.asarray(image, jnp.float32)
  if image.shape[:2] == tuple(size):
    return image
  cols, wx = _cv2_taps(image.shape[1], size[1])
  rows, wy = _cv2_taps(image.shape[0], size[0])
  tmp = jnp.zeros((image.shape[0], size[1], image.shape[2]), jnp.float32)
  for k in range(4):
    tmp = tmp + jnp.take(image, cols[:, k], axis=1) * wx[None, :, k, None]
  out = jnp.zeros((size[0], size[1], image.shape[2]), jnp.float32)
  for k in range(4):
    out = out + jnp.take(tmp, rows[:, k], axis=0) * wy[:, k, None, None]
  return out
