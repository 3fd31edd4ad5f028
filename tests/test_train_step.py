"""Tests for `cfbi_jax.train_step`, `optimizer` and `sharding` (tiny model).

* the loss falls over a few dozen steps on a synthetic clip;
* frozen BN buffers are unchanged while parameters move;
* the scan feeds the model's own hard predictions after the first step (and
  the ground truth when the flag is off);
* 8 fake CPU devices give the same parameters as one device after 2 steps
  (in a subprocess, since the device count is fixed at JAX start-up);
* the learning-rate schedule against its closed form.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import model as model_lib
from cfbi_jax import optimizer
from cfbi_jax import presets
from cfbi_jax import train_step as ts
from tests import synthetic_clips

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def optim_config(**overrides):
  c = dict(lr=0.05, total_steps=100, warmup_steps=5, power=0.9, min_lr=1e-5,
           momentum=0.9, nesterov=True, weight_decay=1.5e-4,
           weight_decay_exclude=[], backbone_lr_mult=1.0, clip_grad_norm=5.0,
           accumulate_steps=1)
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def tiny_batch(batch_size=2, num_frames=4, size=33):
  frames, labels = synthetic_clips.two_squares(num_frames=num_frames,
                                               size=(size, size))
  rep = lambda x: jnp.asarray(np.stack(x))[None].repeat(batch_size, 0)
  return {'frames': rep(frames), 'labels': rep(labels),
          'object_valid': jnp.ones((batch_size, 3), bool)}


@pytest.fixture(scope='module')
def setup():
  module = model_lib.from_config(presets.model_config('tiny_cfbi'),
                                 rngs=nnx.Rngs(0))
  params = nnx.state(module, nnx.Param)
  tx = optimizer.make_optimizer(optim_config(), params)
  graphdef, state = ts.create_train_state(module, tx, seed=0)
  return graphdef, state, jax.jit(ts.make_train_step(graphdef, tx))


def _schedule(own=True, num_hard=33 * 33):
  return {'num_hard': jnp.int32(num_hard),
          'use_own_predictions': jnp.bool_(own)}


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
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(start.params), jax.tree.leaves(state.params))]
  assert all(moved)
  assert int(state.step) == 25
  del first


def test_scan_feeds_own_predictions(setup):
  graphdef, state, _ = setup
  batch = tiny_batch(num_frames=5)
  module = nnx.merge(graphdef, state.params, state.frozen)
  labels = jnp.moveaxis(batch['labels'][:, 2:], 1, 0).astype(jnp.int32)
  for own in (True, False):
    _, aux = jax.jit(ts.clip_loss, static_argnames='bgr')(
        module, batch, jax.random.key(0), jnp.int32(100), jnp.bool_(own))
    expected = aux['predictions'] if own else labels
    np.testing.assert_array_equal(aux['fed_labels'], expected)
  # An untrained model's predictions differ from the ground truth, so the
  # check above can tell the two apart.
  assert not np.array_equal(aux['predictions'], labels)


def test_learning_rate_schedule():
  sched = optimizer.learning_rate_schedule(0.01, 100, warmup_steps=10,
                                           power=0.9, min_lr=1e-4)
  for t in (0, 5, 10, 50, 99, 100):
    if t < 10:
      expected = 0.01 * t / 10
    else:
      expected = max(1e-4, 0.01 * (1 - (t - 10) / 91) ** 0.9)
    np.testing.assert_allclose(float(sched(t)), expected, rtol=1e-5)


_MULTI_DEVICE = r'''
import os, sys
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from cfbi_jax import model as model_lib, optimizer, presets, sharding
from cfbi_jax import train_step as ts
from tests import test_train_step as t
assert jax.device_count() == 8
batch = t.tiny_batch(batch_size=8)
sched = t._schedule()
results = []
for n in (1, 8):
  module = model_lib.from_config(presets.model_config('tiny_cfbi'),
                                 rngs=nnx.Rngs(0))
  tx = optimizer.make_optimizer(t.optim_config(), nnx.state(module, nnx.Param))
  graphdef, state = ts.create_train_state(module, tx, seed=0)
  mesh = sharding.make_mesh(n)
  rep = sharding.replicated(mesh)
  state = jax.device_put(state, rep)
  data = jax.device_put(batch, sharding.batch_sharding(mesh))
  step = jax.jit(ts.make_train_step(graphdef, tx), out_shardings=(rep, rep))
  for _ in range(2):
    state, metrics = step(state, data, sched)
  results.append(jax.tree.leaves(jax.device_get(state.params)))
worst = max(float(np.max(np.abs(a - b))) for a, b in zip(*results))
print('MAXDIFF', worst)
'''


@pytest.mark.slow
def test_eight_devices_equal_one():
  out = subprocess.run([sys.executable, '-c', _MULTI_DEVICE, REPO],
                       capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  worst = float(out.stdout.split('MAXDIFF')[-1])
  assert worst < 1e-5, worst
