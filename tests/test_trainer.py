"""Tests for `cfbi_jax.trainer` and `train.py` on tiny synthetic datasets.

The data are the learnable DAVIS / YouTube-VOS layouts of
`tests/synthetic_layouts.py`; the model is the ~1M-parameter `tiny_cfbi`
at a 65 crop (the configs' `runlocal` shrink).

* the loss (once the hard-pixel ratio is at its final 15%) falls and the
  training IoU rises over a few dozen steps (the 'mixed' source: clips from
  both layouts);
* SIGTERM makes the loop save a checkpoint and stop after the step in
  flight; resuming from it ends with the same parameters (bit for bit) and
  losses as the uninterrupted run; frozen BN buffers never change;
* the init order: converted CFBI weights are loaded, a checkpoint of another
  model is refused with the differing fields; `init.zero_attention_gates`
  makes every instance-attention gate the identity (and only those);
* `train.py` end to end (TensorBoard events, overlay image, exported model
  that `checkpoint.load_model` reads) and its clear error for an unknown
  config field.
"""

import glob
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import attention
from cfbi_jax import checkpoint
from cfbi_jax import models
from cfbi_jax import trainer
from configs import ytvos as ytvos_config
from tests import synthetic_layouts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def davis_root(tmp_path_factory):
  return synthetic_layouts.write_davis(str(tmp_path_factory.mktemp('davis')))


@pytest.fixture(scope='module')
def ytb_root(tmp_path_factory):
  return synthetic_layouts.write_youtube_vos(
      str(tmp_path_factory.mktemp('ytb'))
  )


def tiny_config(davis_root, ytb_root, steps):
  """runlocal on the 'mixed' source: both layouts' readers in one run."""
  config = ytvos_config.get_config('runlocal')
  config.data.source = 'mixed'
  config.data.root = ytb_root
  config.data.davis_root = davis_root
  config.data.davis_repeat = 1
  config.train.steps = config.optim.total_steps = steps
  config.train.log_every = 1
  return config


STEPS = 40


def test_zero_attention_gates(davis_root, ytb_root):
  rng = np.random.default_rng(0)
  modules = {}
  for zero in (False, True):
    config = tiny_config(davis_root, ytb_root, 2)
    config.init.zero_attention_gates = zero
    graphdef, _, state = trainer.create_state(config)
    modules[zero] = nnx.merge(graphdef, state.params, state.frozen)
  for zero, module in modules.items():
    gates = [
        sub
        for _, sub in nnx.iter_modules(module)
        if isinstance(sub, attention.IAGate)
    ]
    assert len(gates) >= 10
    for gate in gates:
      x = rng.normal(size=(2, 3, 4, gate.IA.out_features)).astype(np.float32)
      head = rng.normal(size=(2, gate.IA.in_features)).astype(np.float32)
      same = np.allclose(np.asarray(gate(x, head)), x, atol=1e-6)
      assert same == zero
    # The dynamic final layer reads the attention vector too, but it is not
    # a gate: it stays random.
    final = module.dynamic_seghead.IA_final_fg.kernel[...]
    assert np.std(np.asarray(final)) > 0


@pytest.fixture(scope='module')
def straight(davis_root, ytb_root, tmp_path_factory):
  """An uninterrupted run of STEPS steps."""
  config = tiny_config(davis_root, ytb_root, STEPS)
  return trainer.train(config, str(tmp_path_factory.mktemp('straight')))


def test_loss_falls_and_iou_rises(straight):
  loss = np.array([h['loss'] for h in straight['history']])
  iou = np.array([h['iou'] for h in straight['history']])
  assert len(loss) == STEPS and np.all(np.isfinite(loss))
  # The hard-pixel ratio ramps to 15% over the first 10 steps; compare
  # losses at the final ratio only.
  assert loss[-8:].mean() < 0.7 * loss[10:18].mean(), loss
  assert iou[-8:].mean() > iou[:8].mean() + 0.15, iou


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_sigterm_then_resume_equals_uninterrupted(
    straight, davis_root, ytb_root, tmp_path, monkeypatch, caplog
):
  config = tiny_config(davis_root, ytb_root, STEPS)
  # SIGTERM arrives during step 33 (0-based 32): the loop finishes it,
  # saves step 33 and stops. The resumed run does steps 34..STEPS.
  real = trainer.schedule_values

  def terminating(step, *args):
    if step == 32:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(step, *args)

  workdir = str(tmp_path / 'interrupted')
  monkeypatch.setattr(trainer, 'schedule_values', terminating)
  first = trainer.train(config, workdir)
  monkeypatch.setattr(trainer, 'schedule_values', real)
  assert first['steps'] == 33
  assert sorted(
      int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints'))
  ) == [
      20,
      30,
      33,
  ]  # Keeps 3.
  caplog.clear()
  resumed = trainer.train(config, workdir)
  assert resumed['steps'] == STEPS
  # The resumed run says so, and not that it trains from scratch.
  assert 'resumed from' in caplog.text and 'from scratch' not in caplog.text
  assert [h['step'] for h in resumed['history']] == list(range(34, STEPS + 1))

  for a, b in zip(
      _leaves(straight['state'].params), _leaves(resumed['state'].params)
  ):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
      [h['loss'] for h in straight['history'][33:]],
      [h['loss'] for h in resumed['history']],
  )
  # Frozen BN buffers are those of the seeded initial model.
  fresh = trainer.create_state(config)[2]
  for a, b in zip(_leaves(fresh.frozen), _leaves(resumed['state'].frozen)):
    np.testing.assert_array_equal(a, b)
  assert len(os.listdir(os.path.join(workdir, 'best'))) == 1


