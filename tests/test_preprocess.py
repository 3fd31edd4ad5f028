"""Tests for `cfbi_jax.preprocess`: clip ops eagerly and inside tf.data.

Every op is run eagerly and inside `tf.data.Dataset.map` (with the spatial
sizes unknown to the graph, as in the pipeline) and must give identical
results. Frames whose pixels encode their own coordinates show where a crop
came from, so consistency across the clip is checked exactly; the balanced
crop's guarantee is checked against a brute-force search over all windows.
"""

import numpy as np
import pytest
import tensorflow as tf

from cfbi_jax import preprocess


def coordinate_clip(labels):
  """A clip whose frame pixel (t, y, x) is (y, x, t) (sizes <= 256)."""
  labels = np.asarray(labels, np.uint8)
  t, h, w = labels.shape
  grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1)
  frames = np.concatenate(
      [
          np.broadcast_to(grid, (t, h, w, 2)),
          np.broadcast_to(np.arange(t)[:, None, None, None], (t, h, w, 1)),
      ],
      -1,
  )
  return {'frames': frames.astype(np.uint8), 'labels': labels}


def boxes(t=3, h=30, w=40, specs=((1, 2, 3, 8, 8), (2, 16, 24, 6, 10))):
  """`[t, h, w]` labels with boxes (id, top, left, height, width)."""
  labels = np.zeros((t, h, w), np.uint8)
  for obj, top, left, bh, bw in specs:
    labels[:, top : top + bh, left : left + bw] = obj
  return labels


def seed_of(k):
  return np.array([k, 17], np.int64)


def run_eager_and_mapped(op, clips, seeds):
  """Runs `op` on each (clip, seed) eagerly and inside one Dataset.map.

  Asserts that both give identical arrays and returns the outputs (numpy
  dicts). The dataset hides the clips' sizes from the graph, as the
  pipeline's loader does.
  """
  clips, seeds = list(clips), list(seeds)
  spec = {
      k: tf.TensorSpec([None] * np.ndim(v), tf.as_dtype(v.dtype))
      for k, v in clips[0].items()
  }
  ds = tf.data.Dataset.from_generator(
      lambda: zip(clips, seeds),
      output_signature=(spec, tf.TensorSpec([2], tf.int64)),
  )
  mapped = list(ds.map(op).as_numpy_iterator())
  outs = []
  for clip, seed, m in zip(clips, seeds, mapped):
    tensors = {k: tf.constant(v) for k, v in clip.items()}
    eager = {k: v.numpy() for k, v in op(tensors, tf.constant(seed)).items()}
    assert eager.keys() == m.keys()
    for k in eager:
      np.testing.assert_array_equal(eager[k], m[k], err_msg=k)
    outs.append(eager)
  assert len(outs) == len(clips)
  return outs


def run_seeds(op, clip, num_seeds):
  """`run_eager_and_mapped` on one clip with seeds 0..num_seeds-1."""
  return run_eager_and_mapped(
      op, [clip] * num_seeds, [seed_of(k) for k in range(num_seeds)]
  )


def scale(clip, seed, low=1.0, high=1.3, short_edge=40):
  return preprocess.random_scale(
      clip, seed, scale_range=(low, high), short_edge=short_edge
  )


def crop(clip, seed, size=13, tries=5, min_fg=0.0, min_px=10, balanced=True):
  return preprocess.balanced_random_crop(
      clip,
      seed,
      crop_size=size,
      max_tries=tries,
      min_foreground=min_fg,
      min_object_pixels=min_px,
      balanced=balanced,
  )


def select(clip, seed, max_objects=2, min_px=10):
  return preprocess.select_objects(
      clip, seed, max_objects=max_objects, min_object_pixels=min_px
  )


def flip(clip, seed, prob=0.5):
  return preprocess.random_flip(clip, seed, prob=prob)


OPS = {'scale': scale, 'crop': crop, 'select': select, 'flip': flip}


@pytest.mark.parametrize('name', sorted(OPS))
def test_ops_eager_equal_mapped(name):
  for out in run_seeds(OPS[name], coordinate_clip(boxes()), 3):
    assert out['frames'].dtype == np.uint8 and out['labels'].dtype == np.uint8
    assert out['labels'].shape == out['frames'].shape[:3]


