"""Official CFBI / CFBI+ PyTorch weights -> cfbi-jax checkpoints.

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

The name mapping is the rule table `_RULES` on dotted module paths, and
layout changes are data (`_transform`): conv OIHW -> HWIO, Linear (out, in)
-> (in, out), (1, C, 1, 1) GCT/bias tensors -> (C,).
"""

import argparse
import re
import sys
from typing import Callable, Dict, List, Mapping, Tuple, Union

import numpy as np
from flax import nnx

from cfbi_jax import checkpoint
from cfbi_jax import model as model_lib
from cfbi_jax import presets

_MNV2_T1 = {'dw_conv': 0, 'dw_bn': 1, 'project_conv': 3, 'project_bn': 4}
_MNV2 = {'expand_conv': 0, 'expand_bn': 1, 'dw_conv': 3, 'dw_bn': 4,
         'project_conv': 6, 'project_bn': 7}


def _mnv2_block(m: re.Match) -> str:
  index = int(m[1])
  table = _MNV2_T1 if index == 0 else _MNV2
  return f'.features.{index + 1}.conv.{table[m[2]]}.'


Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]

# Applied in order to the dotted NNX path; the result is the PyTorch key.
_RULES: List[Rule] = [
    # DeepLab backbone.
    (r'\.downsample_conv\.', '.downsample.0.'),
    (r'\.downsample_(bn|gn)\.', '.downsample.1.'),
    (r'\.features\.(\d+)\.(\w+)\.', _mnv2_block),
    (r'\.backbone\.first_conv\.', '.backbone.features.0.0.'),
    (r'\.backbone\.first_bn\.', '.backbone.features.0.1.'),
    # ASPP (DeepLab and ensembler) branches and pooling.
    (r'\.branches\.(\d+)\.', lambda m: f'.aspp{int(m[1]) + 1}.'),
    (r'\.pool_conv\.', '.global_avg_pool.1.'),
    (r'\.pool_bn\.', '.global_avg_pool.2.'),
    # DeepLab decoder.
    (r'\.last_conv1\.', '.last_conv.0.'), (r'\.last_bn1\.', '.last_conv.1.'),
    (r'\.last_conv2\.', '.last_conv.4.'), (r'\.last_bn2\.', '.last_conv.5.'),
    # Embedding heads: CFBI's are top-level modules, CFBI+'s FPN is `fpn`.
    (r'^embedding\.(\w+)\.conv\.', r'fpn.\1.0.'),
    (r'^embedding\.(\w+)\.gn\.', r'fpn.\1.1.'),
    (r'^embedding\.', ''),
    # CFBI ensembler stages and gates.
    (r'^dynamic_seghead\.gates\.(\d+)\.',
     lambda m: f'dynamic_seghead.IA{int(m[1]) + 1}.'),
    (r'^dynamic_seghead\.stages\.(\d+)\.',
     lambda m: f'dynamic_seghead.layer{int(m[1]) + 1}.'),
    # Leaf names.
    (r'\.kernel$', '.weight'), (r'\.scale$', '.weight'),
]

# Alias key patterns (same tensor registered twice) -> the canonical name.
_ALIASES: List[Rule] = [
    (r'^semantic_embedding\.0\.', 'seperate_conv.'),
    (r'^semantic_embedding\.1\.', 'bn1.'),
    (r'^semantic_embedding\.3\.', 'embedding_conv.'),
    (r'^semantic_embedding\.4\.', 'bn2.'),
    (r'^feature_extracter\.backbone\.(low_level_features|high_level_features|'
     r'feautre_8x|feature_16x|feature_32x)\.', 'feature_extracter.backbone.'
     'features.'),
]


def torch_key(path: Tuple) -> str:
  """The PyTorch state-dict key of an NNX state path."""
  key = '.'.join(str(p) for p in path)
  for pattern, repl in _RULES:
    key = re.sub(pattern, repl, key)
  return key


def _transform(value: np.ndarray, target_shape: Tuple[int, ...]) -> np.ndarray:
  """PyTorch layout -> NNX layout, chosen by the ranks involved."""
  value = np.asarray(value, dtype=np.float32)
  if value.ndim == 4 and len(target_shape) == 4:      # conv OIHW -> HWIO
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2 and len(target_shape) == 2:    # Linear (out, in)
    value = value.T
  elif value.ndim != len(target_shape):               # (1,C,1,1) -> (C,)
    if value.size != int(np.prod(target_shape)):
      return value  # Left as is; the caller reports the shape mismatch.
    value = value.reshape(target_shape)
  return value


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a `.pth` (torch, weights only) or `.npz` state dict.

  Unwraps `{'state_dict': ...}` and strips `module.` prefixes.
  """
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      sd = {k: data[k] for k in data.files}
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise SystemExit(
          f'{path}: reading .pth needs torch (pip install torch); or save '
          'the state dict as .npz and pass that instead') from e
    obj = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(obj, Mapping) and 'state_dict' in obj:
      obj = obj['state_dict']
    sd = {k: v.detach().cpu().numpy() for k, v in obj.items()
          if hasattr(v, 'detach')}
  if 'state_dict' in sd and not hasattr(sd['state_dict'], 'shape'):
    sd = dict(sd['state_dict'])
  return {k[len('module.'):] if k.startswith('module.') else k: np.asarray(v)
          for k, v in sd.items()}


def resolve_aliases(sd: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Drops alias keys after checking they equal their canonical key."""
  out, aliases = {}, {}
  for k, v in sd.items():
    canonical = k
    for pattern, repl in _ALIASES:
      canonical = re.sub(pattern, repl, canonical)
    (aliases if canonical != k else out)[k] = (canonical, v)
  out = {k: v for k, (_, v) in out.items()}
  for alias, (canonical, v) in aliases.items():
    if canonical not in out:
      out[canonical] = v  # Only the alias was saved; read it.
    elif not np.array_equal(out[canonical], v):
      raise ValueError(f'alias {alias} differs from {canonical}')
  return out


