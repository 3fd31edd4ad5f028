"""The training run: `train(config, workdir)`, called by train.py.

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

With `config.init.zero_attention_gates` (ours, for scratch training), steps
3-4 zero every instance-attention gate's linear layer, so each gate
`1 + tanh(W h + b)` starts at exactly 1 (the identity) instead of a random
per-object scaling of every ensembler block; the architecture is unchanged.

Checkpoints (`_Checkpoints`): orbax `CheckpointManager`s (async) in
`workdir/checkpoints` (the last `config.train.keep_checkpoints`) and
`workdir/best`, saved every `config.train.checkpoint_every` steps, at the end
and on SIGTERM (the loop finishes the step in flight, saves, then exits).

Data audit: with `config.train.log_examples`, each process appends one
JSON line per step to `workdir/examples/process_<i>.jsonl`,
`{"step": s, "index": [...]}`, the element indices of the clips it fed to
step s (1-based, as in the logs). A resumed run appends to the same file;
steps done after the last checkpoint of an interrupted run appear twice,
and the later line is the one that counts.

Logging: clu metric writers (TensorBoard event files in `workdir`) with the
loss, learning rate, hard-pixel ratio, training IoU, gradient norm, steps/s
and examples/s averaged over each `log_every` window, an overlay image of
one clip every `image_every` steps, and a tqdm bar with an ETA.
"""

import json
import os
import signal
import sys
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from flax import nnx

from cfbi_jax import backend
from cfbi_jax import checkpoint
from cfbi_jax import losses
from cfbi_jax import models
from cfbi_jax.models import family as family_lib
from cfbi_jax import optimizer
from cfbi_jax import output_files
from cfbi_jax import sharding
from cfbi_jax import train_step as ts


def schedule_values(
    step: int, train_config, num_pixels: int
) -> Dict[str, np.ndarray]:
  """Host-side schedule scalars for `step` (they enter the step as data)."""
  return {
      'num_hard': np.int32(
          losses.num_hard_pixels(
              step,
              num_pixels,
              train_config.top_k_percent,
              train_config.hard_mining_step,
          )
      ),
      'use_own_predictions': np.bool_(
          train_config.get('own_predictions', True)
          and step >= train_config.own_predictions_from_step
      ),
  }


def _init_module(config, resuming: bool) -> nnx.Module:
  """Steps 2-4 of the init order (module docstring).

  A resuming run only needs the structure: its weights come from the
  checkpoint, so nothing is loaded and nothing is logged here.
  """
  if resuming:
    return models.build(config.model, rngs=nnx.Rngs(config.seed))
  init = config.init
  for key in ('cfbi_checkpoint', 'backbone_checkpoint'):
    directory = init.get(key)
    if directory:
      stored = checkpoint.read_model_config(directory)
      wanted = config.model.to_dict()
      plain = lambda v: json.loads(json.dumps(v))  # Tuples -> lists.
      mismatched = sorted(
          k
          for k in stored
          if k in wanted
          and k not in models.eval_fields(wanted) + ('variant',)
          and plain(stored[k]) != plain(wanted[k])
      )
      if mismatched:
        raise ValueError(
            f'{directory} was written for a different model: '
            f'fields {mismatched} differ from config.model'
        )
      # Evaluation-only fields (matching chunks, atrous rates...) follow the
      # training config.
      module, _ = checkpoint.load_model(
          directory,
          overrides={
              k: wanted[k] for k in models.eval_fields(wanted) if k in wanted
          },
      )
      logging.warning('INIT: weights from %s (%s)', directory, key)
      return module
  logging.warning(
      'INIT: no pretrained weights; training from scratch ' '(seed %d)',
      config.seed,
  )
  return models.build(config.model, rngs=nnx.Rngs(config.seed))


def create_state(config, resuming: bool = False):
  """Model, optimizer and TrainState (before any checkpoint restore)."""
  module = _init_module(config, resuming)
  if not config.init.get('cfbi_checkpoint') and not resuming:
    # The family's init switches (CFBI: `zero_attention_gates`).
    for name, hook in models.init_hooks(config.model).items():
      if config.init.get(name):
        logging.warning('INIT: %s (%s)', name, hook(module))
  tx = optimizer.make_optimizer(config.optim, nnx.state(module, nnx.Param))
  graphdef, state = ts.create_train_state(module, tx, config.seed)
  return graphdef, tx, state


