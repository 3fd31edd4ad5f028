"""Tests for `cfbi_jax.convert` and `cfbi_jax.checkpoint`.

The official key lists come from `tests/fixtures/official_state_dict_keys.
json` (provenance inside: the parity manifests, i.e. the official models'
`state_dict()`), so these tests run without `../shared`. Tensors are filled
with their own index, so every converted array tells which key it came from.
"""

import json
import os

import numpy as np
import pytest

from cfbi_jax import checkpoint
from cfbi_jax import convert
from cfbi_jax import models

FIXTURE = os.path.join(
    os.path.dirname(__file__), 'fixtures', 'official_state_dict_keys.json'
)
OFFICIAL = ('cfbi_resnet101', 'cfbi_mobilenetv2', 'cfbip_resnet101')


def _entries(variant):
  with open(FIXTURE) as f:
    return json.load(f)['variants'][variant]


def _index_state_dict(variant):
  """Every tensor filled with its entry index (aliases share the original)."""
  sd, index = {}, {}
  for i, e in enumerate(_entries(variant)):
    if 'alias_of' in e:
      sd[e['key']] = sd[e['alias_of']]
    else:
      sd[e['key']] = np.broadcast_to(np.float32(i), tuple(e['shape']))
      index[e['key']] = i
  return sd, index


@pytest.mark.parametrize('variant', OFFICIAL)
def test_every_key_maps_exactly_once(variant):
  sd, index = _index_state_dict(variant)
  config = models.model_config(variant)
  arrays = convert.convert_state_dict(
      convert.resolve_aliases(sd, config), config
  )
  # One model path per non-alias key, and every array carries its key's id.
  assert len(arrays) == len(index)
  ids = sorted(int(np.asarray(v).flat[0]) for v in arrays.values())
  assert ids == sorted(index.values())
  for path, value in arrays.items():
    key = convert.torch_key(path, config)
    assert np.all(np.asarray(value) == index[key]), key


# Hand-checked correspondences for names that shapes cannot disambiguate
# (notes §6, §21): FPN scale order, decoder Sequential indices, MobileNetV2
# block layouts, ensembler gate numbering.
@pytest.mark.parametrize(
    'variant,path,key',
    [
        (
            'cfbip_resnet101',
            ('embedding', 'toplayer', 'conv', 'kernel'),
            'fpn.toplayer.0.weight',
        ),
        (
            'cfbip_resnet101',
            ('embedding', 'smooth1', 'gn', 'scale'),
            'fpn.smooth1.1.weight',
        ),
        (
            'cfbi_resnet101',
            ('feature_extracter', 'decoder', 'last_conv2', 'kernel'),
            'feature_extracter.decoder.last_conv.4.weight',
        ),
        (
            'cfbi_resnet101',
            ('feature_extracter', 'aspp', 'pool_bn', 'running_var'),
            'feature_extracter.aspp.global_avg_pool.2.running_var',
        ),
        (
            'cfbi_mobilenetv2',
            (
                'feature_extracter',
                'backbone',
                'features',
                0,
                'project_conv',
                'kernel',
            ),
            'feature_extracter.backbone.features.1.conv.3.weight',
        ),
        (
            'cfbi_mobilenetv2',
            (
                'feature_extracter',
                'backbone',
                'features',
                1,
                'dw_conv',
                'kernel',
            ),
            'feature_extracter.backbone.features.2.conv.3.weight',
        ),
        (
            'cfbi_mobilenetv2',
            ('feature_extracter', 'backbone', 'first_bn', 'bias'),
            'feature_extracter.backbone.features.0.1.bias',
        ),
        (
            'cfbi_resnet101',
            ('dynamic_seghead', 'gates', 8, 'IA', 'kernel'),
            'dynamic_seghead.IA9.IA.weight',
        ),
        (
            'cfbi_resnet101',
            ('dynamic_seghead', 'stages', 5, 'downsample_gn', 'scale'),
            'dynamic_seghead.layer6.downsample.1.weight',
        ),
        ('cfbi_resnet101', ('embedding', 'bn2', 'scale'), 'bn2.weight'),
    ],
)
def test_tricky_names(variant, path, key):
  assert convert.torch_key(path, models.model_config(variant)) == key


