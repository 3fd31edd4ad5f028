"""Access to the official-code parity fixtures (`../shared/fixtures/parity`).

The folder is taken from `CFBI_PARITY_DIR` (default: `../shared/fixtures/
parity` beside the repository). Tests that need it skip, with the reason,
only when it is absent. Weights are rebuilt with the folder's own
`make_state_dict.py` and converted with `cfbi_jax.convert`, so the parity
tests exercise the real conversion path.
"""

import functools
import importlib.util
import json
import os
import re
from typing import Dict, List

import numpy as np
import pytest
from flax import nnx

from cfbi_jax import checkpoint
from cfbi_jax import convert
from cfbi_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY_DIR = os.environ.get(
    'CFBI_PARITY_DIR', os.path.join(REPO, '..', 'shared', 'fixtures', 'parity')
)

requires_parity = pytest.mark.skipif(
    not os.path.isdir(PARITY_DIR),
    reason=f'parity fixtures not found at {PARITY_DIR} (set CFBI_PARITY_DIR)',
)


def variants() -> List[str]:
  """Variant folders present in the fixture directory (manifest.json)."""
  if not os.path.isdir(PARITY_DIR):
    return []
  return sorted(
      d
      for d in os.listdir(PARITY_DIR)
      if os.path.exists(os.path.join(PARITY_DIR, d, 'manifest.json'))
  )


def path(*parts: str) -> str:
  return os.path.join(PARITY_DIR, *parts)


@functools.lru_cache(maxsize=None)
def load_npz(*parts: str) -> Dict[str, np.ndarray]:
  with np.load(path(*parts), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


@functools.lru_cache(maxsize=None)
def atol(variant: str, name: str) -> float:
  """The recommended atol of a fixture array (per-frame names folded)."""
  with open(path(variant, 'tolerances.json')) as f:
    arrays = json.load(f)['arrays']
  # Per-frame names share one entry; frame-0 embeddings use the frame-1 one.
  name = re.sub(r'( f0|_f\d\d)$', '', name)
  if name not in arrays:
    matches = [k for k in arrays if k.split(' ')[0] == name]
    if len(matches) != 1:
      raise KeyError(f'no tolerance for {name} in {variant}')
    name = matches[0]
  return float(arrays[name]['atol'])


def state_dict(variant: str) -> Dict[str, np.ndarray]:
  """The manifest weights, rebuilt by the fixture folder's own script."""
  spec = importlib.util.spec_from_file_location(
      'make_state_dict', path('make_state_dict.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.make_state_dict(path(variant, 'manifest.json'))


def eval_overrides(variant: str, setting: str) -> Dict[str, object]:
  """Model fields of a fixture setting ('default' or 'alt').

  The alternative setting's flags are read from `alt_setting.npz:eval_args`
  (the official `eval_net.py` flags).
  """
  if setting == 'default':
    return {}
  args = json.loads(str(load_npz(variant, 'alt_setting.npz')['eval_args']))
  config = models.model_config(variant)
  out = {}
  for flag, value in args.items():
    flag = flag.lstrip('-')
    if flag == 'global_atrous_rate':
      out['global_atrous'] = (int(value),) + (1,) * (
          len(config.global_atrous) - 1
      )
    elif flag == 'min_matching_pixels':
      out['min_matching_pixels'] = int(value)
    elif flag == 'float16':
      out['matching_dtype'] = 'float16' if value else 'float32'
    elif flag == 'global_chunks':
      out['global_chunks'] = (int(value),) + tuple(config.global_chunks[1:])
    else:
      raise ValueError(f'unhandled official flag {flag}={value}')
  return out


def build_model(variant: str, setting: str = 'default') -> nnx.Module:
  """The variant with the fixture weights, converted by `cfbi_jax.convert`."""
  config = models.model_config(variant)
  config.update(eval_overrides(variant, setting))
  arrays = convert.convert_state_dict(
      convert.resolve_aliases(state_dict(variant), config), config
  )
  module = nnx.eval_shape(lambda: models.build(config))
  checkpoint.set_state(module, arrays)
  return module


def nchw(x: np.ndarray) -> np.ndarray:
  """`[..., h, w, C]` -> `[..., C, h, w]` for comparison with the fixtures."""
  return np.moveaxis(np.asarray(x), -1, -3)


def max_abs_diff(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  return float(np.max(np.abs(ours - theirs)))
