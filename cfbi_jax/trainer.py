"""The training run: `train_and_evaluate(config, workdir)`, called by train.py.

Stages, top to bottom: mesh, data, model and optimizer init, shardings,
restore, step function, loop.

Initialisation order (the first that applies wins; the choice and any
unmatched names are reported loudly):

1. the latest checkpoint in `workdir` (a resumed run: params, optimizer
   state, step, RNG and data position, so it ends equal to an uninterrupted
   run);
2. `config.init.cfbi_checkpoint`: a model directory of converted official
   CFBI weights (`python -m cfbi_jax.convert`);
3. `config.init.backbone_checkpoint`: a model directory written by
   `python -m cfbi_jax.convert --backbone_only` (ImageNet/COCO backbone);
4. scratch, seeded by `config.seed`.

Checkpoints: an orbax `CheckpointManager` in `workdir/checkpoints` (async,
keeps the last `config.train.keep_checkpoints`), saving `{'state', 'data'}`
every `config.train.checkpoint_every` steps, at the end, and on SIGTERM
(the loop finishes the step in flight, saves, then exits). Logging: clu
metric writers (TensorBoard) when clu is installed, plus tqdm with an ETA.
"""

import os
import signal
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from flax import nnx

from cfbi_jax import checkpoint
from cfbi_jax import losses
from cfbi_jax import model as model_lib
from cfbi_jax import optimizer
from cfbi_jax import sharding
from cfbi_jax import train_step as ts


def schedule_values(step: int, train_config, num_pixels: int
                    ) -> Dict[str, jnp.ndarray]:
  """Host-side schedule scalars for `step` (they enter the step as data)."""
  return {
      'num_hard': jnp.int32(losses.num_hard_pixels(
          step, num_pixels, train_config.top_k_percent,
          train_config.hard_mining_step)),
      'use_own_predictions': jnp.bool_(
          step >= train_config.own_predictions_from_step),
  }


def _init_module(config) -> nnx.Module:
  """Steps 2-4 of the init order (module docstring)."""
  init = config.init
  for key in ('cfbi_checkpoint', 'backbone_checkpoint'):
    directory = init.get(key)
    if directory:
      stored = checkpoint.read_model_config(directory)
      mismatched = sorted(k for k in stored
                          if k in config.model and k not in
                          checkpoint.EVAL_FIELDS + ('variant',)
                          and stored[k] != config.model[k])
      if mismatched:
        raise ValueError(f'{directory} was written for a different model: '
                         f'fields {mismatched} differ from config.model')
      module, _ = checkpoint.load_model(directory)
      logging.warning('INIT: weights from %s (%s)', directory, key)
      return module
  logging.warning('INIT: no pretrained weights; training from scratch '
                  '(seed %d)', config.seed)
  return model_lib.from_config(config.model, rngs=nnx.Rngs(config.seed))


def create_state(config):
  """Model, optimizer and TrainState (before any checkpoint restore)."""
  module = _init_module(config)
  tx = optimizer.make_optimizer(config.optim, nnx.state(module, nnx.Param))
  graphdef, state = ts.create_train_state(module, tx, config.seed)
  return graphdef, tx, state


def _state_for_checkpoint(state: ts.TrainState) -> Dict[str, Any]:
  return {'step': state.step, 'params': nnx.to_pure_dict(state.params),
          'frozen': nnx.to_pure_dict(state.frozen),
          'opt_state': state.opt_state,
          'rng': jax.random.key_data(state.rng)}


def _restore_into(state: ts.TrainState, tree: Dict[str, Any]) -> ts.TrainState:
  params, frozen = state.params, state.frozen
  nnx.replace_by_pure_dict(params, tree['params'])
  nnx.replace_by_pure_dict(frozen, tree['frozen'])
  return state.replace(step=jnp.asarray(tree['step']), params=params,
                       frozen=frozen, opt_state=tree['opt_state'],
                       rng=jax.random.wrap_key_data(tree['rng']))