# Jitted steps by (model, optimizer, input order, remat, devices):
# a second run in the same process (a resumed run, a notebook cell run
# again) reuses the compiled step instead of compiling it again.
_STEP_FUNCTIONS: Dict[str, Any] = {}


def _step_function(config, graphdef, tx, mesh):
  key = json.dumps(
      [
          config.model.to_dict(),
          config.optim.to_dict(),
          family_lib.bgr(config.model),
          list(config.train.get('remat', ())),
          [d.id for d in mesh.devices.flat],
      ],
      sort_keys=True,
      default=str,
  )
  if key not in _STEP_FUNCTIONS:
    replicated = sharding.replicated(mesh)
    _STEP_FUNCTIONS[key] = jax.jit(
        ts.make_train_step(
            graphdef,
            tx,
            bgr=family_lib.bgr(config.model),
            accumulate_steps=config.optim.accumulate_steps,
            remat=tuple(config.train.get('remat', ())),
        ),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
  return _STEP_FUNCTIONS[key]


def _state_for_checkpoint(state: ts.TrainState) -> Dict[str, Any]:
  return {
      'step': state.step,
      'params': nnx.to_pure_dict(state.params),
      'frozen': nnx.to_pure_dict(state.frozen),
      'opt_state': state.opt_state,
      'rng': jax.random.key_data(state.rng),
  }


def _restore_into(state: ts.TrainState, tree: Dict[str, Any]) -> ts.TrainState:
  params, frozen = state.params, state.frozen
  nnx.replace_by_pure_dict(params, tree['params'])
  nnx.replace_by_pure_dict(frozen, tree['frozen'])
  return state.replace(
      step=jnp.asarray(tree['step']),
      params=params,
      frozen=frozen,
      opt_state=tree['opt_state'],
      rng=jax.random.wrap_key_data(tree['rng']),
  )


def _writer(workdir: str):
  """clu TensorBoard writer (logging only on hosts > 0); None without clu."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('clu is not installed: no TensorBoard logs')
    return None
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0
  )


def preview_image(
    frames: np.ndarray, labels: np.ndarray, preds: np.ndarray
) -> np.ndarray:
  """One overlay image of a training clip: ground truth above predictions.

  Args:
    frames: `[T, S, S, 3]` uint8 clip (reference, previous, current...).
    labels: `[T, S, S]` ground truth.
    preds: `[T-2, S, S]` predictions of the current frames.

  Returns:
    `[2S, T*S, 3]` uint8: top row the clip with its ground truth, bottom row
    the reference and previous frames with theirs, then the predictions.
  """
  top = [output_files.overlay(f, l) for f, l in zip(frames, labels)]
  bottom = top[:2] + [
      output_files.overlay(f, p) for f, p in zip(frames[2:], preds)
  ]
  return np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)


class _Checkpoints:
  """The run's checkpoints: the last K (for resume) and the best one.

  `workdir/checkpoints` holds `{'state', 'data'}` for the last
  `keep_checkpoints` saves (async). `workdir/best` holds the state with the
  highest training IoU averaged over the log window before a save (there is
  no validation set in the loop; training IoU is the signal we have). The
  data item records the step, that best IoU and the run's seed.
  """

  def __init__(self, workdir: str, keep: int):
    # Each manager names its cross-process barriers with its own prefix:
    # by default both would wait at `_async_write_complete.<step>` when
    # they save the same step, and the processes of a multi-host run then
    # failed ("barrier ... is already ongoing") or hung.
    options = lambda n, prefix: ocp.CheckpointManagerOptions(
        max_to_keep=n,
        create=True,
        enable_async_checkpointing=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=prefix
        ),
    )
    root = os.path.abspath(workdir)
    self.last = ocp.CheckpointManager(
        os.path.join(root, 'checkpoints'),
        item_names=('state', 'data'),
        options=options(keep, 'last'),
    )
    self.best = ocp.CheckpointManager(
        os.path.join(root, 'best'),
        item_names=('state', 'data'),
        options=options(1, 'best'),
    )

  def restore(self, state: ts.TrainState):
    """(state, data dict) from the latest checkpoint, or (state, None)."""
    latest = self.last.latest_step()
    if latest is None:
      return state, None
    restored = self.last.restore(
        latest,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_state_for_checkpoint(state)),
            data=ocp.args.JsonRestore(),
        ),
    )
    return _restore_into(state, restored['state']), dict(restored['data'])

  def save(
      self,
      step: int,
      state: ts.TrainState,
      data: Dict[str, Any],
      improved: bool,
  ) -> None:
    tree = _state_for_checkpoint(state)
    managers = (self.last, self.best) if improved else (self.last,)
    for manager in managers:
      manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(tree), data=ocp.args.JsonSave(data)
          ),
          force=True,
      )

  def close(self) -> None:
    for manager in (self.last, self.best):
      manager.wait_until_finished()
      manager.close()


def train(config, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir`; returns the final state and metrics.

  Returns:
    `{'state', 'graphdef', 'metrics' (last logged values), 'steps',
    'history' (every logged dict, with its 'step'), 'terminated' (stopped
    by SIGTERM after saving the step)}`.
  """
  backend.use_compilation_cache(config.get('compilation_cache_dir', ''))
  apply_deprecated_fields(config)
  # Mesh.
  mesh = sharding.make_mesh()
  global_batch = config.train.batch_size
  accumulate = config.optim.accumulate_steps
  if global_batch % (jax.device_count() * accumulate):
    raise ValueError(
        f'train.batch_size {global_batch} must be divisible by the device '
        f'count ({jax.device_count()}) times optim.accumulate_steps '
        f'({accumulate})'
    )
  local_batch = global_batch // jax.process_count()

  # Model and optimizer, replicated over the mesh; then restore into it.
  ckpt = _Checkpoints(workdir, config.train.keep_checkpoints)
  graphdef, tx, state = create_state(
      config, resuming=ckpt.last.latest_step() is not None
  )
  state = sharding.replicate(state, mesh)
  state, data_state = ckpt.restore(state)
  start_step, best_iou = 0, -1.0
  if data_state is not None:
    if int(data_state.get('seed', config.seed)) != config.seed:
      raise ValueError(
          f'{workdir} was trained with seed '
          f"{data_state['seed']}, the config says {config.seed}"
      )
    start_step = int(data_state['step'])
    best_iou = float(data_state.get('best_iou', -1.0))
    logging.warning('INIT: resumed from %s at step %d', workdir, start_step)

  # Data: a pure function of (seed, element index), so resuming is exact.
  from cfbi_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  dataset = input_pipeline.make_train_dataset(
      config.data,
      batch_size=local_batch,
      num_frames=config.train.num_frames,
      seed=config.seed,
      start_index=start_step * global_batch,
      shard_index=jax.process_index(),
      num_shards=jax.process_count(),
  )
  batches = iter(dataset.as_numpy_iterator())

  # Step function.
  step_fn = _step_function(config, graphdef, tx, mesh)
  num_pixels = config.data.crop_size**2
  lr_fn = optimizer.learning_rate_schedule(
      config.optim.lr,
      config.optim.total_steps,
      config.optim.warmup_steps,
      config.optim.power,
      config.optim.min_lr,
  )
  writer = _writer(workdir)
  stop = {'flag': False}
  previous = signal.signal(
      signal.SIGTERM, lambda *_: stop.__setitem__('flag', True)
  )

  example_log = None
  if config.train.get('log_examples', False):
    os.makedirs(os.path.join(workdir, 'examples'), exist_ok=True)
    example_log = open(
        os.path.join(  # pylint: disable=consider-using-with
            workdir, 'examples', f'process_{jax.process_index()}.jsonl'
        ),
        'a',
        buffering=1,
        encoding='utf-8',
    )  # Line by line.

  history, window, values = [], [], {}
  step = start_step
  window_started = time.perf_counter()
  try:
    # A bar on a terminal only; the log_every lines report progress in a
    # log file.
    with tqdm.tqdm(
        total=config.train.steps,
        initial=start_step,
        desc='train',
        unit='step',
        dynamic_ncols=True,
        disable=not sys.stderr.isatty(),
    ) as bar:
      while step < config.train.steps:
        local = next(batches)
        indices = local.pop('index')
        schedule = schedule_values(step, config.train, num_pixels)
        state, metrics = step_fn(
            state, sharding.global_array(local, mesh), schedule
        )
        step += 1
        bar.update(1)
        if example_log is not None:
          example_log.write(
              json.dumps({'step': step, 'index': indices.tolist()}) + '\n'
          )
        window.append({k: v for k, v in metrics.items() if k != 'preview'})
        if step % config.train.log_every == 0 or step == config.train.steps:
          fetched = sharding.host_value(window)
          values = {
              k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]
          }
          values['learning_rate'] = float(lr_fn(step - 1))
          values['hard_pixel_ratio'] = float(schedule['num_hard']) / num_pixels
          now = time.perf_counter()
          # The window's own rate (the first window includes compilation).
          values['steps_per_s'] = len(fetched) / (now - window_started)
          window_started = now
          values['examples_per_s'] = values['steps_per_s'] * global_batch
          history.append(dict(values, step=step))
          window = []
          bar.set_postfix(
              loss=f"{values['loss']:.4f}", iou=f"{values['iou']:.3f}"
          )
          if writer is not None:
            writer.write_scalars(step, values)
        if writer is not None and step % config.train.image_every == 0:
          writer.write_images(
              step,
              {
                  'train/gt_top_prediction_bottom': preview_image(
                      local['frames'][0],
                      local['labels'][0],
                      sharding.host_value(metrics['preview']),
                  )[None]
              },
          )
        if (
            step % config.train.checkpoint_every == 0
            or stop['flag']
            or step == config.train.steps
        ):
          iou = values.get('iou', -1.0)
          improved = iou > best_iou
          best_iou = max(best_iou, iou)
          ckpt.save(
              step,
              state,
              {'step': step, 'best_iou': best_iou, 'seed': config.seed},
              improved,
          )
        if stop['flag']:
          logging.warning('SIGTERM: saved step %d; exiting', step)
          break
  finally:
    signal.signal(signal.SIGTERM, previous)
    ckpt.close()
    if example_log is not None:
      example_log.close()
    if writer is not None:
      writer.flush()
  return {
      'state': state,
      'graphdef': graphdef,
      'metrics': values,
      'steps': step,
      'history': history,
      'terminated': stop['flag'],
  }


