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


def _resize_axis_linear(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
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

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)],
                  axis=-1).astype(np.float32)


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


def resize_labels_nearest(labels: jnp.ndarray,
                          size: Tuple[int, int]) -> jnp.ndarray:
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