def _writer(workdir: str):
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir`; returns the final metrics."""
  # Mesh.
  mesh = sharding.make_mesh()
  global_batch = config.train.batch_size
  if global_batch % jax.device_count():
    raise ValueError(f'batch size {global_batch} is not divisible by '
                     f'{jax.device_count()} devices')
  local_batch = global_batch // jax.process_count()

  # Model and optimizer init, restore.
  graphdef, tx, state = create_state(config)
  manager = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      item_names=('state', 'data'),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.train.keep_checkpoints, create=True,
          enable_async_checkpointing=True))
  start_step = 0
  latest = manager.latest_step()
  if latest is not None:
    target = _state_for_checkpoint(state)
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=ocp.args.JsonRestore()))
    state = _restore_into(state, restored['state'])
    start_step = int(restored['data']['step'])
    logging.warning('INIT: resumed from %s at step %d', workdir, start_step)

  # Shardings.
  replicated = sharding.replicated(mesh)
  state = jax.device_put(state, replicated)

  # Data: a pure function of (seed, element index), so resuming is exact.
  from cfbi_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  dataset = input_pipeline.make_train_dataset(
      config.data, batch_size=local_batch, num_frames=config.train.num_frames,
      seed=config.seed, start_index=start_step * global_batch,
      shard_index=jax.process_index(), num_shards=jax.process_count())
  batches = iter(dataset.as_numpy_iterator())

  # Step function.
  step_fn = jax.jit(ts.make_train_step(graphdef, tx, bgr=config.model_bgr),
                    out_shardings=(replicated, replicated),
                    donate_argnums=(0,))
  num_pixels = config.data.crop_size ** 2
  writer = _writer(workdir)
  stop = {'flag': False}
  previous = signal.signal(signal.SIGTERM,
                           lambda *_: stop.__setitem__('flag', True))

  def save(step):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_state_for_checkpoint(state)),
        data=ocp.args.JsonSave({'step': step})), force=True)

  metrics, step = {}, start_step
  started = time.perf_counter()
  try:
    with tqdm.tqdm(total=config.train.steps, initial=start_step,
                   desc='train', unit='step') as bar:
      for step in range(start_step, config.train.steps):
        batch = sharding.global_array(next(batches), mesh)
        state, metrics = step_fn(state, batch,
                                 schedule_values(step, config.train,
                                                 num_pixels))
        bar.update(1)
        if (step + 1) % config.train.log_every == 0 or step == start_step:
          values = {k: float(v) for k, v in jax.device_get(metrics).items()}
          values['learning_rate'] = float(optimizer.learning_rate_schedule(
              config.optim.lr, config.optim.total_steps,
              config.optim.warmup_steps, config.optim.power,
              config.optim.min_lr)(step))
          values['hard_pixel_ratio'] = float(schedule_values(
              step, config.train, num_pixels)['num_hard']) / num_pixels
          elapsed = time.perf_counter() - started
          values['steps_per_s'] = (step + 1 - start_step) / elapsed
          values['examples_per_s'] = values['steps_per_s'] * global_batch
          bar.set_postfix(loss=f"{values['loss']:.4f}")
          if writer is not None:
            writer.write_scalars(step + 1, values)
        if (step + 1) % config.train.checkpoint_every == 0:
          save(step + 1)
        if stop['flag']:
          logging.warning('SIGTERM: saving at step %d and exiting', step + 1)
          break
    final = step + 1 if config.train.steps > start_step else start_step
    if manager.latest_step() != final:
      save(final)
    manager.wait_until_finished()
  finally:
    signal.signal(signal.SIGTERM, previous)
    manager.close()
    if writer is not None:
      writer.flush()
  return {'state': state, 'graphdef': graphdef,
          'metrics': jax.device_get(metrics), 'steps': final}


def export_model(result: Dict[str, Any], model_config, directory: str
                 ) -> None:
  """Writes the trained model as a model directory for `evaluate.py`."""
  module = nnx.merge(result['graphdef'], result['state'].params,
                     result['state'].frozen)
  checkpoint.save_model(directory, model_config, checkpoint.flat_state(module),
                        step=int(result['steps']))

