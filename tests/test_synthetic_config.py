"""Tests for `configs/synthetic.py`: the ablation and recipe switches.

Each ablation of `ABLATIONS` must change exactly the config fields it names
(compared field by field with the full model's config), and the two
recipes must differ exactly in what their docstrings promise; unknown names
are errors. Every resulting model config builds a model.
"""

import argparse
import importlib.util
import os

import pytest
from flax import nnx

from cfbi_jax import models
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
    models.build(config.model, rngs=nnx.Rngs(0))
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


def _load_ablate():
  """`bench/ablate.py` as a module (bench/ is scripts, not a package)."""
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'bench',
                      'ablate.py')
  spec = importlib.util.spec_from_file_location('ablate', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_ablation_table_reports_paired_deltas():
  """The table's mean, spread, std and same-seed deltas, hand-computed:
  full CFBI scores 50 and 20 with seeds 0 and 1, `no_bias` 60 and 24, so
  no_bias has mean 42, spread 18, std 25.46 and deltas +10, +4 (mean +7)."""
  ablate = _load_ablate()

  def summary(jf, j, f):
    return {'davis': {'J&F-Mean': jf / 100, 'J-Mean': j / 100,
                      'F-Mean': f / 100},
            'copy_first_frame': {'J&F-Mean': 0.1, 'J-Mean': 0.12,
                                 'F-Mean': 0.08},
            'train_seconds': 90.0}

  args = argparse.Namespace(
      ablations=['none', 'no_bias'], seeds=[0, 1], steps=300, batch_size=2,
      num_frames=2, crop=65, recipe='scratch', test_videos=10, test_seed=3,
      test_scale=1.5, backbone_from='')
  results = {'none': [summary(50, 55, 45), summary(20, 22, 18)],
             'no_bias': [summary(60, 62, 58), summary(24, 26, 22)]}
  report = ablate.table(args, results)
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
          for line in report.splitlines()
          if line.startswith('| `') or line.startswith('| copy')}
  assert rows['`none`'][1:6] == ['35.0', '±15.0', '21.2', '', '']
  assert rows['`no_bias`'][1:] == ['42.0', '±18.0', '25.5', '+7.0',
                                   '+10.0, +4.0', '44.0', '40.0', '60.0, 24.0']
  assert rows['copy first frame'][1] == '10.0'
  assert 'Training time, all runs: 6 minutes.' in report
