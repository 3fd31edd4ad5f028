"""DAVIS 2017 semi-supervised metrics (J, F, Mean / Recall / Decay) in NumPy.

Reproduces the numbers of the official evaluation tool
(github.com/davisvideochallenge/davis2017-evaluation @ ac7c43f), written from
the rule list in `../shared/fixtures/davis-metric/README.md`:

* J (region similarity) is the IoU of two binary masks, 1 when both are
  empty.
* F (contour accuracy) compares one-pixel boundary maps (a pixel differs from
  its right, lower or lower-right neighbour; the image border is not a
  contour) within a tolerance disk of radius ceil(0.008 * image diagonal).
* Per object, the per-frame values of the evaluated frames 1..T-2 are
  summarised as Mean, Recall (fraction > 0.5) and Decay (mean of the first
  quarter minus mean of the last quarter, with overlapping bins).

Everything is float64 NumPy so that per-frame values equal the official ones
exactly and the summaries agree to rounding of the summation order. The scorer
`cfbi_jax.davis_eval` calls `evaluate_sequence` once per sequence; the tests
in `tests/test_metrics.py` compare against naive references and the fixture.
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

# Boundary tolerance as a fraction of the image diagonal (official default).
BOUNDARY_TOLERANCE = 0.008

# The per-object summaries, in the column order of the official CSVs.
STATISTICS = ('Mean', 'Recall', 'Decay')


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
  """Region similarity J: intersection over union of two binary masks.

  Args:
    pred: `[H, W]` predicted mask (bool, or any dtype where nonzero is in).
    gt: `[H, W]` ground-truth mask, same shape.

  Returns:
    |pred & gt| / |pred | gt| as a Python float; 1.0 when both are empty.
  """
  pred = np.asarray(pred, dtype=bool)
  gt = np.asarray(gt, dtype=bool)
  _check_same_shape(pred, gt)
  union = np.count_nonzero(pred | gt)
  if union == 0:
    return 1.0
  return np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
  """One-pixel boundary map of a binary mask, the official rule.

  A pixel is a boundary pixel when it differs from its right, lower or
  lower-right neighbour. Neighbours outside the image are not compared: the
  last row only looks right, the last column only looks down, and the
  bottom-right pixel is never a boundary. So the image border is not a
  contour and a mask covering the whole frame has an empty boundary.

  Args:
    mask: `[H, W]` binary mask (nonzero = in).

  Returns:
    `[H, W]` bool boundary map.
  """
  mask = np.asarray(mask, dtype=bool)
  if mask.ndim != 2:
    raise ValueError(f'boundary_map expects an [H, W] mask, got {mask.shape}')
  b = np.zeros_like(mask)
  b[:, :-1] |= mask[:, :-1] ^ mask[:, 1:]  # right neighbour
  b[:-1, :] |= mask[:-1, :] ^ mask[1:, :]  # lower neighbour
  b[:-1, :-1] |= mask[:-1, :-1] ^ mask[1:, 1:]  # lower-right neighbour
  return b


def boundary_radius(
    height: int, width: int, tolerance: float = BOUNDARY_TOLERANCE
) -> int:
  """Tolerance radius in pixels: ceil(tolerance * sqrt(H^2 + W^2)).

  `math.sqrt` of the exact integer H^2 + W^2 is correctly rounded, like the
  official `np.linalg.norm(shape)`, so the ceil sees the same double.

  Args:
    height: image height H.
    width: image width W.
    tolerance: fraction of the diagonal (0.008 in the official tool).

  Returns:
    The radius r (8 for 480x854, 7 for 480x720).
  """
  return int(math.ceil(tolerance * math.sqrt(height * height + width * width)))


def disk(radius: int) -> np.ndarray:
  """Disk structuring element {(dy, dx): dy^2 + dx^2 <= r^2}.

  Args:
    radius: integer radius r >= 0.

  Returns:
    `[2r+1, 2r+1]` bool array (197 pixels for r = 8).
  """
  r = _int_radius(radius)
  d = np.arange(-r, r + 1)
  return d[:, None] ** 2 + d[None, :] ** 2 <= r * r


def binary_dilation_disk(mask: np.ndarray, radius: int) -> np.ndarray:
  """Exact binary dilation of a mask by `disk(radius)`, zero outside.

  The disk is the union over rows dy of horizontal runs |dx| <= w(dy) with
  w(dy) = isqrt(r^2 - dy^2). So the mask is first dilated horizontally by
  every distinct run half-width (one pass that widens by one pixel at a
  time), then each row offset ORs in the horizontal dilation of its width:
  about 4r + 1 shifted ORs instead of the ~3r^2 of a naive offset loop. The
  result is bit-identical to OR-ing every disk offset, and pixels outside
  the image count as background (no border effects, like `cv2.dilate` on a
  binary image).

  Args:
    mask: `[H, W]` binary mask.
    radius: integer disk radius r >= 0.

  Returns:
    `[H, W]` bool dilated mask.
  """
  mask = np.asarray(mask, dtype=bool)
  if mask.ndim != 2:
    raise ValueError(f'expected an [H, W] mask, got {mask.shape}')
  r = _int_radius(radius)
  h, w = mask.shape
  half_widths = [math.isqrt(r * r - dy * dy) for dy in range(r + 1)]
  # Horizontal dilations by each needed half-width.
  by_width = {}
  cur = mask.copy()
  width = 0
  for target in sorted(set(half_widths)):
    while width < target:
      width += 1
      if width < w:
        cur[:, width:] |= mask[:, :-width]
        cur[:, :-width] |= mask[:, width:]
    by_width[target] = cur.copy()
  out = by_width[half_widths[0]].copy()
  for dy in range(1, min(r, h - 1) + 1):
    row_run = by_width[half_widths[dy]]
    out[dy:] |= row_run[:-dy]
    out[:-dy] |= row_run[dy:]
  return out


def boundary_f_measure(
    pred: np.ndarray, gt: np.ndarray, radius: Optional[int] = None
) -> float:
  """Contour accuracy F of two binary masks, the official rule.

  Boundaries come from `boundary_map`; precision is the fraction of predicted
  boundary pixels within `radius` of the ground-truth boundary and recall the
  converse (both via `disk` dilation). Both boundaries empty gives 1; exactly
  one empty gives 0 (an empty prediction, and also a whole-frame prediction,
  whose boundary is empty); otherwise 2PR / (P + R), or 0 when P + R = 0.

  Args:
    pred: `[H, W]` predicted mask (nonzero = in).
    gt: `[H, W]` ground-truth mask, same shape.
    radius: tolerance in pixels; default `boundary_radius(H, W)`.

  Returns:
    F as a Python float in [0, 1].
  """
  pred = np.asarray(pred, dtype=bool)
  gt = np.asarray(gt, dtype=bool)
  _check_same_shape(pred, gt)
  if radius is None:
    radius = boundary_radius(*gt.shape)
  return _f_from_boundaries(
      boundary_map(pred), boundary_map(gt), _int_radius(radius)
  )


def _f_from_boundaries(bp: np.ndarray, bg: np.ndarray, radius: int) -> float:
  """F of two `[H, W]` bool boundary maps (see `boundary_f_measure`)."""
  n_pred = np.count_nonzero(bp)
  n_gt = np.count_nonzero(bg)
  if n_pred == 0 and n_gt == 0:
    return 1.0
  if n_pred == 0 or n_gt == 0:
    return 0.0
  # Only the box around both boundaries (grown by the radius) can hold a
  # match, and every source pixel lies inside it, so dilating the crop gives
  # the same counts as dilating the full frame.
  rows = np.flatnonzero(np.any(bp, axis=1) | np.any(bg, axis=1))
  cols = np.flatnonzero(np.any(bp, axis=0) | np.any(bg, axis=0))
  y0, y1 = max(rows[0] - radius, 0), rows[-1] + radius + 1
  x0, x1 = max(cols[0] - radius, 0), cols[-1] + radius + 1
  bp = bp[y0:y1, x0:x1]
  bg = bg[y0:y1, x0:x1]
  precision = np.count_nonzero(bp & binary_dilation_disk(bg, radius)) / n_pred
  recall = np.count_nonzero(bg & binary_dilation_disk(bp, radius)) / n_gt
  if precision + recall == 0:
    return 0.0
  # Same expression (and so the same rounding) as the official tool.
  return 2 * precision * recall / (precision + recall)


def decay_cut_points(n: int) -> Tuple[int, ...]:
  """The five official Decay cut points for `n` per-frame values.

  c_i = round_half_up(1 + i (n - 1) / 4) - 1 for i = 0..4 (the official tool
  adds 1e-10 before numpy's half-to-even round, so exact halves go up). In
  integers that is (i (n - 1) + 6) // 4 - 1. The official tool stores the
  cut points as uint8, which would wrap for n > 256; this does not.

  Args:
    n: number of evaluated frames, >= 1.

  Returns:
    `(c_0, ..., c_4)`, with c_0 = 0 and c_4 = n - 1. For n = 7: (0, 2, 3, 5, 6).
  """
  if n < 1:
    raise ValueError(f'need at least one value, got n={n}')
  return tuple((i * (n - 1) + 6) // 4 - 1 for i in range(5))


def mean_recall_decay(values: Sequence[float]) -> Tuple[float, float, float]:
  """Official per-object summary of per-frame J or F values.

  Args:
    values: `[n]` per-frame values of one object over its evaluated frames,
      in frame order (n >= 1).

  Returns:
    `(mean, recall, decay)`: the mean; the fraction of values strictly
    greater than 0.5; and mean(bin 0) - mean(bin 3), where bin i is
    `values[c_i .. c_{i+1}]` inclusive at both ends (`decay_cut_points`), so
    neighbouring bins share a frame.
  """
  v = np.asarray(values, dtype=np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f'expected a non-empty [n] array, got shape {v.shape}')
  c = decay_cut_points(v.size)
  mean = float(np.mean(v))
  recall = float(np.mean(v > 0.5))
  decay = float(np.mean(v[c[0] : c[1] + 1]) - np.mean(v[c[3] : c[4] + 1]))
  return mean, recall, decay


def evaluate_sequence(
    gt_masks: np.ndarray,
    pred_masks: np.ndarray,
    *,
    sequence: str = 'sequence',
    frame_names: Optional[Sequence[str]] = None,
) -> Dict[str, np.ndarray]:
  """Per-object, per-frame J and F of one sequence, and their summaries.

  Follows the official semi-supervised protocol: the first and last frames
  are not evaluated (frames 1..T-2 are), K is the largest label of the first
  ground-truth frame (void, 255, aside), object k is `label == k` in both
  maps (ground-truth labels above K are background), void pixels of the
  ground truth are left out of both masks (J and F), as the official
  evaluator does, and an object the prediction never contains is scored as
  an empty prediction.

  Args:
    gt_masks: `[T, H, W]` integer ground-truth label maps, T >= 3.
    pred_masks: `[T, H, W]` integer predicted label maps. Frames 0 and T-1
      are not read (they may hold anything).
    sequence: sequence name, used in error messages.
    frame_names: optional `[T]` frame names (file stems) for error messages;
      default the frame indices.

  Returns:
    A dict with `num_objects` (K), `frames` (`[T-2]` names of the evaluated
    frames), `J` and `F` (`[K, T-2]` float64 per-frame values), and
    `J-Mean`, `J-Recall`, `J-Decay`, `F-Mean`, `F-Recall`, `F-Decay` (`[K]`
    float64 each).

  Raises:
    ValueError: if the shapes differ or are not `[T, H, W]`, if T < 3, if the
      first ground-truth frame has no object, or if an evaluated prediction
      frame contains a label greater than K (the official tool stops there
      too; the message names the sequence, frame and label).
  """
  gt_masks = np.asarray(gt_masks)
  pred_masks = np.asarray(pred_masks)
  if gt_masks.ndim != 3:
    raise ValueError(
        f'{sequence}: ground truth must be [T, H, W], got ' f'{gt_masks.shape}'
    )
  if pred_masks.shape != gt_masks.shape:
    raise ValueError(
        f'{sequence}: prediction shape {pred_masks.shape} != '
        f'ground-truth shape {gt_masks.shape}'
    )
  t, h, w = gt_masks.shape
  if frame_names is None:
    frame_names = [str(i) for i in range(t)]
  if len(frame_names) != t:
    raise ValueError(
        f'{sequence}: {len(frame_names)} frame names for {t} ' 'frames'
    )
  if t < 3:
    raise ValueError(
        f'{sequence}: {t} frames; the first and last frames are '
        'not evaluated, so at least 3 are needed'
    )
  void = gt_masks == 255
  gt_masks = np.where(void, 0, gt_masks)
  num_objects = int(gt_masks[0].max())
  if num_objects == 0:
    raise ValueError(
        f'{sequence}: the first ground-truth frame '
        f'{frame_names[0]} contains no object'
    )
  for i in range(1, t - 1):
    top = int(pred_masks[i].max())
    if top > num_objects:
      raise ValueError(
          f'{sequence}: prediction frame {frame_names[i]} contains label '
          f'{top}, but the sequence has only {num_objects} object(s) (K = '
          'the largest label of the first ground-truth frame)'
      )

  radius = boundary_radius(h, w)
  n = t - 2
  j = np.zeros((num_objects, n), np.float64)
  f = np.zeros((num_objects, n), np.float64)
  for i in range(n):
    gt, pred = gt_masks[i + 1], pred_masks[i + 1]
    for k in range(num_objects):
      g = gt == k + 1
      p = (pred == k + 1) & ~void[i + 1]
      j[k, i] = region_similarity(p, g)
      f[k, i] = _f_from_boundaries(boundary_map(p), boundary_map(g), radius)

  out = {
      'num_objects': num_objects,
      'frames': list(frame_names[1:-1]),
      'J': j,
      'F': f,
  }
  for name, values in (('J', j), ('F', f)):
    stats = np.array([mean_recall_decay(v) for v in values])  # [K, 3]
    for s, stat in enumerate(STATISTICS):
      out[f'{name}-{stat}'] = stats[:, s]
  return out


def _int_radius(radius) -> int:
  r = int(radius)
  if r != radius or r < 0:
    raise ValueError(f'radius must be a non-negative integer, got {radius}')
  return r


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(
        f'expected two [H, W] masks of the same shape, got '
        f'{a.shape} and {b.shape}'
    )
