"""Tests for `cfbi_jax.metrics` (DAVIS 2017 J, F, Mean / Recall / Decay).

Hand-computed cases for each rule of
`../shared/fixtures/davis-metric/README.md` (boundary border rule, empty and
whole-frame F, the n = 7 Decay tie, the strict > 0.5 recall), and naive
per-pixel loop references for the boundary map, the disk dilation and F.
The fixture comparison with the official tool is in `test_davis_eval.py`.
"""

import time

import numpy as np
import pytest

from cfbi_jax import metrics


# ---------------------------------------------------------------- references
def naive_boundary(mask):
  """Boundary map by the literal rule, one pixel at a time."""
  h, w = mask.shape
  out = np.zeros((h, w), bool)
  for y in range(h):
    for x in range(w):
      for dy, dx in ((0, 1), (1, 0), (1, 1)):
        if y + dy < h and x + dx < w and mask[y, x] != mask[y + dy, x + dx]:
          out[y, x] = True
  return out


def naive_dilation(mask, radius):
  """Dilation by explicit loops over pixels and disk offsets."""
  h, w = mask.shape
  out = np.zeros((h, w), bool)
  for y in range(h):
    for x in range(w):
      for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
          if dy * dy + dx * dx > radius * radius:
            continue
          sy, sx = y + dy, x + dx
          if 0 <= sy < h and 0 <= sx < w and mask[sy, sx]:
            out[y, x] = True
  return out


def naive_f(pred, gt, radius):
  """F from explicit distance checks between boundary pixel lists."""
  bp = np.argwhere(naive_boundary(pred))
  bg = np.argwhere(naive_boundary(gt))
  if len(bp) == 0 and len(bg) == 0:
    return 1.0
  if len(bp) == 0 or len(bg) == 0:
    return 0.0

  def matched(a, b):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.count_nonzero((d2 <= radius * radius).any(axis=1))

  precision = matched(bp, bg) / len(bp)
  recall = matched(bg, bp) / len(bg)
  if precision + recall == 0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


def random_blobs(rng, shape, n=3):
  """A mask made of a few random rectangles plus speckle."""
  mask = rng.random(shape) < 0.03
  h, w = shape
  for _ in range(n):
    y, x = rng.integers(0, h), rng.integers(0, w)
    mask[y : y + rng.integers(1, h), x : x + rng.integers(1, w)] = True
  return mask


# ------------------------------------------------------------------------- J
def test_region_similarity_hand_computed():
  pred = np.zeros((3, 4), bool)
  gt = np.zeros((3, 4), bool)
  pred[0, 0:3] = True  # 3 pixels
  pred[1, 0] = True  # 4 pixels
  gt[0, 1:4] = True  # 3 pixels
  gt[1, 0:3] = True  # 6 pixels
  # Intersection: (0,1), (0,2), (1,0) = 3; union 4 + 6 - 3 = 7.
  assert metrics.region_similarity(pred, gt) == 3 / 7


def test_region_similarity_empty_cases():
  empty = np.zeros((5, 6), bool)
  some = empty.copy()
  some[2, 3] = True
  assert metrics.region_similarity(empty, empty) == 1.0
  assert metrics.region_similarity(empty, some) == 0.0
  assert metrics.region_similarity(some, empty) == 0.0
  assert metrics.region_similarity(some, some) == 1.0


def test_region_similarity_rejects_shape_mismatch():
  with pytest.raises(ValueError, match='same shape'):
    metrics.region_similarity(np.zeros((3, 4)), np.zeros((4, 3)))


