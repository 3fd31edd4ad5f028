"""FEELVOS (`cfbi_jax.models.feelvos`) against naive NumPy references of
the paper's equations, and the properties of its dynamic head.

The references are the paper's definitions written as loops: eq. 1 (the
distance), eq. 2 (global matching: per object, the nearest first-frame
pixel of that object), eq. 4 (local matching: the nearest previous-frame
pixel of the object at most k pixels away in x and y, 1 if none).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import models
from cfbi_jax import vos
from cfbi_jax.models import feelvos
from tests.random_weights import randn, random_model


def np_distance(a, b):
  """Eq. 1 for two embedding vectors, in float64."""
  sq = float(np.sum((a.astype(np.float64) - b) ** 2))
  return 1.0 - 2.0 / (1.0 + np.exp(sq))


def test_distance_is_equation_1():
  sq = np.array([0.0, 0.01, 0.5, 2.0, 7.5, 40.0], np.float32)
  want = 1.0 - 2.0 / (1.0 + np.exp(sq.astype(np.float64)))
  got = np.asarray(feelvos.embedding_distance(jnp.asarray(sq)))
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got[0] == 0.0 and got[-1] == 1.0


def random_case(seed, refs=2, height=5, width=6, channels=4, slots=4):
  rng = np.random.default_rng(seed)
  query = rng.normal(size=(height, width, channels)).astype(np.float32) * 0.7
  ref = rng.normal(size=(refs, height, width, channels)).astype(np.float32)
  labels = rng.integers(-1, slots - 1, size=(refs, height, width))
  obj_valid = np.arange(slots) < slots - 1  # The last slot is padding.
  return query, ref, labels, obj_valid


@pytest.mark.parametrize('seed', [0, 1])
def test_global_matching_is_equation_2(seed):
  query, ref, labels, obj_valid = random_case(seed)
  labels[1, 0, 0] = 1  # Object 1 is present.
  labels[labels == 2] = 0  # Object 2 has no pixel.
  got = np.asarray(
      feelvos.global_distance_maps(
          jnp.asarray(query),
          jnp.asarray(ref),
          jnp.asarray(labels),
          jnp.asarray(obj_valid),
          num_chunks=3,
      )
  )
  height, width = query.shape[:2]
  for k in np.flatnonzero(obj_valid):
    pixels = ref[labels == k]
    for i in range(height):
      for j in range(width):
        want = (
            min(np_distance(query[i, j], r) for r in pixels)
            if len(pixels)
            else 1.0
        )
        assert abs(got[k, i, j] - want) < 2e-5, (k, i, j)


def test_local_matching_is_equation_4():
  query, ref, labels, obj_valid = random_case(3, refs=1, height=7, width=8)
  prev, prev_labels = ref[0], labels[0]
  window = 2
  got = np.asarray(
      feelvos.local_distance_maps(
          jnp.asarray(query),
          jnp.asarray(prev),
          jnp.asarray(prev_labels),
          jnp.asarray(obj_valid),
          window=window,
      )
  )
  height, width = query.shape[:2]
  for k in np.flatnonzero(obj_valid):
    for i in range(height):
      for j in range(width):
        near = [
            np_distance(query[i, j], prev[y, x])
            for y in range(max(0, i - window), min(height, i + window + 1))
            for x in range(max(0, j - window), min(width, j + window + 1))
            if prev_labels[y, x] == k
        ]
        want = min(near) if near else 1.0
        assert abs(got[k, i, j] - want) < 2e-5, (k, i, j)


def test_previous_probabilities_keep_agreeing_pixels_soft():
  # One sample, a 2x2 grid, 2 slots carried in 3.
  own = np.array(
      [[[[0.7, 0.3], [0.2, 0.8]], [[0.6, 0.4], [0.45, 0.55]]]], np.float32
  )
  labels = np.array([[[0, 1], [1, 1]]])  # Pixel (1, 0) disagrees.
  got = np.asarray(
      feelvos.previous_probabilities(jnp.asarray(own), jnp.asarray(labels), 3)
  )
  want = np.zeros((1, 2, 2, 3), np.float32)
  want[0, 0, 0, :2] = [0.7, 0.3]
  want[0, 0, 1, :2] = [0.2, 0.8]
  want[0, 1, 0] = [0.0, 1.0, 0.0]  # The final label, one-hot.
  want[0, 1, 1, :2] = [0.45, 0.55]
  np.testing.assert_allclose(got, want)


@pytest.fixture(scope='module')
def tiny():
  return models.build(models.model_config('tiny_feelvos'), rngs=nnx.Rngs(3))


def tiny_inputs(model, swap=False):
  """A 2-object frame pair; `swap` exchanges the ids of the objects."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 33, 41, 3)), jnp.float32)
  emb, _ = model.embed(images)
  labels = np.zeros((2, 33, 41), np.int32)
  labels[0, 4:14, 5:20] = 1
  labels[0, 18:30, 22:38] = 2
  labels[1, 6:16, 8:22] = 1
  labels[1, 17:29, 20:36] = 2
  if swap:
    labels = np.where(labels > 0, 3 - labels, 0)
  at = lambda i: jax.tree.map(lambda x: x[i : i + 1], emb)
  state = vos.start_state(model, at(0), jnp.asarray(labels[:1]), 1, 4)
  state = vos.advance_state(
      model, state, at(1), jnp.asarray(labels[1:]), jnp.asarray([False]), None
  )
  obj_valid = jnp.asarray([[True, True, True, False]])
  return state, at(1), obj_valid