def train_and_write(config, workdir: str) -> Dict[str, Any]:
  """What `train.py` runs: `train`, then, once every step is done, the
  model directory `workdir/model` (`write_model_dir`) that evaluation,
  `Session` and export read.

  Returns:
    `train`'s result.
  """
  result = train(config, workdir)
  if not result['terminated'] and result['steps'] == config.train.steps:
    write_model_dir(result, config.model, os.path.join(workdir, 'model'))
  return result


def apply_deprecated_fields(config) -> None:
  """Moves `config.model_bgr` (the input channel order before it became
  the model's `config.model.bgr`, so that it is saved with the weights)
  into `config.model`, with a warning."""
  if config.get('model_bgr') is None:
    return
  logging.warning(
      'config.model_bgr is deprecated; use --config.model.bgr '
      '(saved in the model directory, which evaluation reads)'
  )
  print(
      'warning: config.model_bgr is deprecated; use --config.model.bgr',
      file=sys.stderr,
  )
  with config.unlocked():
    config.model.bgr = bool(config.model_bgr)
    config.model_bgr = None


def write_model_dir(
    result: Dict[str, Any], model_config, directory: str
) -> None:
  """Writes the trained model as a model directory for `evaluate.py`.

  A directory that already holds this step (a finished run started again)
  is left as it is.
  """
  if os.path.isdir(os.path.join(directory, str(int(result['steps'])))):
    logging.warning('%s already holds step %d', directory, result['steps'])
    return
  module = nnx.merge(
      result['graphdef'], result['state'].params, result['state'].frozen
  )
  checkpoint.save_model(
      directory,
      model_config,
      sharding.host_value(checkpoint.flat_state(module)),
      step=int(result['steps']),
  )
