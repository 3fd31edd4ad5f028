"""Tests for `cfbi_jax.train_step`, `optimizer` and `sharding` (tiny model).

* the loss falls over a few dozen steps on a synthetic clip; FEELVOS and
  VideoMatch train through the same step (the loss falls, and the parts of
  their own, the matching embedding and head or the softmax weight, move);
* frozen BN buffers are unchanged while parameters move;
* the scan feeds the model's own hard predictions after the first step (and
  the ground truth when the flag is off);
* (several devices, in one process and across processes, give the
  parameters of one device: `tests/test_multihost.py`, through `train.py`);
* gradient accumulation: m micro-batches give the update computed by hand
  from the mean of the micro-batch gradients (each taken with `clip_loss`
  and its own dropout key);
* the learning-rate schedule against its closed form;
* `optim.name='adamw'` against a NumPy AdamW (clipping, bias-corrected
  moments, decoupled decay with its exclusion mask, the schedule).
"""

import jax
import jax.extend as jex
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from cfbi_jax import models
from cfbi_jax import optimizer
from cfbi_jax import train_step as ts
from tests import synthetic_clips


def optim_config(**overrides):
  c = dict(
      lr=0.05,
      total_steps=100,
      warmup_steps=5,
      power=0.9,
      min_lr=1e-5,
      momentum=0.9,
      nesterov=True,
      weight_decay=1.5e-4,
      weight_decay_exclude=[],
      backbone_lr_mult=1.0,
      clip_grad_norm=5.0,
      accumulate_steps=1,
  )
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def tiny_batch(batch_size=2, num_frames=4, size=33):
  frames, labels = synthetic_clips.two_squares(
      num_frames=num_frames, size=(size, size)
  )
  rep = lambda x: jnp.asarray(np.stack(x))[None].repeat(batch_size, 0)
  return {
      'frames': rep(frames),
      'labels': rep(labels),
      'object_valid': jnp.ones((batch_size, 3), bool),
  }


@pytest.fixture(scope='module')
def setup():
  module = models.build(models.model_config('tiny_cfbi'), rngs=nnx.Rngs(0))
  params = nnx.state(module, nnx.Param)
  tx = optimizer.make_optimizer(optim_config(), params)
  graphdef, state = ts.create_train_state(module, tx, seed=0)
  return graphdef, state, jax.jit(ts.make_train_step(graphdef, tx))


def _schedule(own=True, num_hard=33 * 33):
  return {
      'num_hard': jnp.int32(num_hard),
      'use_own_predictions': jnp.bool_(own),
  }


def test_loss_falls_and_frozen_state_stays(setup):
  _, state, step = setup
  batch = tiny_batch()
  first, losses = None, []
  start = state
  for _ in range(25):
    state, metrics = step(state, batch, _schedule())
    losses.append(float(metrics['loss']))
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
  # Frozen BN buffers: bit-identical. Parameters: moved.
  for a, b in zip(jax.tree.leaves(start.frozen), jax.tree.leaves(state.frozen)):
    np.testing.assert_array_equal(a, b)
  moved = [
      not np.array_equal(a, b)
      for a, b in zip(
          jax.tree.leaves(start.params), jax.tree.leaves(state.params)
      )
  ]
  assert all(moved)
  assert int(state.step) == 25
  del first


@pytest.mark.parametrize(
    'variant, own',
    [
        ('tiny_feelvos', ['embedding_pointwise', 'dynamic_seghead']),
        ('tiny_videomatch', ['projection', 'softmax_weight']),
    ],
)
def test_other_families_train_through_the_same_step(variant, own):
  module = models.build(models.model_config(variant), rngs=nnx.Rngs(0))
  tx = optimizer.make_optimizer(
      optim_config(lr=0.01), nnx.state(module, nnx.Param)
  )
  graphdef, start = ts.create_train_state(module, tx, seed=0)
  step = jax.jit(ts.make_train_step(graphdef, tx))
  batch, state, losses = tiny_batch(batch_size=1, num_frames=3), start, []
  for _ in range(20):  # Ground-truth previous masks, as both papers train.
    state, metrics = step(state, batch, _schedule(own=False))
    losses.append(float(metrics['loss']))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
  before = nnx.to_pure_dict(start.params)
  after = nnx.to_pure_dict(state.params)
  for name in own:
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(before[name]), jax.tree.leaves(after[name])
        )
    ), name


