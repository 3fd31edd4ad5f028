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
