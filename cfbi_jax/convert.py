r"""Official CFBI / CFBI+ PyTorch weights -> cfbi-jax checkpoints.

    python -m cfbi_jax.convert --variant cfbi_resnet101 \
        --src resnet101_cfbi.pth --dst ckpt/cfbi_resnet101

`--src` is an official checkpoint as `.pth` (read with
`torch.load(weights_only=True)`, which executes no pickled code; torch is
needed only for this) or as an `.npz` of the state dict (no torch needed;
make one anywhere with
`np.savez(out, **{k: v.numpy() for k, v in sd.items()})`). `module.`
prefixes and `{'state_dict': ...}` wrappers are accepted. Every key must map
exactly once: missing or unexpected keys are an error that names them. Keys
that the official modules register twice (CFBI's `semantic_embedding.*`,
MobileNetV2's slice aliases) are read from their first name and must equal
it. The output is an orbax checkpoint with the variant's `config.model`
beside it (`checkpoint.save_model`).

`--backbone_only` instead reads a DeepLab/ResNet backbone checkpoint (a
torchvision-layout ResNet-101, or the official `*-deeplabv3p` DeepLab
weights) into the `feature_extracter` of a freshly initialised model
(seeded), for training; it reports which parts stayed at their init.

The name mapping is the model family's rule table (`Family.checkpoint_rules`:
the DeepLab's, `backbone.CHECKPOINT_RULES`, and the heads') on dotted module paths, and
layout changes are data (`_transform`): conv OIHW -> HWIO, Linear (out, in)
-> (in, out), (1, C, 1, 1) GCT/bias tensors -> (C,).
"""

import argparse
import os
import re
import sys
from typing import Dict, List, Mapping, Tuple

import numpy as np
from flax import nnx

from cfbi_jax import checkpoint
from cfbi_jax import cli
from cfbi_jax import models


def torch_key(path: Tuple, model_config) -> str:
  """The PyTorch state-dict key of an NNX state path (the model family's
  `CHECKPOINT_RULES`, applied in order)."""
  key = '.'.join(str(p) for p in path)
  for pattern, repl in models.family_of(model_config).checkpoint_rules:
    key = re.sub(pattern, repl, key)
  return key


def _transform(value: np.ndarray, target_shape: Tuple[int, ...]) -> np.ndarray:
  """PyTorch layout -> NNX layout, chosen by the ranks involved."""
  value = np.asarray(value, dtype=np.float32)
  if value.ndim == 4 and len(target_shape) == 4:  # conv OIHW -> HWIO
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2 and len(target_shape) == 2:  # Linear (out, in)
    value = value.T
  elif value.ndim != len(target_shape):  # (1,C,1,1) -> (C,)
    if value.size != int(np.prod(target_shape)):
      return value  # Left as is; the caller reports the shape mismatch.
    value = value.reshape(target_shape)
  return value


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a `.pth` (torch, weights only) or `.npz` state dict.

  Unwraps `{'state_dict': ...}` and strips `module.` prefixes.

  Raises:
    FileNotFoundError: `path` does not exist (checked before anything else).
    ValueError: a `.pth` file without torch installed.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path}: no such weights file (give the '
        'official .pth, or a state dict saved as .npz)'
    )
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      sd = {k: data[k] for k in data.files}
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(
          f'{path}: reading .pth needs torch (pip install torch); or save '
          'the state dict as .npz and pass that instead'
      ) from e
    obj = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(obj, Mapping) and 'state_dict' in obj:
      obj = obj['state_dict']
    sd = {
        k: v.detach().cpu().numpy()
        for k, v in obj.items()
        if hasattr(v, 'detach')
    }
  if 'state_dict' in sd and not hasattr(sd['state_dict'], 'shape'):
    sd = dict(sd['state_dict'])
  return {
      k[len('module.') :] if k.startswith('module.') else k: np.asarray(v)
      for k, v in sd.items()
  }


def resolve_aliases(
    sd: Mapping[str, np.ndarray], model_config
) -> Dict[str, np.ndarray]:
  """Drops alias keys after checking they equal their canonical key."""
  out, aliases = {}, {}
  for k, v in sd.items():
    canonical = k
    for pattern, repl in models.family_of(model_config).checkpoint_aliases:
      canonical = re.sub(pattern, repl, canonical)
    (aliases if canonical != k else out)[k] = (canonical, v)
  out = {k: v for k, (_, v) in out.items()}
  for alias, (canonical, v) in aliases.items():
    if canonical not in out:
      out[canonical] = v  # Only the alias was saved; read it.
    elif not np.array_equal(out[canonical], v):
      raise ValueError(f'alias {alias} differs from {canonical}')
  return out