def test_head_weights_are_shared_across_objects(tiny):
  """Exchanging two objects' ids exchanges their logits and nothing else:
  the head has no per-object weights (one head, run on every slot)."""
  state, current, obj_valid = tiny_inputs(tiny)
  out = tiny.segment(state, current, obj_valid)
  logits, aux = out.logits, out.aux
  state_s, current_s, _ = tiny_inputs(tiny, swap=True)
  swapped = tiny.segment(state_s, current_s, obj_valid).logits
  logits, swapped = np.asarray(logits), np.asarray(swapped)
  np.testing.assert_allclose(
      swapped[..., [0, 2, 1]], logits[..., :3], atol=1e-5
  )
  assert np.all(logits[..., 3] == vos.INVALID_LOGIT)
  # The previous-frame input is the carried one-hot ground truth.
  prev = np.asarray(aux['previous'])[0]
  assert set(np.unique(prev)) <= {0.0, 1.0}
  assert np.all(prev.sum(0) == 1.0)


def test_memory_follows_the_paper(tiny):
  state, current, obj_valid = tiny_inputs(tiny)
  labels = jnp.zeros((1, 33, 41), jnp.int32)
  own = jax.nn.softmax(jnp.zeros((1, 9, 11, 3)), axis=-1)
  # Training: the one-hot of the fed labels, whatever the update.
  trained = tiny.advance_memory(state, current, labels, own, training=True)
  assert np.all(np.asarray(trained)[..., 0] == 1.0)
  # Inference: the own probabilities where the final label agrees.
  inferred = np.asarray(tiny.advance_memory(state, current, labels, own))
  np.testing.assert_allclose(inferred[..., :3], 1 / 3, rtol=1e-6)
  assert inferred.shape == (1, 9, 11, 4)


# --------------------------------------------------------------- FeelvosHead
def _np_group_norm(x, groups, scale, bias, eps=1e-5):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _np_depthwise(x, kernel):
  """'same' depthwise conv; kernel `[k, k, 1, C]`."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.zeros_like(x)
  for dy in range(k):
    for dx in range(k):
      out += (
          xp[:, dy : dy + x.shape[1], dx : dx + x.shape[2]] * kernel[dy, dx, 0]
      )
  return out


def test_feelvos_head_matches_numpy():
  """Four [depthwise 7x7, 1x1, GN, ReLU] layers and a 1x1 logit, per slot."""
  rng = np.random.default_rng(7)
  in_dim, dim, groups = 6, 8, 2
  model = random_model(
      lambda: feelvos.FeelvosHead(in_dim, dim, groups, rngs=nnx.Rngs(0)), 5
  )
  x = randn(rng, 3, 9, 11, in_dim)
  got = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(x)))
  y = x.astype(np.float64)
  for dw, pw, norm in zip(model.depthwise, model.pointwise, model.norms):
    y = _np_depthwise(y, np.asarray(dw.kernel[...], np.float64))
    y = y @ np.asarray(pw.kernel[...], np.float64)[0, 0]
    y = np.maximum(
        _np_group_norm(
            y, groups, np.asarray(norm.scale[...]), np.asarray(norm.bias[...])
        ),
        0,
    )
  want = (
      y @ np.asarray(model.out.kernel[...])[0, 0, :, 0]
      + np.asarray(model.out.bias[...])[0]
  )
  assert got.shape == (3, 9, 11)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
