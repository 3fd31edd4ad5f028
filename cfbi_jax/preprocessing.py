"""Evaluation-time frame sizing and resizing of the official CFBI loaders.

Reproduces `dataloaders/custom_transforms.py::MultiRestrictSize` and the
flip augmentation (`cfbi-official-notes.md` §3):

* `input_size(h, w, scale, max_long_edge)`: the long edge is capped at
  `max_long_edge` (1040 single-scale, 800 with multi-scale), the scale is
  applied with truncation, and each side is snapped to 16k+1 with numpy's
  round-half-to-even (585 -> 577).
* `resize_cubic_cv2(image, size)`: OpenCV's `INTER_CUBIC` on a float32
  image (half-pixel centres, Keys cubic A = -0.75 with the fourth weight as
  1 minus the others, replicated borders, horizontal pass first), which the
  official loader applies to the [0, 255] float frame before normalising.

Sizes are computed on the host; the resize is a `jnp` function (taps and
weights computed in NumPy at trace time) that `frame_step.network_input`
runs on the device. Frames stay RGB here; the network's BGR quirk is
applied in `frame_step.preprocess_images`.
"""

from typing import Tuple

import jax.numpy as jnp
import numpy as np


def input_size(height: int, width: int, scale: float = 1.0,
               max_long_edge: float = 1040) -> Tuple[int, int]:
  """The network input size the official loader gives a frame.

  Args:
    height, width: original frame size.
    scale: test scale (1.0 single-scale; 1.15/1.3/1.5 in multi-scale).
    max_long_edge: long-edge cap before scaling.

  Returns:
    `(new_height, new_width)`, both of the form 16k + 1.
  """
  long_edge = max(height, width)
  base = max_long_edge / long_edge if long_edge > max_long_edge else 1.0
  out = []
  for side in (height, width):
    new = int(side * base * scale)
    if (new - 1) % 16 != 0:
      new = int(np.around((new - 1) / 16.0)) * 16 + 1
    out.append(new)
  return out[0], out[1]


def _cubic_weights(fx: np.ndarray) -> np.ndarray:
  """OpenCV's `interpolateCubic` (float32), `[n, 4]`."""
  a = np.float32(-0.75)
  x = fx.astype(np.float32)
  one = np.float32(1)
  c0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
  c1 = ((a + 2) * x - (a + 3)) * x * x + one
  c2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
  c3 = one - c0 - c1 - c2
  return np.stack([c0, c1, c2, c3], axis=-1).astype(np.float32)


def _taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
  scale = 1.0 / (out_size / in_size)
  fx = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
  sx = np.floor(fx).astype(np.int64)
  weights = _cubic_weights(fx - sx.astype(np.float32))
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
  cols, wx = _taps(image.shape[1], size[1])
  rows, wy = _taps(image.shape[0], size[0])
  tmp = jnp.zeros((image.shape[0], size[1], image.shape[2]), jnp.float32)
  for k in range(4):
    tmp = tmp + jnp.take(image, cols[:, k], axis=1) * wx[None, :, k, None]
  out = jnp.zeros((size[0], size[1], image.shape[2]), jnp.float32)
  for k in range(4):
    out = out + jnp.take(tmp, rows[:, k], axis=0) * wy[:, k, None, None]
  return out
