"""Tests for `configs/synthetic.py`: the ablation and recipe switches.

Each ablation of `ABLATIONS` must change exactly the config fields it names
(compared field by field with the full model's config), and the two
recipes must differ exactly in what their docstrings promise; unknown names
are errors. Every resulting model config builds a model.
"""

import pytest
from flax import nnx

from cfbi_jax import model as model_lib
from configs import synthetic


def _flat(config):
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      path = f'{prefix}{key}'
      if hasattr(value, 'items'):
        walk(path + '.', value)
      else:
        out[path] = value
  walk('', config)
  return out


def _diff(a, b):
  fa, fb = _flat(a), _flat(b)
  assert set(fa) == set(fb)
  return {k for k in fa if fa[k] != fb[k]}


EXPECTED = {
    'none': set(),
    'no_background': {'model.use_background'},
    'no_bias': {'model.use_matching_bias'},
    'single_window': {'model.local_windows'},
    'no_attention': {'model.use_attention'},
    'feelvos_head': {'model.head'},
    'normal_crop': {'data.balanced_crop'},
    'gt_masks': {'train.own_predictions_from_step'},
}


@pytest.mark.parametrize('recipe', sorted(synthetic.RECIPES))
def test_each_ablation_changes_only_its_fields(recipe):
  assert set(EXPECTED) == set(synthetic.ABLATIONS)
  full = synthetic.get_config(f'recipe={recipe}')
  for name, fields in EXPECTED.items():
    config = synthetic.get_config(f'recipe={recipe},ablation={name}')
    assert _diff(full, config) == fields, name
    model_lib.from_config(config.model, rngs=nnx.Rngs(0))
  single = synthetic.get_config(f'recipe={recipe},ablation=single_window')
  assert [list(w) for w in single.model.local_windows] == [[4]]
  gt = synthetic.get_config(f'recipe={recipe},ablation=gt_masks')
  assert gt.train.own_predictions_from_step > gt.train.steps


def test_recipes():
  scratch = synthetic.get_config()
  sgd = synthetic.get_config('recipe=sgd')
  assert _diff(scratch, sgd) == {
      'model.backbone_norm', 'init.zero_attention_gates', 'optim.name',
      'optim.lr', 'train.steps', 'optim.total_steps',
      'train.hard_mining_step', 'train.own_predictions_from_step'}
  assert (scratch.model.backbone_norm, scratch.optim.name) == (
      'group_norm', 'adamw')
  assert (sgd.model.backbone_norm, sgd.optim.name) == ('frozen_bn', 'sgd')
  assert scratch.init.zero_attention_gates and not sgd.init.zero_attention_gates
  short = synthetic.get_config('steps=100')
  assert (short.train.steps, short.train.own_predictions_from_step) == (100, 51)
  with pytest.raises(ValueError, match='recipe'):
    synthetic.get_config('recipe=adam')
  with pytest.raises(ValueError, match='ablation'):
    synthetic.get_config('ablation=no_ensembler')