def test_sample_frame_indices_eager_equal_mapped_and_rules():
  def op(n, seed, max_gap=3):
    return preprocess.sample_frame_indices(
        seed,
        n,
        num_frames=3,
        max_gap=max_gap,
        reverse_prob=0.5,
        reference_tries=4,
    )

  ds = tf.data.Dataset.from_tensor_slices(
      (np.full(40, 100, np.int32), np.stack([seed_of(k) for k in range(40)]))
  )
  mapped = list(ds.map(op).as_numpy_iterator())
  directions = set()
  for k, m in enumerate(mapped):
    e = op(tf.constant(100), tf.constant(seed_of(k)))
    np.testing.assert_array_equal(e['sequence'].numpy(), m['sequence'])
    np.testing.assert_array_equal(e['reference'].numpy(), m['reference'])
    assert m['sequence'].shape == (4,) and m['reference'].shape == (4,)
    steps = np.diff(m['sequence'])
    # A long video: no reflection, gaps 1..3 all one way (forward/reversed).
    assert np.all((steps >= 1) & (steps <= 3)) or np.all(
        (steps <= -1) & (steps >= -3)
    ), m['sequence']
    directions.add(int(np.sign(steps[0])))
    assert np.all((m['reference'] >= 0) & (m['reference'] < 100))
  assert directions == {-1, 1}
  for k in range(10):
    consecutive = op(tf.constant(100), tf.constant(seed_of(k)), max_gap=1)
    assert set(np.abs(np.diff(consecutive['sequence'].numpy()))) == {1}
    short = op(tf.constant(2), tf.constant(seed_of(k)))  # Reflected.
    assert set(short['sequence'].numpy()) <= {0, 1}
    assert set(short['reference'].numpy()) <= {0, 1}


def test_pair_sampling_draws_every_frame_uniformly():
  """`pairs` (VideoMatch's training pairs): each sampled frame is uniform
  over the video, independent of the others: over 200 draws of 4 frames
  from 10, every frame index appears, gaps are not bounded by `max_gap`,
  and about 1/10 of the neighbours coincide."""
  seqs = np.stack(
      [
          preprocess.sample_frame_indices(
              tf.constant(seed_of(k)),
              tf.constant(10),
              num_frames=3,
              max_gap=1,
              reverse_prob=0.0,
              reference_tries=2,
              pairs=True,
          )['sequence'].numpy()
          for k in range(200)
      ]
  )
  assert seqs.shape == (200, 4)
  assert set(seqs.ravel()) == set(range(10))
  counts = np.bincount(seqs.ravel(), minlength=10)
  assert counts.min() > 40 and counts.max() < 120  # 80 expected each.
  steps = np.abs(np.diff(seqs, axis=1))
  assert steps.max() >= 5
  assert 0.04 < np.mean(steps == 0) < 0.2


def test_random_scale_size_and_alignment():
  # Label stripes that alternate every pixel row would alias; blocks of 6
  # pixels survive nearest resizing, and uniform frames stay exact.
  labels = np.kron(np.arange(20).reshape(4, 5) % 3, np.ones((6, 8)))
  labels = np.stack([labels, labels[::-1], labels[:, ::-1]]).astype(np.uint8)
  frames = np.broadcast_to(
      np.array([10, 120, 250], np.uint8), labels.shape + (3,)
  ).copy()
  sizes = set()
  for out in run_seeds(scale, {'frames': frames, 'labels': labels}, 8):
    h, w = out['labels'].shape[1:]
    assert 40 <= h <= 52 and abs(w - h * 40 / 24) <= 1, (h, w)
    sizes.add((h, w))
    np.testing.assert_array_equal(
        out['frames'], np.broadcast_to(frames[0, 0, 0], (3, h, w, 3))
    )
    # TF nearest neighbour, half-pixel centres, the same map for every frame.
    ys = np.minimum(((np.arange(h) + 0.5) * 24 / h).astype(int), 23)
    xs = np.minimum(((np.arange(w) + 0.5) * 40 / w).astype(int), 39)
    np.testing.assert_array_equal(out['labels'], labels[:, ys][:, :, xs])
  assert len(sizes) > 1


