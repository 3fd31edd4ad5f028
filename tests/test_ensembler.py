"""Tests for `cfbi_jax.ensembler`: logit heads, shapes, object independence.

`dynamic_logit` and `augment_background_logit` are compared with NumPy loops
written from `../shared/reference/cfbi-official-notes.md` §16. The bottleneck
and both collaborative ensemblers are built with tiny widths and checked for
output shapes on odd sizes (stride-2 stages give (n - 1) // 2 + 1, §2) and
for independence of the object slots that travel on the batch axis
(GroupNorm and GCT statistics are per sample, so running N objects together
must equal running each one alone).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import ensembler
from tests.random_weights import randn, random_model

TINY = dict(dim=32, refine_dim=16, gn_groups=4, gn_groups_refine=4)


# One jitted caller for every test: NNX caches the compilation per module
# graph and argument shapes, so "all objects" and "one object" compile once
# each per model.
call_jitted = nnx.jit(lambda model, *args: model(*args))


@pytest.fixture(autouse=True, scope='module')
def _fast_compiles():
  """Shorter XLA compiles (about half) for the tiny ensemblers."""
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)


# ------------------------------------------------------------- dynamic_logit
def test_dynamic_logit_matches_numpy():
  rng = np.random.default_rng(0)
  x = randn(rng, 3, 5, 7, 6)
  params = randn(rng, 3, 7)
  got = np.asarray(ensembler.dynamic_logit(jnp.asarray(x), jnp.asarray(params)))
  want = np.zeros((3, 5, 7))
  for n in range(3):
    for i in range(5):
      for j in range(7):
        want[n, i, j] = sum(
            float(params[n, c]) * float(x[n, i, j, c]) for c in range(6)
        ) + float(params[n, 6])
  assert got.shape == (3, 5, 7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -------------------------------------------------- augment_background_logit
def np_augment_background(fg, bg, valid):
  out = fg.astype(np.float64).copy()
  b, k1 = valid.shape
  for bi in range(b):
    others = [k for k in range(1, k1) if valid[bi, k]]
    if others:
      out[bi, 0] = fg[bi, 0] + np.min(
          np.stack([bg[bi, k] for k in others]), axis=0
      )
  return out


@pytest.mark.parametrize(
    'valid',
    [
        pytest.param([[True, True, True, True]], id='all_valid'),
        pytest.param([[True, True, False, True]], id='middle_invalid'),
        pytest.param([[True, False, False, False]], id='only_background'),
        pytest.param(
            [[True, True, True, False], [True, False, False, False]],
            id='batch_mixed',
        ),
    ],
)
def test_augment_background_logit_matches_numpy(valid):
  valid = np.array(valid)
  rng = np.random.default_rng(1)
  b, k1 = valid.shape
  fg = randn(rng, b, k1, 4, 5)
  bg = randn(rng, b, k1, 4, 5)
  # Invalid slots hold values far below the rest: picked up only if not
  # masked out. bg_0 too (it is computed but never used).
  bg[~valid] = -1e3
  bg[:, 0] = -1e3
  got = np.asarray(
      ensembler.augment_background_logit(
          jnp.asarray(fg), jnp.asarray(bg), jnp.asarray(valid)
      )
  )
  want = np_augment_background(fg, bg, valid)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert np.all(np.abs(got) < 100)


def test_augment_background_logit_hand_case():
  fg = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
  bg = np.array([-50.0, 0.5, -0.25]).reshape(1, 3, 1, 1)
  got = np.asarray(
      ensembler.augment_background_logit(
          jnp.asarray(fg), jnp.asarray(bg), jnp.array([[True, True, True]])
      )
  )
  np.testing.assert_allclose(got.ravel(), [0.75, 2.0, 3.0])


# --------------------------------------------------------------- GNBottleneck
@pytest.mark.parametrize(
    'cin,cout,stride,dilation,out_hw',
    [
        (12, 32, 1, 1, (17, 21)),
        (32, 32, 1, 2, (17, 21)),
        (32, 64, 2, 1, (9, 11)),
        (64, 64, 2, 1, (9, 11)),
    ],
)
def test_gn_bottleneck_shapes(cin, cout, stride, dilation, out_hw):
  block = random_model(
      lambda: ensembler.GNBottleneck(
          cin, cout, stride, dilation, gn_groups=4, rngs=nnx.Rngs(0)
      ),
      0,
  )
  has_projection = stride != 1 or cin != cout
  assert (block.downsample_conv is not None) == has_projection
  x = jnp.ones((2, 17, 21, cin))
  out = jax.eval_shape(lambda v: block(v), x)
  assert out.shape == (2,) + out_hw + (cout,)


def test_gn_bottleneck_objects_independent():
  rng = np.random.default_rng(2)
  block = random_model(
      lambda: ensembler.GNBottleneck(
          8, 16, 2, 1, gn_groups=4, rngs=nnx.Rngs(0)
      ),
      1,
  )
  x = jnp.asarray(randn(rng, 3, 9, 7, 8))
  together = np.asarray(call_jitted(block, x))
  assert together.shape == (3, 5, 4, 16)
  for n in range(3):
    alone = np.asarray(call_jitted(block, x[n : n + 1]))
    np.testing.assert_allclose(together[n : n + 1], alone, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------ CollaborativeEnsembler
def assert_same_object(together, alone):
  """One object's logits from a batched run equal those of a batch-1 run.

  The tolerance is 1e-5 of the logit range: a batch of 1 changes XLA's
  convolution summation order, which moves float32 results of these
  16-block networks by about 2e-5 on logits of size ~6, while any leak
  between objects (statistics over the batch axis) changes them by O(1).
  """
  together, alone = np.asarray(together), np.asarray(alone)
  scale = max(1.0, float(np.abs(together).max()))
  np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5 * scale)


def test_collaborative_ensembler_shapes_and_independence():
  rng = np.random.default_rng(3)
  in_dim, low_dim, head_dim = 20, 8, 24
  model = random_model(
      lambda: ensembler.CollaborativeEnsembler(
          in_dim, low_dim, head_dim, rngs=nnx.Rngs(0), **TINY
      ),
      3,
  )
  n, h, w = 3, 17, 21
  x = jnp.asarray(randn(rng, n, h, w, in_dim))
  low = jnp.asarray(randn(rng, n, h, w, low_dim))
  head = jnp.asarray(randn(rng, n, head_dim))
  fg, bg = call_jitted(model, x, low, head)
  assert fg.shape == (n, h, w) and bg.shape == (n, h, w)
  assert np.all(np.isfinite(np.asarray(fg)))
  # The fg and bg heads are different Linears.
  assert not np.allclose(np.asarray(fg), np.asarray(bg))
  for i in range(n):
    alone = call_jitted(model, x[i : i + 1], low[i : i + 1], head[i : i + 1])
    assert_same_object(fg[i], alone[0][0])
    assert_same_object(bg[i], alone[1][0])


def test_collaborative_ensembler_inner_strides():
  # Stage outputs of the stride-2 layers on a 17 x 21 grid: 9 x 11, 5 x 6.
  model = random_model(
      lambda: ensembler.CollaborativeEnsembler(
          20, 8, 24, rngs=nnx.Rngs(0), **TINY
      ),
      6,
  )
  x = jnp.zeros((1, 17, 21, 20))
  head = jnp.zeros((1, 24))
  shapes = []

  def run(v):
    for gate, stage in zip(model.gates, model.stages):
      v = stage(gate(v, head))
      shapes.append(v.shape)
    return v

  jax.eval_shape(run, x)
  d = TINY['dim']
  assert shapes == [
      (1, 17, 21, d),
      (1, 17, 21, d),
      (1, 9, 11, 2 * d),
      (1, 9, 11, 2 * d),
      (1, 9, 11, 2 * d),
      (1, 5, 6, 2 * d),
      (1, 5, 6, 2 * d),
      (1, 5, 6, 2 * d),
  ]


def test_collaborative_ensembler_ms_shapes_and_independence():
  rng = np.random.default_rng(4)
  in_dims, low_dim, head_dim = (10, 12, 14), 8, 24
  model = random_model(
      lambda: ensembler.CollaborativeEnsemblerMS(
          in_dims, low_dim, head_dim, rngs=nnx.Rngs(0), **TINY
      ),
      4,
  )
  n = 2
  sizes = [(17, 21), (9, 11), (5, 6)]
  xs = [
      jnp.asarray(randn(rng, n, h, w, c)) for (h, w), c in zip(sizes, in_dims)
  ]
  low = jnp.asarray(randn(rng, n, 17, 21, low_dim))
  head = jnp.asarray(randn(rng, n, head_dim))
  fg, bg = call_jitted(model, xs, low, head)
  assert fg.shape == (n, 17, 21) and bg.shape == (n, 17, 21)
  assert np.all(np.isfinite(np.asarray(fg)))
  for i in range(n):
    alone = call_jitted(
        model, [v[i : i + 1] for v in xs], low[i : i + 1], head[i : i + 1]
    )
    assert_same_object(fg[i], alone[0][0])
    assert_same_object(bg[i], alone[1][0])


def test_dynamic_prehead_shape():
  head = random_model(
      lambda: ensembler.DynamicPreHead(15, 16, 4, rngs=nnx.Rngs(0)), 5
  )
  out = head(jnp.ones((2, 5, 7, 15)))
  assert out.shape == (2, 5, 7, 16)
  assert np.all(np.asarray(out) >= 0)  # ReLU output.