def test_layout_transforms():
  sd, _ = _index_state_dict('cfbi_resnet101')
  rng = np.random.default_rng(0)
  conv = rng.normal(size=(256, 1, 3, 3)).astype(np.float32)  # depthwise
  linear = rng.normal(size=(256, 400)).astype(np.float32)
  gct = rng.normal(size=(1, 364, 1, 1)).astype(np.float32)
  sd = dict(sd)
  sd['seperate_conv.weight'] = sd['semantic_embedding.0.weight'] = conv
  sd['dynamic_seghead.IA2.IA.weight'] = linear
  sd['dynamic_seghead.layer1.GCT1.alpha'] = gct
  config = models.model_config('cfbi_resnet101')
  arrays = convert.convert_state_dict(
      convert.resolve_aliases(sd, config), config
  )
  np.testing.assert_array_equal(
      arrays[('embedding', 'seperate_conv', 'kernel')],
      conv.transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
      arrays[('dynamic_seghead', 'gates', 1, 'IA', 'kernel')], linear.T
  )
  np.testing.assert_array_equal(
      arrays[('dynamic_seghead', 'stages', 0, 'GCT1', 'alpha')],
      gct.reshape(364),
  )
  np.testing.assert_array_equal(arrays[('bg_bias',)], sd['bg_bias'].reshape(1))


def test_missing_unexpected_and_alias_errors():
  sd, _ = _index_state_dict('cfbi_resnet101')
  config = models.model_config('cfbi_resnet101')
  broken = dict(sd)
  del broken['dynamic_prehead.conv.bias']
  broken['dynamic_seghead.layer9.conv1.weight'] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError) as err:
    convert.convert_state_dict(convert.resolve_aliases(broken, config), config)
  assert 'dynamic_prehead.conv.bias' in str(err.value)
  assert 'dynamic_seghead.layer9.conv1.weight' in str(err.value)
  bad_alias = dict(sd)
  bad_alias['semantic_embedding.1.bias'] = np.ones(256, np.float32)
  with pytest.raises(ValueError, match='semantic_embedding.1.bias'):
    convert.resolve_aliases(bad_alias, config)
  wrong_shape = dict(sd)
  wrong_shape['fg_bias'] = np.zeros((3, 1, 1, 1), np.float32)
  with pytest.raises(ValueError, match='fg_bias'):
    convert.convert_state_dict(
        convert.resolve_aliases(wrong_shape, config), config
    )


