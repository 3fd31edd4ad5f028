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
      'model.backbone_norm',
      'init.zero_attention_gates',
      'optim.name',
      'optim.lr',
      'train.steps',
      'optim.total_steps',
      'train.hard_mining_step',
      'train.own_predictions_from_step',
      'train.recipe',
  }
  assert (scratch.model.backbone_norm, scratch.optim.name) == (
      'group_norm',
      'adamw',
  )
  assert (sgd.model.backbone_norm, sgd.optim.name) == ('frozen_bn', 'sgd')
  assert scratch.init.zero_attention_gates and not sgd.init.zero_attention_gates
  short = synthetic.get_config('steps=100')
  assert (short.train.steps, short.train.own_predictions_from_step) == (100, 51)
  # CFBI's paper recipe here is the shared one, SGD at `sgd`'s lr, on a
  # GroupNorm DeepLab with random gates; `cfbi` is `scratch`.
  paper = synthetic.get_config('recipe=paper')
  assert _diff(sgd, paper) == {
      'model.backbone_norm',
      'train.steps',
      'optim.total_steps',
      'train.hard_mining_step',
      'train.own_predictions_from_step',
      'train.recipe',
  }
  assert _diff(scratch, synthetic.get_config('recipe=cfbi')) == set()
  with pytest.raises(ValueError, match='recipe'):
    synthetic.get_config('recipe=adam')
  with pytest.raises(ValueError, match='ablation'):
    synthetic.get_config('ablation=no_ensembler')


def _load_bench(name):
  """`bench/<name>.py` as a module (bench/ is scripts, not a package)."""
  path = os.path.join(
      os.path.dirname(os.path.dirname(__file__)), 'bench', f'{name}.py'
  )
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_ablation_table_reports_paired_deltas():
  """The table's mean, spread, std and same-seed deltas, hand-computed:
  full CFBI scores 50 and 20 with seeds 0 and 1, `no_bias` 60 and 24, so
  no_bias has mean 42, spread 18, std 25.46 and deltas +10, +4 (mean +7)."""
  ablate = _load_bench('ablate')

  def summary(jf, j, f):
    return {
        'davis': {'J&F-Mean': jf / 100, 'J-Mean': j / 100, 'F-Mean': f / 100},
        'copy_first_frame': {'J&F-Mean': 0.1, 'J-Mean': 0.12, 'F-Mean': 0.08},
        'train_seconds': 90.0,
    }

  args = argparse.Namespace(
      ablations=['none', 'no_bias'],
      seeds=[0, 1],
      steps=300,
      batch_size=2,
      num_frames=2,
      crop=65,
      recipe='scratch',
      test_videos=10,
      test_seed=3,
      test_scale=1.5,
      backbone_from='',
  )
  results = {
      'none': [summary(50, 55, 45), summary(20, 22, 18)],
      'no_bias': [summary(60, 62, 58), summary(24, 26, 22)],
  }
  report = ablate.table(args, results)
  rows = {
      line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
      for line in report.splitlines()
      if line.startswith('| `') or line.startswith('| copy')
  }
  assert rows['`none`'][1:6] == ['35.0', '±15.0', '21.2', '', '']
  assert rows['`no_bias`'][1:] == [
      '42.0',
      '±18.0',
      '25.5',
      '+7.0',
      '+10.0, +4.0',
      '44.0',
      '40.0',
      '60.0, 24.0',
  ]
  assert rows['copy first frame'][1] == '10.0'
  assert 'Training time, all runs: 6 minutes.' in report