# ------------------------------------------------------------- boundary map
@pytest.mark.parametrize(
    'mask, expected',
    [
        pytest.param(
            [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]],
            [
                [1, 1, 1, 0],  # (0, 0): lower-right neighbour differs
                [1, 0, 1, 0],  # last column: only the lower neighbour counts
                [1, 1, 1, 0],
                [0, 0, 0, 0],
            ],  # last row: only the right neighbour counts
            id='interior_square',
        ),
        pytest.param(
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]],
            [
                [0, 0, 0, 0],
                [0, 1, 1, 1],
                [0, 1, 0, 0],  # the object's right and lower sides lie on the
                [0, 1, 0, 0],
            ],  # image border, which is not a contour
            id='square_in_bottom_right_corner',
        ),
        pytest.param([[1, 1, 1, 1]] * 4, [[0, 0, 0, 0]] * 4, id='whole_frame'),
        pytest.param(
            [[1, 0, 0, 0]] + [[0, 0, 0, 0]] * 3,
            [[1, 0, 0, 0]] + [[0, 0, 0, 0]] * 3,
            id='top_left_pixel',
        ),
    ],
)
def test_boundary_map_hand_computed(mask, expected):
  mask = np.array(mask, bool)
  got = metrics.boundary_map(mask)
  assert got.dtype == bool
  np.testing.assert_array_equal(got, np.array(expected, bool))
  np.testing.assert_array_equal(got, naive_boundary(mask))


def test_boundary_map_matches_naive_on_random_masks():
  rng = np.random.default_rng(0)
  for shape in [(1, 1), (1, 7), (7, 1), (9, 13), (16, 11)]:
    for _ in range(5):
      mask = rng.random(shape) < 0.5
      np.testing.assert_array_equal(
          metrics.boundary_map(mask), naive_boundary(mask)
      )


# ----------------------------------------------------------------- dilation
def test_disk_and_radius():
  assert metrics.disk(8).sum() == 197
  assert metrics.disk(0).sum() == 1
  assert metrics.disk(1).sum() == 5
  assert metrics.disk(8).shape == (17, 17)
  assert metrics.boundary_radius(480, 854) == 8  # 0.008 * diag = 7.84
  assert metrics.boundary_radius(480, 720) == 7  # 6.92


@pytest.mark.parametrize('radius', [0, 1, 2, 3, 5, 8])
def test_dilation_matches_naive_loops(radius):
  rng = np.random.default_rng(radius)
  for shape in [(12, 17), (5, 23), (23, 4), (3, 3)]:
    mask = rng.random(shape) < 0.06
    np.testing.assert_array_equal(
        metrics.binary_dilation_disk(mask, radius),
        naive_dilation(mask, radius),
        err_msg=f'{shape}',
    )


def test_dilation_rejects_fractional_radius():
  with pytest.raises(ValueError, match='integer'):
    metrics.binary_dilation_disk(np.zeros((4, 4), bool), 2.5)


# ------------------------------------------------------------------------ F
def test_f_empty_and_whole_frame_cases():
  empty = np.zeros((20, 30), bool)
  whole = np.ones((20, 30), bool)
  obj = empty.copy()
  obj[5:12, 8:20] = True
  assert metrics.boundary_f_measure(empty, empty) == 1.0
  assert metrics.boundary_f_measure(empty, obj) == 0.0  # empty prediction
  assert metrics.boundary_f_measure(obj, empty) == 0.0
  # A whole-frame mask has no boundary at all.
  assert metrics.boundary_f_measure(whole, obj) == 0.0
  assert metrics.boundary_f_measure(whole, whole) == 1.0
  assert metrics.boundary_f_measure(whole, empty) == 1.0
  assert metrics.boundary_f_measure(obj, obj) == 1.0


def test_f_hand_computed_far_apart_and_within_tolerance():
  gt = np.zeros((10, 40), bool)
  gt[2:5, 2:5] = True
  far = np.zeros_like(gt)
  far[2:5, 30:33] = True
  # No boundary pixel of one is within 1 px of the other: P = R = 0.
  assert metrics.boundary_f_measure(far, gt, radius=1) == 0.0
  shifted = np.roll(gt, 1, axis=1)
  # A 1-px shift is fully tolerated by a radius-1 disk.
  assert metrics.boundary_f_measure(shifted, gt, radius=1) == 1.0


def test_f_hand_computed_partial():
  # Vertical edges in a 3x8 image. The boundary map marks column 2 for gt
  # (pixel 2 differs from pixel 3, rows 0..2) and columns 2 and 4 for pred
  # (its second edge is marked on the left, background side).
  gt = np.zeros((3, 8), bool)
  gt[:, :3] = True
  pred = gt.copy()
  pred[:, 5:] = True
  # Bp = 6 pixels, 3 of them (column 2) on Bg: P = 1/2; R = 1. F = 2/3.
  assert metrics.boundary_map(pred)[:, 4].all()
  assert metrics.boundary_f_measure(pred, gt, radius=1) == 2 * 0.5 / 1.5