def test_scan_feeds_own_predictions(setup):
  graphdef, state, _ = setup
  batch = tiny_batch(num_frames=5)
  module = nnx.merge(graphdef, state.params, state.frozen)
  labels = jnp.moveaxis(batch['labels'][:, 2:], 1, 0).astype(jnp.int32)
  for own in (True, False):
    _, aux = jax.jit(ts.clip_loss, static_argnames='bgr')(
        module, batch, jax.random.key(0), jnp.int32(100), jnp.bool_(own)
    )
    expected = aux['predictions'] if own else labels
    np.testing.assert_array_equal(aux['fed_labels'], expected)
  # An untrained model's predictions differ from the ground truth, so the
  # check above can tell the two apart.
  assert not np.array_equal(aux['predictions'], labels)


def test_gradient_accumulation_matches_mean_of_micro_batch_grads(setup):
  graphdef, state, _ = setup
  batch = tiny_batch(batch_size=4, num_frames=3)
  # Make the samples differ, so the split matters.
  batch['frames'] = batch['frames'].at[1:3].set(255 - batch['frames'][1:3])
  module = models.build(models.model_config('tiny_cfbi'), rngs=nnx.Rngs(0))
  # No warm-up: the step-0 learning rate is not zero, so updates are seen.
  tx = optimizer.make_optimizer(
      optim_config(warmup_steps=0), nnx.state(module, nnx.Param)
  )
  state = state.replace(opt_state=tx.init(state.params))
  sched = _schedule(own=True, num_hard=400)
  step = jax.jit(ts.make_train_step(graphdef, tx, accumulate_steps=2))
  got, metrics = step(state, batch, sched)
  # By hand: two halves, keys fold_in(fold_in(rng, step), j), mean grads.
  key = jax.random.fold_in(state.rng, state.step)
  grads, loss = [], []
  # The frozen state is an argument, as in the step: closed over, it would
  # be folded into the program as constants, which rounds differently, and
  # leaves whose gradient is a near-cancelling sum over pixels (bg_bias:
  # the sum of p_bg - y_bg) then differ by a few percent.
  fn = lambda p, frozen, mb, k: ts.clip_loss(
      nnx.merge(graphdef, p, frozen),
      mb,
      k,
      sched['num_hard'],
      sched['use_own_predictions'],
  )[0]
  value_and_grad = jax.jit(jax.value_and_grad(fn))
  for j in range(2):
    half = jax.tree.map(lambda x: x[2 * j : 2 * j + 2], batch)
    l, g = value_and_grad(
        state.params, state.frozen, half, jax.random.fold_in(key, j)
    )
    grads.append(g)
    loss.append(float(l))
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  delta = lambda g: tx.update(g, state.opt_state, state.params)[0]
  want = delta(mean)
  got_delta = jax.tree.map(jnp.subtract, got.params, state.params)
  np.testing.assert_allclose(float(metrics['loss']), np.mean(loss), rtol=1e-5)
  assert np.isfinite(float(metrics['loss']))
  # Per leaf, relative to the leaf's largest update: the two programs
  # round differently (about 1e-3 here).
  close = lambda a, b: np.max(np.abs(a - b)) <= 1e-2 * np.max(np.abs(b)) + 1e-9
  leaves = list(zip(jax.tree.leaves(got_delta), jax.tree.leaves(want)))
  assert all(close(a, b) for a, b in leaves)
  assert metrics['preview'].shape == (1, 33, 33)
  # The halves differ, so averaging is what made the update match.
  first_only = delta(grads[0])
  assert (
      sum(
          not close(a, b)
          for a, b in zip(
              jax.tree.leaves(got_delta), jax.tree.leaves(first_only)
          )
      )
      > len(leaves) // 2
  )