def test_crop_same_window_in_every_frame():
  labels = np.random.default_rng(0).integers(0, 3, (3, 30, 40)).astype(np.uint8)
  clip = coordinate_clip(labels)
  origins = set()
  for out in run_seeds(crop, clip, 10):
    assert out['frames'].shape == (3, 13, 13, 3)
    y0, x0 = int(out['frames'][0, 0, 0, 0]), int(out['frames'][0, 0, 0, 1])
    origins.add((y0, x0))
    expected = coordinate_clip(labels)['frames'][:, y0 : y0 + 13, x0 : x0 + 13]
    np.testing.assert_array_equal(out['frames'], expected)
    np.testing.assert_array_equal(
        out['labels'], labels[:, y0 : y0 + 13, x0 : x0 + 13]
    )
  assert len(origins) > 3


def test_crop_of_small_image_is_resized():
  clip = coordinate_clip(boxes(h=10, w=40, specs=((1, 2, 3, 6, 8),)))
  (out,) = run_seeds(lambda c, s: crop(c, s, size=20), clip, 1)
  assert out['frames'].shape == (3, 20, 20, 3)
  assert out['labels'].shape == (3, 20, 20)


def brute_force_fractions(reference, size):
  h, w = reference.shape
  fg = reference > 0
  return np.array(
      [
          [fg[y : y + size, x : x + size].mean() for x in range(w - size + 1)]
          for y in range(h - size + 1)
      ]
  )


def test_balanced_crop_reaches_threshold_whenever_possible():
  rng = np.random.default_rng(1)
  size, clips, best = 9, [], []
  for _ in range(12):
    labels = np.zeros((2, 20, 24), np.uint8)
    for obj in range(1, 3):  # Two random small boxes.
      top, left = rng.integers(0, 16), rng.integers(0, 20)
      bh, bw = rng.integers(2, 6, size=2)
      labels[:, top : top + bh, left : left + bw] = obj
    clips.append(coordinate_clip(labels))
    best.append(brute_force_fractions(labels[0], size).max())
  checked = {True: 0, False: 0}
  for threshold in (0.05, 0.15, 0.3):
    op = lambda c, s, t=threshold: crop(
        c, s, size=size, tries=3, min_fg=t, min_px=0
    )
    outs = run_eager_and_mapped(op, clips, [seed_of(k) for k in range(12)])
    for out, possible in zip(outs, best):
      reached = (out['labels'][0] > 0).mean() >= threshold
      assert reached == (possible >= threshold), (threshold, possible)
      checked[bool(possible >= threshold)] += 1
  assert checked[True] and checked[False]


def test_normal_crop_is_the_first_random_window():
  """balanced=False (the ablation's normal crop) keeps the first random
  window even when it shows no object; the balanced crop would move on."""
  labels = np.zeros((2, 30, 30), np.uint8)
  labels[:, :4, :4] = 1  # One object in a corner: most windows miss it.
  clip = coordinate_clip(labels)
  seeds = [seed_of(k) for k in range(12)]
  normal = run_eager_and_mapped(
      lambda c, s: crop(c, s, size=9, balanced=False, min_px=3),
      [clip] * 12,
      seeds,
  )
  one_try = run_eager_and_mapped(
      lambda c, s: crop(c, s, size=9, tries=1, min_px=-1), [clip] * 12, seeds
  )
  balanced = run_eager_and_mapped(
      lambda c, s: crop(c, s, size=9, min_px=3), [clip] * 12, seeds
  )
  empty = 0
  for n, o, b in zip(normal, one_try, balanced):
    # Same window as one unconditional try of the same seed.
    np.testing.assert_array_equal(n['frames'], o['frames'])
    empty += int(not n['labels'][0].any())
    assert (b['labels'][0] == 1).sum() > 3
  assert empty >= 6


def reference_fallback(reference, size):
  """NumPy statement of `best_foreground_window`."""
  h, w = reference.shape
  fg = reference > 0
  counts = brute_force_fractions(reference, size) * size * size
  rows, cols = np.nonzero(fg.any(1))[0], np.nonzero(fg.any(0))[0]
  if rows.size:
    cy = (rows[0] + rows[-1] + 1 - size) // 2
    cx = (cols[0] + cols[-1] + 1 - size) // 2
  else:
    cy, cx = (h - size) // 2, (w - size) // 2
  cy, cx = np.clip(cy, 0, h - size), np.clip(cx, 0, w - size)
  best = None
  for y in range(h - size + 1):
    for x in range(w - size + 1):
      key = (-round(counts[y, x]), (y - cy) ** 2 + (x - cx) ** 2)
      if best is None or key < best[0]:
        best = (key, (y, x))
  return best[1]


