"""Model checkpoints on disk: an orbax `CheckpointManager` plus the config.

A model directory holds

* `model_config.json`: the `config.model` block the weights belong to, so
  that a directory alone selects the model (and its official eval flags);
* an orbax `CheckpointManager` tree (`<step>/model/...`) with the NNX state
  (`nnx.Param` and `nnx.BatchStat` leaves) keyed by module path.

`save_model` writes both (the config atomically); `load_model` rebuilds the
module from the stored config (plus caller overrides of evaluation-only
fields), restores the state and fails with the offending names when the
checkpoint does not match the model. Written by `convert.py` and by
training (`trainer.write_model_dir`); read by evaluation, `Session`,
export and training init.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from cfbi_jax import models
from cfbi_jax import atomic_files
from cfbi_jax import project_files

CONFIG_FILE = 'model_config.json'

# What a checkpoint holds: trainable parameters and frozen BN buffers.
_STATE_FILTER = nnx.Any(nnx.Param, nnx.BatchStat)


def flat_state(module: nnx.Module) -> Dict[Tuple[Any, ...], Any]:
  """`{module path: array}` of every Param and BatchStat of `module`."""
  state = nnx.state(module, _STATE_FILTER)
  return {
      path: v.get_value() if hasattr(v, 'get_value') else v.value
      for path, v in nnx.to_flat_state(state)
  }


def path_str(path: Tuple[Any, ...]) -> str:
  return '.'.join(str(p) for p in path)


def save_model(
    directory: str,
    model_config: Mapping[str, Any],
    arrays: Mapping[Tuple[Any, ...], np.ndarray],
    step: int = 0,
) -> None:
  """Writes `arrays` (flat `{path: array}`) and the model config.

  Args:
    directory: output directory (created).
    model_config: the `config.model` block.
    arrays: every state leaf of the model, by module path.
    step: checkpoint step number.
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  tree = {path_str(k): np.asarray(v) for k, v in arrays.items()}
  with ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
  ) as mngr:
    mngr.save(
        step,
        args=ocp.args.Composite(model=ocp.args.StandardSave(tree)),
        force=True,
    )
    mngr.wait_until_finished()
  if jax.process_index() > 0:  # Orbax wrote the arrays from process 0.
    return
  config = dict(ml_collections.ConfigDict(dict(model_config)).to_dict())
  atomic_files.write_json(
      os.path.join(directory, CONFIG_FILE), config, indent=2, sort_keys=True
  )


class CheckpointError(ValueError):
  """A model directory that cannot be read: the folder and why are named."""


def _cause(error: BaseException) -> str:
  """The first line of an error's message, shortened."""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  return lines[0][:160]


def resolve_model_dir(name: str) -> str:
  """The model folder `name` refers to.

  A folder that exists is itself. Otherwise a bundled model is found by
  its name (`tiny_cfbi_synthetic`) or by its path in a checkout
  (`models/tiny_cfbi_synthetic`), from any folder and in an installed
  package (`project_files.bundled_models`).

  Raises:
    FileNotFoundError: naming the missing folder and the bundled models.
  """
  if os.path.isdir(name):
    return name
  bundled = project_files.bundled_models()
  key = os.path.basename(os.path.normpath(name))
  if key in bundled and os.path.normpath(name) in (
      key,
      os.path.join('models', key),
  ):
    return bundled[key]
  hint = ', '.join(bundled) or 'none found'
  raise FileNotFoundError(
      f'model folder {name} does not exist: give a folder written by '
      f'cfbi-convert or train.py, or a bundled model by name ({hint})'
  )


def read_model_config(directory: str) -> ml_collections.ConfigDict:
  """The `config.model` block stored beside a checkpoint (`directory` as
  `resolve_model_dir` takes it)."""
  directory = resolve_model_dir(directory)
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{directory} is not a cfbi-jax model directory: {CONFIG_FILE} is '
        'missing (convert official weights with python -m cfbi_jax.convert)'
    )
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise CheckpointError(
        f'{path} is not valid JSON ({e}); the model '
        'directory is truncated or incomplete: copy or '
        'convert it again'
    ) from e