def test_learning_rate_schedule():
  sched = optimizer.learning_rate_schedule(
      0.01, 100, warmup_steps=10, power=0.9, min_lr=1e-4
  )
  for t in (0, 5, 10, 50, 99, 100):
    if t < 10:
      expected = 0.01 * t / 10
    else:
      expected = max(1e-4, 0.01 * (1 - (t - 10) / 91) ** 0.9)
    np.testing.assert_allclose(float(sched(t)), expected, rtol=1e-5)


def test_adamw_matches_numpy():
  c = optim_config(
      name='adamw',
      lr=0.01,
      warmup_steps=2,
      total_steps=10,
      momentum=0.9,
      adam_b2=0.99,
      weight_decay=0.1,
      weight_decay_exclude=['bias'],
      clip_grad_norm=1.0,
  )
  rng = np.random.default_rng(0)
  params = {
      'conv': {
          'kernel': rng.normal(size=(3, 2)).astype(np.float32),
          'bias': rng.normal(size=(2,)).astype(np.float32),
      }
  }
  tx = optimizer.make_optimizer(c, params)
  state = tx.init(params)
  got = jax.tree.map(jnp.asarray, params)
  want = {k: v.copy() for k, v in params['conv'].items()}
  m = {k: np.zeros_like(v) for k, v in want.items()}
  v = {k: np.zeros_like(x) for k, x in want.items()}
  for t in range(4):
    grads = {
        'conv': {
            k: rng.normal(size=x.shape).astype(np.float32) * 3
            for k, x in want.items()
        }
    }
    updates, state = tx.update(grads, state, got)
    got = optax.apply_updates(got, updates)
    g = grads['conv']
    norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    scale = min(1.0, 1.0 / norm)
    lr = 0.01 * t / 2 if t < 2 else 0.01 * (1 - (t - 2) / 9) ** 0.9
    for k in want:
      gk = g[k] * scale
      m[k] = 0.9 * m[k] + 0.1 * gk
      v[k] = 0.99 * v[k] + 0.01 * gk**2
      step = (m[k] / (1 - 0.9 ** (t + 1))) / (
          np.sqrt(v[k] / (1 - 0.99 ** (t + 1))) + 1e-8
      )
      if k != 'bias':
        step = step + 0.1 * want[k]
      want[k] = want[k] - lr * step
  for k in want:
    np.testing.assert_allclose(got['conv'][k], want[k], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='optim.name'):
    optimizer.make_optimizer(optim_config(name='lamb'), params)


def test_remat_keeps_the_loss_and_gradients():
  module = models.build(models.model_config('tiny_cfbi'), rngs=nnx.Rngs(0))
  graphdef, params, frozen = nnx.split(module, nnx.Param, ...)
  batch, rng = tiny_batch(size=49), jax.random.key(0)

  def loss_of(remat):
    def loss(p):
      return ts.clip_loss(
          nnx.merge(graphdef, p, frozen),
          batch,
          rng,
          jnp.int32(500),
          jnp.bool_(True),
          remat=remat,
      )[0]

    return jax.jit(jax.value_and_grad(loss))

  loss0, grads0 = loss_of(())(params)
  # Both parts at once (each branch of clip_loss runs; one compile, not
  # three, for CI's time).
  loss1, grads1 = loss_of(('backbone', 'frame'))(params)
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  # The backbone runs on B frames at a time instead of B x T, so XLA sums
  # in another order (1.3e-4 relative seen on one element); a wrong dropout
  # mask or a dropped gradient path would differ by far more.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
      grads1,
      grads0,
  )
  with pytest.raises(ValueError, match='remat parts'):
    loss_of(('ensembler_typo',))(params)