@pytest.mark.parametrize(
    'specs,expected',
    [
        # One object that fits: the window centred on its bounding box.
        (((1, 10, 12, 5, 7),), (8, 11)),
        # Near a corner: the centred window is clipped to the image.
        (((1, 0, 0, 3, 3),), (0, 0)),
        # No foreground: the image centre.
        ((), (8, 10)),
        # Two far objects: the bigger one wins, centred as near as possible.
        (((1, 0, 0, 6, 6), (2, 20, 24, 3, 3)), None),
    ],
)
def test_fallback_is_deterministic(specs, expected):
  labels = boxes(t=2, h=25, w=30, specs=specs)
  # Tries that cannot succeed (threshold above 1) force the fallback.
  op = lambda c, s: crop(c, s, size=9, tries=2, min_fg=1.1)
  outs = {
      (int(out['frames'][0, 0, 0, 0]), int(out['frames'][0, 0, 0, 1]))
      for out in run_seeds(op, coordinate_clip(labels), 4)
  }
  assert len(outs) == 1
  want = reference_fallback(labels[0], 9)
  assert outs == {tuple(int(v) for v in want)}
  if expected is not None:
    assert want == expected
  no_tries = preprocess.best_foreground_window(
      tf.constant(labels[0]), (tf.constant(9), tf.constant(9))
  ).numpy()
  assert tuple(no_tries) == tuple(want)


def test_select_objects_relabels_and_marks_valid():
  labels = boxes(
      t=3, specs=((3, 0, 0, 5, 5), (7, 10, 10, 2, 2), (9, 20, 20, 6, 6))
  )
  labels[2, 25:28, 0:4] = 5  # Absent from the reference: background.
  (out,) = run_seeds(
      lambda c, s: select(c, s, max_objects=3), coordinate_clip(labels), 1
  )
  expected = np.zeros_like(labels)
  expected[labels == 3] = 1
  expected[labels == 9] = 2  # Id 7 has 4 <= 10 pixels: dropped.
  np.testing.assert_array_equal(out['labels'], expected)
  np.testing.assert_array_equal(out['object_valid'], [True, True, True, False])


def test_select_objects_subsamples_at_random():
  specs = tuple((obj, 6 * obj, 2, 4, 4) for obj in range(1, 5))
  labels = boxes(t=2, h=30, w=10, specs=specs)
  kept_sets = set()
  op = lambda c, s: select(c, s, max_objects=2, min_px=3)
  for out in run_seeds(op, coordinate_clip(labels), 12):
    np.testing.assert_array_equal(out['object_valid'], [True, True, True])
    kept = tuple(
        sorted(int(labels[0][out['labels'][0] == new][0]) for new in (1, 2))
    )
    kept_sets.add(kept)
    # Renumbered in original-id order, identically in every frame.
    assert kept[0] < kept[1]
    for new, old in enumerate(kept, start=1):
      np.testing.assert_array_equal(out['labels'] == new, labels == old)
    assert set(np.unique(out['labels'])) == {0, 1, 2}
  assert len(kept_sets) > 2


def test_select_objects_without_objects():
  labels = np.zeros((2, 8, 8), np.uint8)
  (out,) = run_seeds(select, coordinate_clip(labels), 1)
  np.testing.assert_array_equal(out['object_valid'], [True, False, False])
  assert not out['labels'].any()


def test_flip_whole_clip():
  clip = coordinate_clip(boxes())
  outcomes = set()
  for out in run_seeds(flip, clip, 10):
    flipped = out['frames'][0, 0, 0, 1] != 0
    outcomes.add(bool(flipped))
    ref = {key: v[:, :, ::-1] if flipped else v for key, v in clip.items()}
    np.testing.assert_array_equal(out['frames'], ref['frames'])
    np.testing.assert_array_equal(out['labels'], ref['labels'])
  assert outcomes == {True, False}
  (never,) = run_seeds(lambda c, s: flip(c, s, prob=0.0), clip, 1)
  np.testing.assert_array_equal(never['frames'], clip['frames'])