def test_f_matches_naive_reference_on_random_masks():
  rng = np.random.default_rng(1)
  for trial in range(12):
    shape = (int(rng.integers(8, 30)), int(rng.integers(8, 30)))
    pred, gt = random_blobs(rng, shape), random_blobs(rng, shape)
    radius = int(rng.integers(0, 5))
    assert metrics.boundary_f_measure(pred, gt, radius) == pytest.approx(
        naive_f(pred, gt, radius), abs=1e-15
    ), trial
  # Default radius on a frame large enough that ceil(0.008 diag) = 2.
  shape = (150, 200)
  assert metrics.boundary_radius(*shape) == 2
  pred, gt = random_blobs(rng, shape), random_blobs(rng, shape)
  assert metrics.boundary_f_measure(pred, gt) == pytest.approx(
      naive_f(pred, gt, 2), abs=1e-15
  )


def test_f_is_fast_on_a_davis_frame():
  rng = np.random.default_rng(2)
  gt = np.zeros((480, 854), bool)
  gt[60:420, 100:700] = rng.random((360, 600)) < 0.5  # many boundary pixels
  pred = np.roll(gt, 5, axis=1)
  best = float('inf')
  for _ in range(5):
    start = time.perf_counter()
    metrics.boundary_f_measure(pred, gt)
    best = min(best, time.perf_counter() - start)
  assert best < 0.05, f'{best * 1e3:.1f} ms'


# ---------------------------------------------------- Mean / Recall / Decay
def test_decay_cut_points_official_rounding():
  # n = 7: 1 + i * 6 / 4 = 1, 2.5, 4, 5.5, 7; the halves round up.
  assert metrics.decay_cut_points(7) == (0, 2, 3, 5, 6)
  assert metrics.decay_cut_points(1) == (0, 0, 0, 0, 0)
  assert metrics.decay_cut_points(2) == (0, 0, 1, 1, 1)
  assert metrics.decay_cut_points(5) == (0, 1, 2, 3, 4)
  # The official expression: round(linspace(1, n, 5) + 1e-10) - 1.
  for n in range(1, 257):
    official = np.round(np.linspace(1, n, 5) + 1e-10) - 1
    assert metrics.decay_cut_points(n) == tuple(official.astype(int)), n


def test_mean_recall_decay_n7_tie():
  v = [1.0, 0.75, 0.5, 0.25, 0.125, 0.0625, 0.5]
  mean, recall, decay = metrics.mean_recall_decay(v)
  assert mean == pytest.approx(sum(v) / 7, abs=1e-15)
  assert recall == 2 / 7  # 1.0 and 0.75; the two 0.5 do not count
  # Bins: v[0..2] and v[5..6], inclusive. Half-to-even rounding would give
  # v[0..1] and v[5..6] instead (0.875 - 0.28125).
  assert decay == (1.0 + 0.75 + 0.5) / 3 - (0.0625 + 0.5) / 2


def test_recall_is_strictly_above_half():
  _, recall, _ = metrics.mean_recall_decay([0.5, 0.5, 0.5000001, 0.2])
  assert recall == 0.25


def test_mean_recall_decay_single_value():
  assert metrics.mean_recall_decay([0.3]) == (0.3, 0.0, 0.0)


# --------------------------------------------------------- evaluate_sequence
def _toy_sequence():
  """5 frames of 20x30 with two objects; prediction = GT shifted by 1 px."""
  gt = np.zeros((5, 20, 30), np.uint8)
  for t in range(5):
    gt[t, 2:8, 2 + t : 10 + t] = 1
    gt[t, 12:18, 15:25] = 2
  pred = np.roll(gt, 1, axis=2)
  return gt, pred