def test_init_from_converted_weights_and_mismatch(tmp_path, davis_root):
  source = models.build(models.model_config('tiny_cfbi'), rngs=nnx.Rngs(123))
  directory = str(tmp_path / 'cfbi')
  checkpoint.save_model(
      directory, models.model_config('tiny_cfbi'), checkpoint.flat_state(source)
  )
  config = tiny_config(davis_root, '', 1)
  config.init.cfbi_checkpoint = directory
  _, _, state = trainer.create_state(config)
  for a, b in zip(_leaves(nnx.state(source, nnx.Param)), _leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  # A CFBI+ checkpoint for a CFBI config: refused, naming the fields.
  other = models.build(models.model_config('tiny_cfbip'), rngs=nnx.Rngs(0))
  checkpoint.save_model(
      str(tmp_path / 'cfbip'),
      models.model_config('tiny_cfbip'),
      checkpoint.flat_state(other),
  )
  config.init.cfbi_checkpoint = str(tmp_path / 'cfbip')
  with pytest.raises(ValueError, match='arch'):
    trainer.create_state(config)


def _train_py(*args):
  return subprocess.run(
      [sys.executable, 'train.py', *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=False,
      env=dict(os.environ, PYTHONPATH=REPO),
  )


def test_train_py_unknown_field_is_an_error(tmp_path):
  out = _train_py(
      '--config=configs/ytvos.py:runlocal',
      '--config.train.no_such_field=1',
      f'--workdir={tmp_path}',
  )
  assert out.returncode != 0
  assert 'no_such_field' in out.stderr


def test_train_py_end_to_end(ytb_root, tmp_path):
  workdir = str(tmp_path / 'run')
  out = _train_py(
      '--config=configs/ytvos.py:runlocal',
      f'--config.data.root={ytb_root}',
      '--config.train.steps=3',
      '--config.optim.total_steps=3',
      '--config.train.log_every=1',
      '--config.train.image_every=3',
      f'--workdir={workdir}',
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  module, model_config = checkpoint.load_model(os.path.join(workdir, 'model'))
  assert model_config['arch'] == 'cfbi'
  assert isinstance(module, models.cfbi.CFBI)


def test_compiled_memory_line_and_remat():
  """`bench/bench_train.py --compiled-memory` on the tiny model: abstract
  shapes only, one line per setting, and recomputing the backbone and the
  frames in the backward pass needs fewer temporaries."""
  sys.path.insert(
      0,
      os.path.join(
          os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'
      ),
  )
  import bench_train  # pylint: disable=g-import-not-at-top
  # The GPU's form (XLA's convolution gradients) at the tiny recipe's
  # crop, 2 clips of 3 current frames: small enough to compile in seconds,
  # large enough for the activations to dominate.
  rows = {
      remat: bench_train.compiled_memory(
          'tiny_cfbi', 129, 2, 3, remat, form='cuda'
      )
      for remat in ((), ('backbone', 'frame'))
  }
  assert 0 < rows[('backbone', 'frame')]['temp'] < rows[()]['temp']
  assert rows[()]['args'] == pytest.approx(rows[('backbone', 'frame')]['args'])
  line = bench_train.compiled_memory_line(
      'tiny_cfbi', 129, 2, 5, ('backbone', 'frame'), 'float32', rows[()]
  )
  assert re.fullmatch(
      r'compiled memory MB: variant=tiny_cfbi crop=129 batch=2 frames=5 '
      r'remat=backbone\+frame precision=float32 temp=\d+ args=\d+ '
      r'total=\d+ compile_s=[\d.]+',
      line,
  ), line