def convert_state_dict(sd: Mapping[str, np.ndarray], model_config,
                       prefix: str = '') -> Dict[Tuple, np.ndarray]:
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
  abstract = nnx.eval_shape(lambda: model_lib.from_config(model_config))
  targets = {p: v for p, v in checkpoint.flat_state(abstract).items()
             if torch_key(p).startswith(prefix)}
  keys = {torch_key(p): p for p in targets}
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
    raise ValueError(f'state dict does not match {model_config.variant}: '
                     f'missing {missing}, unexpected {unexpected}, '
                     f'bad shapes {bad}')
  return out


# Backbone checkpoints: key prefixes to strip, and keys that carry no model
# state (classifier heads, BN counters) and are reported then dropped.
_BACKBONE_PREFIXES = ('feature_extracter.', 'backbone.', '')
_BACKBONE_IGNORED = (r'^fc\.', r'num_batches_tracked$', r'^decoder\.last_conv\.8\.',
                     r'^classifier\.')


def convert_backbone(sd: Mapping[str, np.ndarray], model_config,
                     seed: int = 0) -> Tuple[Dict[Tuple, np.ndarray],
                                             List[str], List[str]]:
  """Fills the DeepLab part of a fresh model from a backbone checkpoint.

  Accepts torchvision ResNet keys (`conv1.weight`, `layer1.0...`), DeepLab
  keys (`backbone.*`, `aspp.*`, `decoder.*`) or full CFBI keys.

  Returns:
    `(arrays, from_checkpoint, from_init)`: the full model state, and the
    torch keys loaded vs. left at the seeded init.
  """
  sd = {k: v for k, v in sd.items()
        if not any(re.search(p, k) for p in _BACKBONE_IGNORED)}
  canonical = {}
  for k, v in sd.items():
    if k.startswith('feature_extracter.'):
      canonical[k] = v
    elif k.split('.')[0] in ('backbone', 'aspp', 'decoder'):
      canonical['feature_extracter.' + k] = v
    else:
      canonical['feature_extracter.backbone.' + k] = v
  canonical = resolve_aliases(canonical)
  module = model_lib.from_config(model_config, rngs=nnx.Rngs(seed))
  arrays = {p: np.asarray(v) for p, v in checkpoint.flat_state(module).items()}
  keys = {torch_key(p): p for p in arrays}
  backbone_keys = {k for k in keys if k.startswith('feature_extracter.backbone.')}
  unexpected = sorted(set(canonical) - set(keys))
  missing = sorted(backbone_keys - set(canonical))
  if unexpected or missing:
    raise ValueError(f'backbone checkpoint does not match: missing {missing},'
                     f' unexpected {unexpected}')
  loaded = []
  for key, value in canonical.items():
    path = keys[key]
    new = _transform(value, arrays[path].shape)
    if new.shape != arrays[path].shape:
      raise ValueError(f'{key}: shape {value.shape} does not fit '
                       f'{arrays[path].shape}')
    arrays[path] = new
    loaded.append(key)
  left = sorted(set(keys) - set(loaded))
  return arrays, sorted(loaded), left


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variant', required=True,
                      choices=[v for v in presets.VARIANTS
                               if not v.startswith('tiny')])
  parser.add_argument('--src', required=True)
  parser.add_argument('--dst', required=True)
  parser.add_argument('--backbone_only', action='store_true')
  parser.add_argument('--seed', type=int, default=0,
                      help='init seed of the parts --backbone_only leaves')
  args = parser.parse_args(argv)
  config = presets.model_config(args.variant)
  sd = load_state_dict(args.src)
  if args.backbone_only:
    arrays, loaded, left = convert_backbone(sd, config, args.seed)
    print(f'loaded {len(loaded)} backbone tensors; {len(left)} tensors keep '
          f'their seeded init (seed {args.seed}):')
    prefixes = sorted({'.'.join(k.split('.')[:2]) for k in left})
    print('  ' + '\n  '.join(prefixes))
  else:
    arrays = convert_state_dict(resolve_aliases(sd), config)
    print(f'converted {len(arrays)} tensors '
          f'({sum(v.size for v in arrays.values()):,} values)')
  checkpoint.save_model(args.dst, config, arrays)
  print(f'wrote {args.dst}')


if __name__ == '__main__':
  main(sys.argv[1:])