def _reduced_precision_sums(jaxpr, found):
  """(reduce_sum eqn, elements summed) for every bfloat16 sum in `jaxpr`,
  sub-jaxprs (scan, checkpoint, custom_vjp, ...) included."""
  for eqn in jaxpr.eqns:
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jex.core.ClosedJaxpr):
          _reduced_precision_sums(sub.jaxpr, found)
        elif isinstance(sub, jex.core.Jaxpr):
          _reduced_precision_sums(sub, found)
    if eqn.primitive.name == 'reduce_sum':
      aval = eqn.invars[0].aval
      if aval.dtype == jnp.bfloat16:
        found.append(
            (
                str(eqn),
                int(np.prod([aval.shape[a] for a in eqn.params['axes']])),
            )
        )
  return found


@pytest.mark.parametrize('variant', ['tiny_cfbi', 'tiny_feelvos'])
def test_bfloat16_step_sums_no_gradient_in_bfloat16(variant):
  # Every gradient summed over pixels (biases, gates, pooled features) must
  # accumulate in float32 (`layers.broadcast_to_like`): a bfloat16 sum
  # stalls once it is 256 times its terms. Read from the step's jaxpr, so
  # no compile.
  config = models.model_config(variant)
  config.compute_dtype = 'bfloat16'
  module = models.build(config, rngs=nnx.Rngs(0))
  graphdef, params, frozen = nnx.split(module, nnx.Param, ...)
  batch = tiny_batch(batch_size=2, num_frames=3)
  loss = lambda p: ts.clip_loss(
      nnx.merge(graphdef, p, frozen),
      batch,
      jax.random.key(0),
      jnp.int32(100),
      jnp.bool_(True),
      remat=('backbone', 'frame'),
  )[0]
  jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
  long_sums = [(e, n) for e, n in _reduced_precision_sums(jaxpr, []) if n > 16]
  assert not long_sums, long_sums[:3]
  # The walk does see bfloat16 sums where the model has them (the check
  # above could not pass by missing them): summing a bfloat16 input does.
  probe = jax.make_jaxpr(
      jax.grad(
          lambda p: jnp.sum(
              (p.astype(jnp.bfloat16) + jnp.ones((64, 8), jnp.bfloat16)).astype(
                  jnp.float32
              )
          )
      )
  )(jnp.zeros((8,))).jaxpr
  assert max(n for _, n in _reduced_precision_sums(probe, [])) == 64


def test_adam_adds_weight_decay_to_the_gradient():
  """`optim.name='adam'` (VideoMatch's recipe): L2 weight decay, i.e. Adam
  of g + wd * p, hand-computed for two steps at a constant rate; 'adamw'
  decays after the Adam scaling instead, so the two differ."""
  params = {'w': jnp.asarray([1.0, -2.0, 0.5])}
  grads = [jnp.asarray([0.3, 0.7, -0.2]), jnp.asarray([-0.1, 0.4, 0.2])]
  lr, wd, b1, b2 = 0.1, 0.05, 0.9, 0.999
  config = optim_config(
      name='adam',
      lr=lr,
      warmup_steps=0,
      power=0.0,
      weight_decay=wd,
      clip_grad_norm=0.0,
      momentum=b1,
      adam_b2=b2,
  )
  tx = optimizer.make_optimizer(config, params)
  state, p = tx.init(params), params
  w = np.asarray(params['w'], np.float64)
  m = v = np.zeros(3)
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update({'w': g}, state, p)
    p = {'w': p['w'] + updates['w']}
    full = np.asarray(g, np.float64) + wd * w
    m = b1 * m + (1 - b1) * full
    v = b2 * v + (1 - b2) * full**2
    w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8)
  np.testing.assert_allclose(p['w'], w, rtol=1e-5)
  config.name = 'adamw'
  tx = optimizer.make_optimizer(config, params)
  state, q = tx.init(params), params
  for g in grads:
    updates, state = tx.update({'w': g}, state, q)
    q = {'w': q['w'] + updates['w']}
  assert not np.allclose(q['w'], w, rtol=1e-3)
