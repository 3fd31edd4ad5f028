"""Tests for `cfbi_jax.losses`: the official loss fixture and hand cases.

`../shared/fixtures/parity/loss/loss.npz` holds the official
`Concat_CrossEntropyLoss` values at ten steps for two samples (3 and 4
classes, about 5% ignored pixels); they must match at every step (rtol 1e-5,
as the fixture README recommends). Skipped only when the folder is absent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfbi_jax import losses
from tests import parity_fixtures as pf


@pf.requires_parity
def test_official_loss_fixture():
  data = pf.load_npz('loss', 'loss.npz')
  loss_fn = jax.jit(losses.bootstrapped_cross_entropy)
  for i, step in enumerate(data['steps']):
    for sample in range(2):
      logits = np.moveaxis(data[f'logits_{sample}'], 1, -1)
      labels = data[f'labels_{sample}']
      k = losses.num_hard_pixels(
          int(step), labels.shape[1] * labels.shape[2], 0.15, 50000.0
      )
      assert k == data['top_k_pixels'][i]
      value = loss_fn(jnp.asarray(logits), jnp.asarray(labels), k)
      np.testing.assert_allclose(
          value[0], data['loss_hard_mining'][i, sample], rtol=1e-5
      )
  # The plain mean over non-ignored pixels, for reference.
  for sample in range(2):
    logits = np.moveaxis(data[f'logits_{sample}'], 1, -1)
    labels = data[f'labels_{sample}']
    per_pixel = losses.pixel_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels)
    )
    valid = labels != 255
    np.testing.assert_allclose(
        np.asarray(per_pixel)[valid].mean(),
        data['loss_plain_mean'][sample],
        rtol=1e-5,
    )


def test_hand_case():
  # Two classes, 4 pixels; logits chosen so per-pixel losses are known.
  logits = np.zeros((1, 1, 4, 2), np.float32)
  logits[0, 0, :, 1] = [0.0, 1.0, 2.0, -1.0]
  labels = np.array([[[0, 0, 1, 255]]])
  p = lambda z: np.log1p(np.exp(z))  # -log softmax of class 0 vs z
  expected = np.array([p(0.0), p(1.0), p(-2.0), 0.0])
  got = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6)
  for k in (1, 2, 4):
    top = np.sort(expected)[::-1][:k].mean()
    np.testing.assert_allclose(
        losses.bootstrapped_cross_entropy(
            jnp.asarray(logits), jnp.asarray(labels), k
        )[0],
        top,
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    'step,expected', [(0, 1000), (25000, 575), (50000, 150), (90000, 150)]
)
def test_ramp_endpoints(step, expected):
  assert losses.num_hard_pixels(step, 1000, 0.15, 50000) == expected


def test_padded_slots_do_not_change_the_loss():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 5, 7))
  padded = np.concatenate(
      [logits, np.full((2, 5, 7, 2), -1e4, np.float32)], axis=-1
  )
  a = losses.bootstrapped_cross_entropy(
      jnp.asarray(logits), jnp.asarray(labels), 10
  )
  b = losses.bootstrapped_cross_entropy(
      jnp.asarray(padded), jnp.asarray(labels), 10
  )
  np.testing.assert_allclose(a, b, rtol=1e-6)


def np_object_bce(z, labels, obj_valid, ignore=255):
  """Naive per-pixel mean over valid objects k >= 1 of the binary CE."""
  b, h, w, s = z.shape
  out = np.zeros((b, h, w))
  for n in range(b):
    objects = [k for k in range(1, s) if obj_valid[n, k]]
    for i in range(h):
      for j in range(w):
        if labels[n, i, j] == ignore or not objects:
          continue
        terms = []
        for k in objects:
          p = 1.0 / (1.0 + np.exp(-float(z[n, i, j, k])))
          terms.append(-np.log(p if labels[n, i, j] == k else 1.0 - p))
        out[n, i, j] = np.mean(terms)
  return out


def test_object_binary_cross_entropy_against_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(scale=3.0, size=(2, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 5, 6))
  labels[0, 0, :3] = 255
  obj_valid = np.array([[True, True, True, False], [True, True, True, True]])
  labels[0][labels[0] == 3] = 0  # An invalid slot holds no pixel.
  got = losses.object_binary_cross_entropy(
      jnp.asarray(z), jnp.asarray(labels), jnp.asarray(obj_valid)
  )
  np.testing.assert_allclose(
      got, np_object_bce(z, labels, obj_valid), rtol=1e-5, atol=1e-6
  )
  # A sample without a valid object adds nothing.
  none = losses.object_binary_cross_entropy(
      jnp.asarray(z[:1]),
      jnp.asarray(labels[:1]),
      jnp.asarray([[True] + [False] * 3]),
  )
  np.testing.assert_array_equal(none, 0.0)


def test_object_loss_has_no_floor_and_no_dead_gradient():
  """VideoMatch's loss: 0 for perfect scores (z = +-w (1 - (-1)) = +-20 at
  w = 10, cosines at their ends) and a gradient of about 1 per pixel for
  scores that are as wrong as they can be, where the fused-logit
  cross-entropy of inference had a floor of ln 1.4 and no gradient."""
  labels = np.zeros((1, 4, 4), np.int32)
  labels[0, :2] = 1
  obj_valid = jnp.asarray([[True, True]])
  sign = np.where(labels[..., None] == np.arange(2), 1.0, -1.0)
  perfect = jnp.asarray(20.0 * sign, jnp.float32)

  def mean_loss(z):
    return jnp.mean(
        losses.object_binary_cross_entropy(z, jnp.asarray(labels), obj_valid)
    )

  assert float(mean_loss(perfect)) < 1e-8
  grad = np.asarray(jax.grad(mean_loss)(-perfect))[..., 1]
  assert float(mean_loss(-perfect)) > 19.0
  # d loss / d z_1 = -+(1 - sigmoid(-+20)) / 16 pixels: about 1/16 each,
  # pointing every score the right way.
  np.testing.assert_allclose(np.abs(grad), 1.0 / 16, rtol=1e-6)
  assert np.all(np.sign(grad) == -sign[..., 1])
  # The fused logits (log 0.4 vs log max(p, 1e-6)) of the same perfect
  # scores keep ln 1.4 on every foreground pixel.
  p = jax.nn.sigmoid(perfect[..., 1])
  fused = jnp.stack(
      [jnp.full_like(p, np.log(0.4)), jnp.log(jnp.maximum(p, 1e-6))], -1
  )
  fg_ce = np.asarray(losses.pixel_cross_entropy(fused, jnp.asarray(labels)))
  assert np.all(fg_ce[0, :2] > np.log(1.4) - 1e-6)
