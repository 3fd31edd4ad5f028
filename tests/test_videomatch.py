"""VideoMatch (`cfbi_jax.models.videomatch`) against naive NumPy references
of the paper's definitions: the soft matching layer (cosine similarity,
mean of the top K per set), extrusion and erosion by Euclidean distance,
the fusion rule of §3.4, the online-update sets of §3.3 and the
fixed-capacity buffer they are written to.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import losses
from cfbi_jax import models
from cfbi_jax import resize
from cfbi_jax import vos
from cfbi_jax.models import videomatch


def np_top_k_mean(values, k):
  if not len(values):
    return -1.0
  return float(np.mean(sorted(values, reverse=True)[:k]))


def test_top_k_mean_over_set_members():
  sim = np.array(
      [[0.9, 0.1, 0.5, 0.7, -0.2], [0.3, 0.8, 0.2, 0.6, 0.4]], np.float32
  )
  member = np.array([[1, 0, 1, 1, 1], [0, 1, 0, 0, 0]], bool)
  got = np.asarray(
      videomatch.top_k_mean(jnp.asarray(sim), jnp.asarray(member), 3)
  )
  np.testing.assert_allclose(got, [(0.9 + 0.7 + 0.5) / 3, 0.8], atol=1e-6)
  empty = videomatch.top_k_mean(jnp.asarray(sim), jnp.zeros((5,), bool), 3)
  np.testing.assert_array_equal(np.asarray(empty), [-1.0, -1.0])


@pytest.mark.parametrize('chunk_bytes', [None, 4000])
def test_soft_matching_layer(chunk_bytes):
  rng = np.random.default_rng(0)
  height, width, channels, n, slots, k = 4, 5, 6, 30, 3, 4
  query = rng.normal(size=(height, width, channels)).astype(np.float32)
  cands = rng.normal(size=(n, channels)).astype(np.float32)
  fg = rng.random((n, slots)) < 0.3
  bg = ~fg & (rng.random((n, slots)) < 0.8)
  fg[:, 2] = False  # An object with no template.
  s_f, s_b = videomatch.soft_matching(
      jnp.asarray(query),
      jnp.asarray(cands),
      jnp.asarray(fg),
      jnp.asarray(bg),
      k=k,
      max_chunk_bytes=chunk_bytes,
  )
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  cos = (
      unit(query.reshape(-1, channels).astype(np.float64))
      @ unit(cands.astype(np.float64)).T
  )
  for s in range(slots):
    for p in range(height * width):
      i, j = divmod(p, width)
      assert abs(s_f[s, i, j] - np_top_k_mean(cos[p][fg[:, s]], k)) < 1e-5
      assert abs(s_b[s, i, j] - np_top_k_mean(cos[p][bg[:, s]], k)) < 1e-5


def np_within(mask, radius, inclusive=False):
  """Pixels whose Euclidean distance to a True pixel is < radius (<=)."""
  h, w = mask.shape
  ys, xs = np.nonzero(mask)
  out = np.zeros_like(mask)
  for i in range(h):
    for j in range(w):
      sq = np.min((ys - i) ** 2 + (xs - j) ** 2) if len(ys) else np.inf
      out[i, j] = sq <= radius**2 if inclusive else sq < radius**2
  return out | mask


@pytest.mark.parametrize('radius', [1.0, 2.5, 4.0])
def test_extrude_and_erode_by_euclidean_distance(radius):
  rng = np.random.default_rng(int(radius * 10))
  masks = rng.random((2, 9, 11)) < 0.15
  masks[1, 2:7, 3:9] = True
  got = np.asarray(videomatch.extrude(jnp.asarray(masks), radius))
  for m, g in zip(masks, got):
    np.testing.assert_array_equal(g, np_within(m, radius))
  eroded = np.asarray(videomatch.erode(jnp.asarray(masks), radius))
  for m, e in zip(masks, eroded):
    # Inside, no pixel outside the mask (within the frame) at most r away.
    np.testing.assert_array_equal(e, m & ~np_within(~m, radius, True))


def test_fused_logits_argmax_is_the_papers_rule():
  rng = np.random.default_rng(1)
  probs = rng.random((2, 4, 6, 7)).astype(np.float32) * 0.9
  obj_valid = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  logits = np.asarray(
      videomatch.fused_logits(jnp.asarray(probs), jnp.asarray(obj_valid), 0.4)
  )
  for b in range(2):
    valid = np.flatnonzero(obj_valid[b])[1:]
    best = valid[np.argmax(probs[b, valid], axis=0)]
    want = np.where(probs[b, valid].max(0) < 0.4, 0, best)
    np.testing.assert_array_equal(np.argmax(logits[b], axis=0), want)


def test_update_sets_rule():
  rng = np.random.default_rng(2)
  slots, h, w = 4, 8, 9
  initial = rng.random((slots, h, w)) < 0.4
  extruded = rng.random((slots, h, w)) < 0.6
  labels = rng.integers(0, 3, (h, w))
  labels[2:7, 2:8] = 1
  final = rng.random((slots, h, w)).astype(np.float32)
  final[1, 2:7, 2:8] = 0.99
  obj_valid = np.array([1, 1, 1, 0], bool)
  to_fg, to_bg = videomatch.update_sets(
      jnp.asarray(initial),
      jnp.asarray(extruded),
      jnp.asarray(labels),
      jnp.asarray(final),
      jnp.asarray(obj_valid),
      confidence=0.95,
      erosion=1.0,
  )
  to_fg, to_bg = np.asarray(to_fg), np.asarray(to_bg)
  for k in range(slots):
    if k == 0 or not obj_valid[k]:
      assert not to_fg[k].any() and not to_bg[k].any()
      continue
    b = initial[k] & ~extruded[k]
    mine = labels == k
    eroded = np.zeros_like(mine)
    for i in range(h):
      for j in range(w):
        # Radius 1: the 4-neighbours and the pixel (outside the frame is in).
        near = [
            (i + di, j + dj)
            for di, dj in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
        ]
        eroded[i, j] = all(
            mine[y, x] for y, x in near if 0 <= y < h and 0 <= x < w
        )
    np.testing.assert_array_equal(to_bg[k], b)
    np.testing.assert_array_equal(to_fg[k], eroded & (final[k] > 0.95) & ~b)
  assert to_fg[1].any()  # The case is not vacuous.


def test_write_sets_is_a_ring_buffer():
  capacity, channels, slots = 5, 2, 3
  memory = {
      'features': jnp.zeros((capacity, channels)),
      'fg': jnp.zeros((capacity, slots), bool),
      'bg': jnp.zeros((capacity, slots), bool),
      'count': jnp.zeros((), jnp.int32),
  }
  ring = []  # Naive: (feature, fg, bg) list.
  rng = np.random.default_rng(3)
  for _ in range(4):
    n = 6
    feats = rng.normal(size=(n, channels)).astype(np.float32)
    to_fg = rng.random((n, slots)) < 0.25
    to_bg = rng.random((n, slots)) < 0.25
    memory = videomatch.write_sets(
        memory, jnp.asarray(feats), jnp.asarray(to_fg), jnp.asarray(to_bg)
    )
    chosen = [i for i in range(n) if to_fg[i].any() or to_bg[i].any()]
    for i in chosen[:capacity]:
      ring.append((feats[i], to_fg[i], to_bg[i]))
  assert int(memory['count']) == len(ring) > capacity  # It wrapped.
  for position in range(capacity):
    # The newest entry written at this position.
    newest = [e for n_, e in enumerate(ring) if n_ % capacity == position][-1]
    np.testing.assert_allclose(memory['features'][position], newest[0])
    np.testing.assert_array_equal(memory['fg'][position], newest[1])
    np.testing.assert_array_equal(memory['bg'][position], newest[2])


def _first_frame(seed, boxes):
  """`tiny_videomatch` (weights of seed 0) started on a random 33x41 frame
  (`seed`) whose objects 1, 2, ... are `boxes` `(y0, y1, x0, x1)`:
  `(model, emb, labels [1, 33, 41], state, obj_valid [1, K + 1])`."""
  model = models.build(models.model_config('tiny_videomatch'), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(1, 33, 41, 3)), jnp.float32)
  emb, _ = model.embed(images)
  labels = np.zeros((1, 33, 41), np.int32)
  for k, (y0, y1, x0, x1) in enumerate(boxes, start=1):
    labels[0, y0:y1, x0:x1] = k
  slots = len(boxes) + 1
  state = vos.start_state(model, emb, jnp.asarray(labels), 1, slots)
  return model, emb, labels, state, jnp.ones((1, slots), bool)


def test_online_update_reaches_the_matching():
  """A pixel added to an object's background set by the update changes
  that object's background score in the next frame, and only at inference
  (the training pairs do not use the buffer)."""
  model, emb, labels, state, obj_valid = _first_frame(4, [(8, 16, 10, 18)])

  def segment(st, training=False):
    out = model.segment(st, emb, obj_valid, training=training)
    return out.logits, out.aux

  _, before = segment(state)
  grid = emb.scales[0].shape[1:3]
  # Outlier removal: object 1's probability survives only within d_c (in
  # frame pixels, scaled to the grid) of its previous mask.
  prev = np.asarray(resize.resize_labels_nearest(labels[0], grid)) == 1
  radius = model.outlier_distance * grid[0] / labels.shape[1]
  keep = np_within(prev, radius)
  np.testing.assert_array_equal(
      np.asarray(before['final'])[0, 1],
      np.where(keep, np.asarray(before['initial'])[0, 1], 0.0),
  )
  assert not keep.all()  # The case removes something.
  # Every pixel was first predicted as object 1 and removed as an outlier.
  update = {
      'initial_fg': jnp.ones((1, 2) + grid, bool),
      'extruded': jnp.zeros((1, 2) + grid, bool),
      'final': jnp.zeros((1, 2) + grid),
      'obj_valid': obj_valid,
  }
  moved = vos.advance_state(
      model, state, emb, jnp.asarray(labels), jnp.asarray([False]), update
  )
  assert int(moved.memory['count'][0]) == grid[0] * grid[1]
  _, after = segment(moved)
  # The frame's own features are now in object 1's background set: each
  # pixel's best background match is itself (cosine 1).
  assert np.all(
      np.asarray(after['bg_score'])[0, 1]
      > np.asarray(before['bg_score'])[0, 1] - 1e-6
  )
  assert np.any(
      np.asarray(after['bg_score'])[0, 1]
      > np.asarray(before['bg_score'])[0, 1] + 1e-3
  )
  _, trained = segment(moved, training=True)
  np.testing.assert_allclose(trained['bg_score'], before['bg_score'], atol=1e-6)


def test_blocked_top_k_is_exact():
  """`set_top_k_mean` with blocks equals the plain top K of every set, with
  ties, an empty set, a set smaller than K and rows that do not fill the
  last block."""
  rng = np.random.default_rng(1)
  sim = np.round(rng.uniform(-1, 1, size=(9, 1003)), 1).astype(np.float32)
  member = rng.random((4, 1003)) < 0.5
  member[1] = False  # Empty.
  member[2] = False
  member[2, [3, 500, 1002]] = True  # Three members, K = 20.
  member[3] = rng.random(1003) < 0.05
  want = np.stack(
      [
          [np_top_k_mean(sim[q][member[s]], 20) for q in range(9)]
          for s in range(4)
      ]
  )
  for block in (0, 8, 12):
    got = videomatch.set_top_k_mean(
        jnp.asarray(sim), jnp.asarray(member), 20, block
    )
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_training_scores_each_object_against_its_background():
  """In training, `segment` gives z_k = w (S_F - S_B) as object logits, and
  the frame loss is their per-object cross-entropy (not the fused
  logits'); inference gives none."""
  model, emb, labels, state, obj_valid = _first_frame(
      5, [(8, 16, 10, 18), (20, 30, 25, 35)]
  )
  out = model.segment(state, emb, obj_valid, training=True)
  w = float(model.softmax_weight[...])
  want = w * (np.asarray(out.aux['fg_score']) - np.asarray(out.aux['bg_score']))
  np.testing.assert_allclose(
      out.object_logits, np.moveaxis(want, 1, -1), rtol=1e-5, atol=1e-5
  )
  assert model.segment(state, emb, obj_valid).object_logits is None
  up = vos.frame_segmentation(
      model, state, emb, obj_valid, (33, 41), training=True
  )
  loss = vos.frame_loss(up, jnp.asarray(labels), obj_valid, 33 * 41)
  np.testing.assert_allclose(
      loss,
      np.mean(
          losses.object_binary_cross_entropy(
              up.object_logits, jnp.asarray(labels), obj_valid
          ),
          axis=(1, 2),
      ),
      rtol=1e-6,
  )
  assert not np.allclose(
      loss, losses.bootstrapped_cross_entropy(up.logits, labels, 33 * 41)
  )