def test_model_argument_builds_each_family():
  """`model=` swaps the model block (its tiny variant); with `recipe=cfbi`
  only FEELVOS's and VideoMatch's training rule changes (no sequential
  training); by default they take their paper recipes, scaled."""
  default = synthetic.get_config()
  assert default.model.variant == 'tiny_cfbi'
  for model, variant in (
      ('cfbi', 'tiny_cfbi'),
      ('cfbip', 'tiny_cfbip'),
      ('feelvos', 'tiny_feelvos'),
      ('videomatch', 'tiny_videomatch'),
  ):
    config = synthetic.get_config(f'model={model},recipe=cfbi')
    assert config.model.variant == variant
    assert config.model.backbone_norm == 'group_norm'  # The recipe's.
    changed = {
        k for k in _diff_any(default, config) if not k.startswith('model.')
    }
    sequential = model in ('cfbi', 'cfbip')
    assert changed == (set() if sequential else {'train.own_predictions'})
    assert config.train.own_predictions == sequential
    models.build(config.model, rngs=nnx.Rngs(0))
    own = synthetic.get_config(f'model={model}')
    assert own.train.recipe == ('scratch' if sequential else 'paper')
  feelvos = synthetic.get_config('model=feelvos')
  # The paper's 0.0007 x 5, constant, N = 1 adjacent frame, 15% from the
  # start; this benchmark's batch and steps.
  assert (feelvos.optim.name, feelvos.optim.lr, feelvos.optim.power) == (
      'sgd',
      pytest.approx(0.0035),
      0.0,
  )
  assert (feelvos.train.num_frames, feelvos.data.max_gap) == (1, 1)
  assert (feelvos.train.hard_mining_step, feelvos.train.top_k_percent) == (
      0,
      0.15,
  )
  assert (feelvos.train.batch_size, feelvos.train.steps) == (2, 3700)
  short = synthetic.get_config('model=feelvos,steps=100')
  assert short.train.hard_mining_step == 0  # No ramp, at any length.
  videomatch = synthetic.get_config('model=videomatch')
  assert (videomatch.optim.name, videomatch.optim.lr) == (
      'adam',
      pytest.approx(5e-5),
  )
  assert videomatch.data.frame_sampling == 'pairs'
  assert tuple(videomatch.data.scale_range) == (0.5, 1.5)


def test_paper_recipes_in_the_training_configs():
  """FEELVOS §4 and VideoMatch §4.1 as written in the papers (values typed
  here from the paper text), applied over every stage's values; `recipe=
  cfbi` is the shared recipe; CFBI's paper recipe is the shared one."""
  from configs import davis  # pylint: disable=g-import-not-at-top
  from configs import davis_ytvos  # pylint: disable=g-import-not-at-top
  from configs import ytvos  # pylint: disable=g-import-not-at-top

  for stage in (ytvos, davis, davis_ytvos):
    feelvos = stage.get_config('model=feelvos')
    assert feelvos.train.recipe == 'paper'
    assert (feelvos.optim.name, feelvos.optim.lr) == ('sgd', 0.0007)
    assert (feelvos.optim.momentum, feelvos.optim.nesterov) == (0.9, False)
    assert (feelvos.train.steps, feelvos.optim.total_steps) == (200_000,) * 2
    assert feelvos.train.batch_size == 3 * 16
    assert (feelvos.train.num_frames, feelvos.data.max_gap) == (1, 1)
    assert feelvos.train.top_k_percent == 0.15
    assert feelvos.train.hard_mining_step == 0
    assert not feelvos.train.own_predictions
    videomatch = stage.get_config('model=videomatch')
    assert (videomatch.optim.name, videomatch.optim.lr) == ('adam', 1e-5)
    assert videomatch.optim.weight_decay == 5e-4
    assert tuple(videomatch.data.scale_range) == (0.5, 1.5)
    assert videomatch.data.frame_sampling == 'pairs'
    assert videomatch.train.top_k_percent == 1.0
    cfbi = stage.get_config('model=cfbi')
    for model in ('cfbi', 'feelvos', 'videomatch'):
      shared = stage.get_config(f'model={model},recipe=cfbi')
      assert shared.train.recipe == 'cfbi'
      changed = {
          k
          for k in _diff_any(cfbi, shared)
          if not k.startswith('model.') and k != 'train.recipe'
      }
      assert changed <= {'train.own_predictions', 'train.remat'}, model
    assert _diff_any(cfbi, stage.get_config('model=cfbi,recipe=paper')) == set()
  smoke = ytvos.get_config('model=feelvos,runlocal')
  assert (smoke.train.steps, smoke.train.batch_size) == (20, 2)
  assert smoke.optim.lr == 0.0007
  with pytest.raises(ValueError, match='recipe must be one of'):
    ytvos.get_config('model=feelvos,recipe=adam')