def convert_state_dict(
    sd: Mapping[str, np.ndarray], model_config, prefix: str = ''
) -> Dict[Tuple, np.ndarray]:
  """Maps a state dict onto the model's state paths, one to one.

  Args:
    sd: `{torch key: array}` (aliases resolved).
    model_config: the `config.model` block of the target model.
    prefix: only model paths whose torch key starts with it are filled.

  Returns:
    `{NNX path: array}` in NNX layout.

  Raises:
    ValueError: naming missing keys, unexpected keys and shape mismatches.
  """
  abstract = nnx.eval_shape(lambda: models.build(model_config))
  targets = {
      p: v
      for p, v in checkpoint.flat_state(abstract).items()
      if torch_key(p, model_config).startswith(prefix)
  }
  keys = {torch_key(p, model_config): p for p in targets}
  if len(keys) != len(targets):
    raise AssertionError('the name table maps two model paths to one key')
  missing = sorted(set(keys) - set(sd))
  unexpected = sorted(set(sd) - set(keys))
  out, bad = {}, []
  for key, path in keys.items():
    if key not in sd:
      continue
    shape = tuple(targets[path].shape)
    value = _transform(sd[key], shape)
    if value.shape != shape:
      bad.append(f'{key}: {sd[key].shape} -> {value.shape} != {shape}')
    out[path] = value
  if missing or unexpected or bad:
    raise ValueError(
        f'state dict does not match {model_config.variant}: '
        f'missing {missing}, unexpected {unexpected}, '
        f'bad shapes {bad}'
    )
  return out


# Backbone checkpoints: keys that carry no model state (classifier heads, BN
# counters); `convert_backbone` drops them.
_BACKBONE_IGNORED = (
    r'^fc\.',
    r'num_batches_tracked$',
    r'^decoder\.last_conv\.8\.',
    r'^classifier\.',
)


def convert_backbone(
    sd: Mapping[str, np.ndarray], model_config, seed: int = 0
) -> Tuple[Dict[Tuple, np.ndarray], List[str], List[str]]:
  """Fills the DeepLab part of a fresh model from a backbone checkpoint.

  Accepts torchvision ResNet keys (`conv1.weight`, `layer1.0...`), DeepLab
  keys (`backbone.*`, `aspp.*`, `decoder.*`) or full CFBI keys.

  Returns:
    `(arrays, from_checkpoint, from_init)`: the full model state, and the
    torch keys loaded vs. left at the seeded init.
  """
  sd = {
      k: v
      for k, v in sd.items()
      if not any(re.search(p, k) for p in _BACKBONE_IGNORED)
  }
  canonical = {}
  for k, v in sd.items():
    if k.startswith('feature_extracter.'):
      canonical[k] = v
    elif k.split('.')[0] in ('backbone', 'aspp', 'decoder'):
      canonical['feature_extracter.' + k] = v
    else:
      canonical['feature_extracter.backbone.' + k] = v
  canonical = resolve_aliases(canonical, model_config)
  module = models.build(model_config, rngs=nnx.Rngs(seed))
  arrays = {p: np.asarray(v) for p, v in checkpoint.flat_state(module).items()}
  keys = {torch_key(p, model_config): p for p in arrays}
  backbone_keys = {
      k for k in keys if k.startswith('feature_extracter.backbone.')
  }
  unexpected = sorted(set(canonical) - set(keys))
  missing = sorted(backbone_keys - set(canonical))
  if unexpected or missing:
    raise ValueError(
        f'backbone checkpoint does not match: missing {missing},'
        f' unexpected {unexpected}'
    )
  loaded = []
  for key, value in canonical.items():
    path = keys[key]
    new = _transform(value, arrays[path].shape)
    if new.shape != arrays[path].shape:
      raise ValueError(
          f'{key}: shape {value.shape} does not fit ' f'{arrays[path].shape}'
      )
    arrays[path] = new
    loaded.append(key)
  left = sorted(set(keys) - set(loaded))
  return arrays, sorted(loaded), left


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--variant',
      required=True,
      choices=[v for v in models.variants() if not v.startswith('tiny')],
  )
  parser.add_argument('--src', required=True)
  parser.add_argument('--dst', required=True)
  parser.add_argument('--backbone_only', action='store_true')
  parser.add_argument(
      '--seed',
      type=int,
      default=0,
      help='init seed of the parts --backbone_only leaves',
  )
  args = parser.parse_args(argv)
  config = models.model_config(args.variant)
  family = models.family_of(config)
  if not args.backbone_only and not family.official_weights:
    raise ValueError(
        f'{family.name} has no official PyTorch weights to '
        'convert; use --backbone_only to start it from a DeepLab '
        'backbone checkpoint'
    )
  sd = load_state_dict(args.src)
  if args.backbone_only:
    arrays, loaded, left = convert_backbone(sd, config, args.seed)
    print(
        f'loaded {len(loaded)} backbone tensors; {len(left)} tensors keep '
        f'their seeded init (seed {args.seed}):'
    )
    prefixes = sorted({'.'.join(k.split('.')[:2]) for k in left})
    print('  ' + '\n  '.join(prefixes))
  else:
    arrays = convert_state_dict(resolve_aliases(sd, config), config)
    print(
        f'converted {len(arrays)} tensors '
        f'({sum(v.size for v in arrays.values()):,} values)'
    )
  checkpoint.save_model(args.dst, config, arrays)
  print(f'wrote {args.dst}')


if __name__ == '__main__':
  cli.run(main)