def load_model(
    directory: str,
    overrides: Optional[Mapping[str, Any]] = None,
    step: Optional[int] = None,
) -> Tuple[nnx.Module, ml_collections.ConfigDict]:
  """Rebuilds the model stored in `directory` and restores its weights.

  Args:
    directory: a directory written by `save_model`, or a bundled model's
      name (`resolve_model_dir`).
    overrides: evaluation-only model fields to change (the family's
      `eval_fields` and `bgr`, `models.eval_fields`).
    step: checkpoint step (latest if None).

  Returns:
    `(module, model_config)`.

  Raises:
    ValueError: if an override is not an evaluation field, or if the stored
      arrays do not match the model (names and shapes are listed).
    CheckpointError: the directory is truncated or incomplete (a file cut
      short or missing), or was written for a model this version does not
      build.
  """
  directory = os.path.abspath(resolve_model_dir(directory))
  config = read_model_config(directory)
  try:
    config = models.family_of(config).upgrade(config)
  except ValueError as e:
    raise CheckpointError(
        f'{directory}: {CONFIG_FILE} names a model this version of cfbi-jax '
        f'does not build ({_cause(e)})'
    ) from e
  for key, value in dict(overrides or {}).items():
    if key not in models.eval_fields(config):
      raise ValueError(
          f'model field {key!r} cannot be set for {directory}, a '
          f'{models.family_of(config).name} model: its evaluation fields '
          f'are {", ".join(models.eval_fields(config))}'
      )
    config[key] = value
  try:
    abstract = nnx.eval_shape(lambda: models.build(config))
  except (TypeError, KeyError, ValueError) as e:
    raise CheckpointError(
        f'{directory}: {CONFIG_FILE} describes a model this version of '
        f'cfbi-jax does not build ({_cause(e)}); was it written by another '
        'version?'
    ) from e
  expected = {path_str(k): v for k, v in flat_state(abstract).items()}
  with ocp.CheckpointManager(
      directory, item_handlers={'model': ocp.StandardCheckpointHandler()}
  ) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint step in {directory}')
    try:
      meta = mngr.item_metadata(step)['model']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'{directory}: the metadata of step {step} cannot be read '
          f'({_cause(e)}); the copy is incomplete: copy or convert it '
          'again'
      ) from e
    if meta is None:
      raise CheckpointError(
          f'{directory}: step {step} holds no model '
          'arrays; copy or convert it again'
      )
    stored_shapes = {k: tuple(v.shape) for k, v in meta.items()}
    check_match(expected, stored_shapes, what=directory)
    target = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in expected.items()
    }
    try:
      restored = mngr.restore(
          step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target))
      )['model']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'{directory}: the arrays of step {step} cannot be read '
          f'({_cause(e)}); a file is truncated or missing: copy or convert '
          'it again'
      ) from e
  module = nnx.eval_shape(lambda: models.build(config))
  set_state(module, {k: restored[path_str(k)] for k in flat_state(module)})
  return module, config


def set_state(
    module: nnx.Module, arrays: Mapping[Tuple[Any, ...], Any]
) -> None:
  """Fills every Param/BatchStat of `module` from `{path: array}` in place.

  `module` may be abstract (`nnx.eval_shape`), which avoids a random init of
  a model whose weights are about to be replaced.
  """
  state = nnx.state(module, _STATE_FILTER)
  for path, var in nnx.to_flat_state(state):
    var.set_value(jax.numpy.asarray(arrays[path]))
  nnx.update(module, state)


def check_match(
    expected: Mapping[str, Any], stored_shapes: Mapping[str, Any], what: str
) -> None:
  """Raises ValueError naming missing, unexpected and mis-shaped entries."""
  missing = sorted(set(expected) - set(stored_shapes))
  unexpected = sorted(set(stored_shapes) - set(expected))
  shapes = sorted(
      f'{k}: stored {tuple(stored_shapes[k])} vs model '
      f'{tuple(expected[k].shape)}'
      for k in set(expected) & set(stored_shapes)
      if tuple(stored_shapes[k]) != tuple(expected[k].shape)
  )
  if missing or unexpected or shapes:
    raise ValueError(
        f'checkpoint {what} does not match the model: '
        f'missing {missing[:20]}{"..." if len(missing) > 20 else ""} '
        f'({len(missing)}), unexpected {unexpected[:20]} ({len(unexpected)}), '
        f'shape mismatches {shapes[:20]} ({len(shapes)})'
    )