def _diff_any(a, b):
  """Changed paths, counting fields present in only one config."""
  fa, fb = _flat(a), _flat(b)
  return {
      k for k in set(fa) | set(fb) if fa.get(k, object()) != fb.get(k, object())
  }


def test_training_configs_take_model_and_backbone():
  from configs import common  # pylint: disable=g-import-not-at-top
  from configs import ytvos  # pylint: disable=g-import-not-at-top

  cases = {
      'model=feelvos,runlocal': 'tiny_feelvos',
      'model=videomatch': 'videomatch_resnet101',
      'model=feelvos,backbone=mobilenet': 'feelvos_mobilenetv2',
      'model=cfbip': 'cfbip_resnet101',
      'variant=mobilenet': 'cfbi_mobilenetv2',  # The older spelling.
      None: 'cfbi_resnet101',
  }
  for arg, variant in cases.items():
    config = ytvos.get_config(arg)
    assert config.model.variant == variant, arg
    assert config.train.own_predictions == variant.startswith(
        ('cfbi', 'tiny_cfbi')
    ), arg
  with pytest.raises(ValueError, match='no mobilenet variant'):
    common.training_preset('cfbip', 'mobilenet', False)
  with pytest.raises(ValueError, match='model must be one of'):
    ytvos.get_config('model=stm')


def test_schedule_respects_own_predictions():
  from cfbi_jax import trainer  # pylint: disable=g-import-not-at-top

  config = synthetic.get_config('steps=100')
  late = config.train.own_predictions_from_step + 1
  assert trainer.schedule_values(late, config.train, 100)['use_own_predictions']
  config.train.own_predictions = False
  assert not trainer.schedule_values(late, config.train, 100)[
      'use_own_predictions'
  ]


def test_model_comparison_reports_paired_deltas():
  """docs/models.md's row, hand-computed: CFBI scores 50 and 20 (seeds 0,
  1), FEELVOS 40 and 26: mean 33, spread 7, std 9.90, deltas -10, +6 (mean
  -2); frames/s without each run's first video: (10 + 30) / (2 + 3) = 8
  and (20 + 20) / (4 + 6) = 4, the best 8."""
  compare = _load_bench('compare_models')

  def summary(jf, sequences):
    return {
        'davis': {'J&F-Mean': jf / 100, 'J-Mean': jf / 100, 'F-Mean': jf / 100},
        'sequences': [{'frames': n, 'seconds': t} for n, t in sequences],
        'train_seconds': 60.0,
    }

  args = argparse.Namespace(
      models=['cfbi', 'feelvos'],
      seeds=[0, 1],
      steps=400,
      batch_size=2,
      num_frames=2,
      crop=65,
      test_videos=10,
      test_seed=3,
      test_scale=1.5,
      backbone_from='',
      recipe='own',
      budgets=[200, 400],
      agree=3.0,
  )
  results = {
      'cfbi': [summary(50, [(5, 9), (10, 1)]), summary(20, [(5, 9), (10, 1)])],
      'feelvos': [
          summary(40, [(5, 50), (10, 2), (30, 3)]),
          summary(26, [(5, 50), (20, 4), (20, 6)]),
      ],
  }
  # The budget search: 200 steps disagreed (+-4.5), 400 agreed (+-1.5).
  search = [(200, [41.0, 50.0], 4.5), (400, [50.0, 47.0], 1.5)]
  report = compare.report(args, results, search)
  assert '| 200 | 41.0, 50.0 | ±4.5 |' in report
  assert '| 400 | 50.0, 47.0 | ±1.5 |' in report
  row = next(
      line for line in report.splitlines() if line.startswith('| FEELVOS')
  )
  cells = [c.strip() for c in row.split('|')[2:-1]]
  assert cells.pop(0) == "the paper's, lr x5"  # FEELVOS's own recipe.
  assert cells[:8] == [
      '33.0',
      '±7.0',
      '9.9',
      '-2.0',
      '-10.0, +6.0',
      '33.0',
      '33.0',
      '8.0',
  ]
  assert cells[-1] == '40.0, 26.0'
  assert int(cells[8].replace(',', '')) > 100_000  # Parameters, built.