def _random_state_dict(variant, seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for e in _entries(variant):
    if 'alias_of' in e:
      sd[e['key']] = sd[e['alias_of']]
    else:
      sd[e['key']] = rng.normal(size=tuple(e['shape'])).astype(np.float32)
  return sd


def test_cli_npz_with_module_prefix_roundtrip(tmp_path):
  variant = 'cfbi_mobilenetv2'
  sd = _random_state_dict(variant)
  src = str(tmp_path / 'official.npz')
  np.savez(src, **{'module.' + k: v for k, v in sd.items()})
  dst = str(tmp_path / 'converted')
  convert.main(['--variant', variant, '--src', src, '--dst', dst])
  module, config = checkpoint.load_model(dst)
  assert config.backbone == 'mobilenetv2'
  restored = checkpoint.flat_state(module)
  expected = convert.convert_state_dict(
      convert.resolve_aliases(sd, config), models.model_config(variant)
  )
  assert set(restored) == set(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(np.asarray(restored[path]), value)
  # Only evaluation fields may be overridden when loading.
  module, config = checkpoint.load_model(dst, {'global_atrous': (2,)})
  assert module.global_atrous == (2,)
  with pytest.raises(ValueError, match='embedding_dim'):
    checkpoint.load_model(dst, {'embedding_dim': 64})


def test_checkpoint_that_does_not_match_the_model(tmp_path):
  variant = 'cfbi_mobilenetv2'
  sd = _random_state_dict(variant)
  src = str(tmp_path / 'official.npz')
  np.savez(src, **sd)
  dst = str(tmp_path / 'converted')
  convert.main(['--variant', variant, '--src', src, '--dst', dst])
  config_path = os.path.join(dst, checkpoint.CONFIG_FILE)
  with open(config_path) as f:
    config = json.load(f)
  config['prehead_dim'] = 32  # Weights were converted for 64.
  with open(config_path, 'w') as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match='shape mismatches.*dynamic_prehead'):
    checkpoint.load_model(dst)
  with pytest.raises(FileNotFoundError, match='model_config.json'):
    checkpoint.load_model(str(tmp_path))


def test_backbone_only_from_torchvision_layout():
  variant = 'cfbi_resnet101'
  sd = {}
  for e in _entries(variant):
    prefix = 'feature_extracter.backbone.'
    if e['key'].startswith(prefix):
      sd[e['key'][len(prefix) :]] = np.full(tuple(e['shape']), 0.5, np.float32)
  sd['fc.weight'] = np.zeros((1000, 2048), np.float32)
  sd['fc.bias'] = np.zeros((1000,), np.float32)
  sd['bn1.num_batches_tracked'] = np.zeros((), np.int64)
  config = models.model_config('tiny_cfbi')
  with pytest.raises(ValueError, match='does not fit|does not match'):
    convert.convert_backbone(sd, config)
  arrays, loaded, left = convert.convert_backbone(
      sd, models.model_config(variant)
  )
  assert len(loaded) == sum(
      1
      for e in _entries(variant)
      if e['key'].startswith('feature_extracter.backbone.')
  )
  assert all(k.startswith('feature_extracter.backbone.') for k in loaded)
  assert any(k.startswith('feature_extracter.aspp.') for k in left)
  assert np.all(
      arrays[
          ('feature_extracter', 'backbone', 'layer4', 2, 'bn3', 'running_var')
      ]
      == 0.5
  )
  del sd['layer3.22.conv2.weight']
  with pytest.raises(ValueError, match='layer3.22.conv2.weight'):
    convert.convert_backbone(sd, models.model_config(variant))


def test_pth_through_torch(tmp_path):
  torch = pytest.importorskip(
      'torch', reason='torch is optional; .pth reading needs it'
  )
  sd = _random_state_dict('cfbi_mobilenetv2')
  src = str(tmp_path / 'official.pth')
  torch.save(
      {
          'state_dict': {
              'module.' + k: torch.from_numpy(v.copy()) for k, v in sd.items()
          }
      },
      src,
  )
  loaded = convert.load_state_dict(src)
  assert set(loaded) == set(sd)
  np.testing.assert_array_equal(loaded['fg_bias'], sd['fg_bias'])


@pytest.mark.parametrize(
    'variant', ['feelvos_resnet101', 'videomatch_mobilenetv2']
)
def test_baselines_take_a_deeplab_backbone_only(variant):
  """FEELVOS and VideoMatch have no official weights: a full conversion is
  refused with the way out, and their DeepLab has the official CFBI
  model's backbone names, so `--backbone_only` checkpoints fit."""
  with pytest.raises(ValueError, match='--backbone_only'):
    convert.main(
        ['--variant', variant, '--src', 'unused.pth', '--dst', 'unused']
    )
  from flax import nnx  # pylint: disable=g-import-not-at-top

  config = models.model_config(variant)
  cfbi_variant = 'cfbi_' + variant.split('_')[1]
  names = lambda c: {
      convert.torch_key(path, c)
      for path in checkpoint.flat_state(nnx.eval_shape(lambda: models.build(c)))
      if path[0] == 'feature_extracter'
  }
  official = {
      e['key']
      for e in _entries(cfbi_variant)
      if e['key'].startswith('feature_extracter.')
      and 'num_batches_tracked' not in e['key']
  }
  assert names(config) == names(models.model_config(cfbi_variant))
  assert names(config) <= official