def test_evaluate_sequence_matches_per_frame_functions():
  gt, pred = _toy_sequence()
  res = metrics.evaluate_sequence(gt, pred, sequence='toy')
  assert res['num_objects'] == 2
  assert res['frames'] == ['1', '2', '3']
  assert res['J'].shape == res['F'].shape == (2, 3)
  for k in range(2):
    for i, t in enumerate(range(1, 4)):
      assert res['J'][k, i] == metrics.region_similarity(
          pred[t] == k + 1, gt[t] == k + 1
      )
      assert res['F'][k, i] == metrics.boundary_f_measure(
          pred[t] == k + 1, gt[t] == k + 1
      )
    assert (res['J-Mean'][k], res['J-Recall'][k], res['J-Decay'][k]) == (
        metrics.mean_recall_decay(res['J'][k])
    )
    assert (res['F-Mean'][k], res['F-Recall'][k], res['F-Decay'][k]) == (
        metrics.mean_recall_decay(res['F'][k])
    )


def test_evaluate_sequence_ignores_first_and_last_prediction():
  gt, pred = _toy_sequence()
  ref = metrics.evaluate_sequence(gt, pred)
  pred = pred.copy()
  pred[0] = 9  # labels > K in frames 0 and T-1 are never read
  pred[-1] = 0
  res = metrics.evaluate_sequence(gt, pred)
  np.testing.assert_array_equal(res['J'], ref['J'])
  np.testing.assert_array_equal(res['F'], ref['F'])


def test_evaluate_sequence_objects_from_first_frame():
  gt, pred = _toy_sequence()
  gt = gt.copy()
  gt[0][gt[0] == 2] = 0  # object 2 only appears later: K = 1
  gt[2, 0, 0] = 255  # void counts as background
  res = metrics.evaluate_sequence(gt, np.where(pred == 2, 0, pred))
  assert res['num_objects'] == 1
  assert res['J'].shape == (1, 3)


def test_evaluate_sequence_missing_object_scores_zero():
  gt, pred = _toy_sequence()
  res = metrics.evaluate_sequence(gt, np.where(pred == 2, 0, pred))
  np.testing.assert_array_equal(res['J'][1], 0.0)
  np.testing.assert_array_equal(res['F'][1], 0.0)
  assert res['J-Decay'][1] == 0.0


def test_evaluate_sequence_label_above_k_is_an_error():
  gt, pred = _toy_sequence()
  pred = pred.copy()
  pred[2, 0, 0] = 3
  names = [f'{i:05d}' for i in range(5)]
  with pytest.raises(
      ValueError,
      match=r'toy-seq: prediction frame 00002 '
      r'contains label 3.*only 2 object',
  ):
    metrics.evaluate_sequence(gt, pred, sequence='toy-seq', frame_names=names)


def test_evaluate_sequence_rejects_bad_shapes():
  gt, pred = _toy_sequence()
  with pytest.raises(ValueError, match='shape'):
    metrics.evaluate_sequence(gt, pred[:, :-1])
  with pytest.raises(ValueError, match='at least 3'):
    metrics.evaluate_sequence(gt[:2], pred[:2])


def test_evaluate_sequence_leaves_void_pixels_out():
  """Void (255) ground-truth pixels count for neither mask, as in the
  official evaluator: here the prediction's spill into a void band costs
  nothing, and J is the hand-computed IoU of the rest."""
  gt, pred = _toy_sequence()
  gt[:, :, 12:14] = 255  # A void band between the two objects.
  pred[:, 2:8, 12:14] = 1  # Object 1 spills into it.
  res = metrics.evaluate_sequence(gt, pred, sequence='void')
  assert res['num_objects'] == 2
  for i, t in enumerate(range(1, 4)):
    keep = gt[t] != 255
    g, p = (gt[t] == 1) & keep, (pred[t] == 1) & keep
    want = (g & p).sum() / (g | p).sum()
    assert res['J'][0, i] == pytest.approx(want)
    assert res['F'][0, i] == metrics.boundary_f_measure(p, g)
  # Counted as background instead, the spill would lower J.
  plain = metrics.evaluate_sequence(np.where(gt == 255, 0, gt), pred)
  assert np.all(plain['J'][0] < res['J'][0])
