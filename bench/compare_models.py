"""CFBI, CFBI+, FEELVOS and VideoMatch, each trained by its own paper's
recipe from one shared pretrained DeepLab, scored the same way on the
synthetic benchmark.

    python bench/compare_models.py                 # budget search, 4 x 3
    python bench/compare_models.py --models cfbi feelvos --seeds 0 1

1. The starting point: every run's DeepLab feature extractor is that of
   `--backbone_from` (default `runs/pretrained_deeplab`, which
   `bench/pretrain_backbone.py` writes first if it is missing: the tiny
   DeepLab trained alone on per-frame foreground/background segmentation,
   our stand-in for the papers' ImageNet/COCO pretraining, which no family
   trained); everything after it starts from the seed.
2. The recipe (`configs/synthetic.py`): `--recipe own` (default) trains
   each family by its own default there: FEELVOS and VideoMatch by their
   papers (`Family.recipe`: FEELVOS's SGD at a constant rate on reference
   + two adjacent frames with the 15% hardest pixels; VideoMatch's Adam on
   random frame pairs with its per-object loss; the papers' learning rates
   x5), CFBI and CFBI+ by CFBI's recipe on this benchmark (`scratch`:
   AdamW 0.002, the bundled model's). `--recipe paper` gives CFBI and
   CFBI+ their papers' SGD too (x5: 0.05); `--recipe cfbi` trains all four
   by `scratch`. Each model keeps its paper's training rule
   (CFBI's own predictions from half-way; FEELVOS and VideoMatch the
   ground truth). Steps, batch (`--batch_size`) and crop (`--crop`) are
   the same for all; N current frames is `--num_frames` unless the
   family's recipe fixes it (FEELVOS: 1).
3. The budget: the steps are the first of `--budgets` at which CFBI's
   seeds agree within +-`--agree` J&F ((max - min) / 2): CFBI runs at each
   budget in turn until one does (or the last is reached; a budget whose
   first seeds already disagree by more is left early), and the search is
   reported. `--steps` skips the search.
4. Scoring: `evaluate.py` on the same held-out videos (seed `--test_seed`)
   at one test scale, written to `--out` (`docs/models.md`): J&F mean,
   spread and the paired difference to CFBI (same seed), frames per second
   on this machine and parameters, and the papers' numbers.

Runs go through `bench/synthetic_runs.py` (the two entry points as
subprocesses; finished runs are reused, so an interrupted comparison
resumes, across sessions too). `--report_only` writes the page from the
runs finished so far (unfinished ones marked) and trains nothing.
"""

import argparse
import json
import os
import statistics
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import synthetic_runs  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import eval as eval_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top,wrong-import-position

# How the table names the recipes of `configs/synthetic.py`.
RECIPE_NAMES = {
    'scratch': "CFBI's here (AdamW 0.002)",
    'sgd': "CFBI's SGD, frozen BN",
    'paper': "the paper's, lr x5",
}

# The shared starting point (`bench/pretrain_backbone.py`).
PRETRAINED = 'runs/pretrained_deeplab'

# model -> (paper, what it matches, what the papers report on DAVIS).
PAPERS = {
    'cfbi': (
        'CFBI (ECCV 2020)',
        'foreground and background, to the first frame (global) and '
        'the previous frame (multi-window local); instance attention; '
        'collaborative ensembler',
        'DAVIS 2017 val J&F 81.9; DAVIS 2016 val J&F 89.4 (86.1 '
        'without YouTube-VOS training)',
    ),
    'cfbip': (
        'CFBI+ (TPAMI 2021)',
        'as CFBI, at strides 4, 8 and 16 with atrous matching',
        'DAVIS 2017 val J&F 82.9 (official README, DAVIS model)',
    ),
    'feelvos': (
        'FEELVOS (CVPR 2019)',
        'each object (background included) to the first frame '
        '(global) and the previous frame (local, k = 15); dynamic '
        'segmentation head',
        'DAVIS 2017 val J&F 71.5; DAVIS 2016 val J&F 81.7 (J 81.1)',
    ),
    'videomatch': (
        'VideoMatch (ECCV 2018)',
        'foreground and background sets of the first frame, '
        'top-K cosine soft matching; outlier removal; online '
        'update',
        'DAVIS 2016 val J 81.0 (J&F 80.9, CFBI Table 2)',
    ),
}


def parameters(model: str) -> int:
  """Trainable parameters of the model's tiny variant."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  config = synthetic_config.get_config(f'model={model}')
  module = models.build(config.model)
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def fixes_num_frames(model: str) -> bool:
  """Whether the family's paper recipe sets N (`train.num_frames`)."""
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  config = synthetic_config.get_config(f'model={model}')
  return 'train.num_frames' in models.family_of(config.model).recipe


def recipe_of(args, model: str) -> str:
  """The `configs/synthetic.py` recipe a model trains by: its own default
  (`--recipe own`: `scratch` for CFBI and CFBI+, `paper` for FEELVOS and
  VideoMatch), or `--recipe` for all (`cfbi` is `scratch`)."""
  arg = f'model={model}'
  if args.recipe != 'own':
    arg += f',recipe={args.recipe}'
  return synthetic_config.get_config(arg).train.recipe


def run_one(args, model: str, seed: int, steps: int) -> Optional[dict]:
  """Trains and scores one (model, seed) at `steps`; returns its summary
  (with `--report_only`, None for a run not finished yet)."""
  recipe = recipe_of(args, model)
  paper_frames = recipe == 'paper' and fixes_num_frames(model)
  run_dir = os.path.join(
      args.workdir, f'{recipe}-{steps}', f'{model}-seed{seed}'
  )
  summary_path = os.path.join(
      run_dir, f'eval-scale{args.test_scale:g}', 'summary.json'
  )
  if args.report_only and not os.path.exists(summary_path):
    return None
  return synthetic_runs.train_and_score(
      synthetic_runs.Run(
          run_dir=run_dir,
          config_arg=f'model={model},steps={steps},recipe={recipe}',
          seed=seed,
          backbone_from=args.backbone_from,
          train_data=args.train_data,
          test_data=args.test_data,
          crop=args.crop,
          num_frames=0 if paper_frames else args.num_frames,
          batch_size=args.batch_size,
          test_seed=args.test_seed,
          test_videos=args.test_videos,
          test_scale=args.test_scale,
      )
  )


def spread(values) -> float:
  """(max - min) / 2."""
  return (max(values) - min(values)) / 2


def find_budget(args) -> tuple:
  """`(steps, search)`: the first of `args.budgets` at which CFBI's seeds
  agree within `args.agree` (else the last), and `[(steps, [J&F per
  seed], spread)]` for every budget tried."""
  search = []
  for steps in args.budgets:
    jf = []
    for seed in args.seeds:
      summary = run_one(args, 'cfbi', seed, steps)
      if summary is None:  # --report_only: the search stops here.
        search.append((steps, jf, spread(jf) if jf else 0.0))
        return None, search
      jf.append(100 * summary['davis']['J&F-Mean'])
      print(f'budget {steps}: cfbi seed {seed}: J&F {jf[-1]:.1f}', flush=True)
      if spread(jf) > args.agree and steps != args.budgets[-1]:
        break  # More seeds cannot narrow it: the next budget.
    search.append((steps, jf, spread(jf)))
    if spread(jf) <= args.agree:
      return steps, search
  return args.budgets[-1], search


def report(args, results, search=()) -> str:
  """The Markdown page: one row per model, J&F in percent, and the budget
  search (`find_budget`)."""
  # Runs are per seed, None where not finished (`--report_only`).
  jf_of = {
      m: [None if r is None else 100 * r['davis']['J&F-Mean'] for r in runs]
      for m, runs in results.items()
  }
  base = jf_of.get('cfbi')
  lines = [
      '# CFBI, CFBI+, FEELVOS and VideoMatch on the synthetic benchmark',
      '',
      'Written by `'
      + ' '.join(['python bench/compare_models.py'] + sys.argv[1:])
      + '`.',
      '',
      f'Each run trains the tiny variant of a model (`tiny_<model>`, the '
      'same tiny DeepLab for all) for '
      + (f'{args.steps} steps' if args.steps else 'the budget below')
      + f' (batch '
      f'{args.batch_size}, crop {args.crop}, N = {args.num_frames} current '
      'frames unless the recipe fixes N) by '
      + (
          "each model's own default recipe"
          if args.recipe == 'own'
          else f'the `{args.recipe}` recipe'
      )
      + ' of `configs/synthetic.py` (the recipe column; module docstring '
      'of `bench/compare_models.py`) on the synthetic training set (seed '
      '1, 200 videos), and is scored with the DAVIS J&F on '
      f'{args.test_videos} held-out synthetic videos (seed '
      f'{args.test_seed}) at test scale {args.test_scale:g}. '
      + (
          f'The DeepLab feature extractor of every run starts from '
          f'`{args.backbone_from}`; everything after it starts from the '
          'seed. '
          if args.backbone_from
          else 'Everything starts from the ' 'seed. '
      )
      + f'Seeds {", ".join(map(str, args.seeds))} (initialisation and data '
      'order). Spread = (max - min) / 2; std = sample standard deviation.',
      '',
      'Delta = J&F minus that of CFBI trained with the same seed (the same '
      'data order and DeepLab), averaged over the seeds, then per seed. '
      'Frames per second: `evaluate.py` on this machine (2 CPU cores, no '
      'GPU), single scale, without the first video (which compiles); the '
      'best of the seeds, as other work on the machine only slows a run. '
      'Parameters: trainable, tiny variant.',
      '',
      '| model | recipe | J&F mean | spread | std | delta to CFBI | per seed '
      '| J mean | F mean | frames/s | parameters | runs (J&F) |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for model in args.models:
    recipe = RECIPE_NAMES[recipe_of(args, model)]
    runs = [r for r in results.get(model, []) if r is not None]
    jf = [v for v in jf_of.get(model, []) if v is not None]
    if not runs:
      lines.append(
          f'| {PAPERS[model][0]} | {recipe} | not run yet |' + ' |' * 9
      )
      continue
    j = [100 * r['davis']['J-Mean'] for r in runs]
    f = [100 * r['davis']['F-Mean'] for r in runs]
    diffs = [
        a - b
        for a, b in zip(jf_of[model], base or [])
        if a is not None and b is not None
    ]
    if model == 'cfbi' or not diffs:
      delta, per_seed = '', ''
    else:
      delta = f'{statistics.mean(diffs):+.1f}'
      per_seed = ', '.join(f'{d:+.1f}' for d in diffs)
    fps = max(synthetic_runs.steady_fps(r) for r in runs)
    several = len(jf) > 1
    lines.append(
        f'| {PAPERS[model][0]} | {recipe} | '
        f'{statistics.mean(jf):.1f} | '
        + (f'±{spread(jf):.1f}' if several else '')
        + ' | '
        + (f'{statistics.stdev(jf):.1f}' if several else '')
        + f' | {delta} | {per_seed} | {statistics.mean(j):.1f} | '
        f'{statistics.mean(f):.1f} | {fps:.1f} | {parameters(model):,} | '
        + ', '.join('–' if v is None else f'{v:.1f}' for v in jf_of[model])
        + ' |'
    )
  first = next(
      (r for runs in results.values() for r in runs if r is not None), {}
  )
  if 'copy_first_frame' in first:
    copy = first['copy_first_frame']
    lines.append(
        f'| copy the first mask (no model) | '
        f"| {100 * copy['J&F-Mean']:.1f} | | | | | "
        f"{100 * copy['J-Mean']:.1f} | {100 * copy['F-Mean']:.1f} "
        '| | | |'
    )
  pretrain = os.path.join(args.backbone_from or '', 'pretrain.json')
  if args.backbone_from and os.path.exists(pretrain):
    with open(pretrain) as f:
      record = json.load(f)
    iou = record['held_out_foreground_iou']
    lines += [
        '',
        f'The shared DeepLab (`{args.backbone_from}`, '
        '`bench/pretrain_backbone.py`): the tiny GroupNorm DeepLab trained '
        f"alone for {record['settings']['steps']} steps on per-frame "
        'foreground/background segmentation of synthetic training frames; '
        f"held-out foreground IoU {iou['before']:.3f} before, "
        f"{iou['after']:.3f} after ({record['held_out_frames']} frames of "
        'videos it did not train on).',
    ]
  if search:
    lines += [
        '',
        f'The budget: the first of {", ".join(map(str, args.budgets))} steps '
        f"at which CFBI's seeds agree within ±{args.agree:g} J&F "
        '(spread = (max - min) / 2), searched in that order; a budget '
        'whose first seeds already disagree by more is left without its '
        'other seeds:',
        '',
        '| steps | CFBI J&F per seed | spread |',
        '|---|---|---|',
    ]
    for steps, jf, width in search:
      lines.append(
          f'| {steps} | {", ".join(f"{v:.1f}" for v in jf) or "running"} | '
          + (f'±{width:.1f}' if len(jf) > 1 else '')
          + ' |'
      )
  minutes = (
      sum(
          r.get('train_seconds', 0.0)
          for runs in results.values()
          for r in runs
          if r is not None
      )
      / 60
  )
  lines += [
      '',
      f'Training time, all runs: {minutes:.0f} minutes.',
      '',
      '## The papers, for comparison',
      '',
      '| model | what it matches | the paper reports |',
      '|---|---|---|',
  ]
  for model in args.models:
    paper, matches, numbers = PAPERS[model]
    lines.append(f'| {paper} | {matches} | {numbers} |')
  lines += [
      '',
      'The papers order them CFBI+ > CFBI > FEELVOS on DAVIS 2017 (82.9, '
      '81.9, 71.5) and CFBI > FEELVOS > VideoMatch on DAVIS 2016 (89.4, '
      '81.7, 80.9). Their numbers come from ResNet-101 / Xception-65 '
      'DeepLabs pretrained on ImageNet and COCO and trained for thousands '
      'to 200k steps on DAVIS and YouTube-VOS; this table is a tiny model, '
      f'{args.steps} steps and synthetic videos, so only the ordering, not '
      'the scale, can be set beside theirs.',
      '',
  ]
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--models',
      nargs='+',
      default=list(common.train_models()),
      choices=list(common.train_models()),
  )
  parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
  parser.add_argument(
      '--steps',
      type=int,
      default=0,
      help='train every model this long (0: the budget search)',
  )
  parser.add_argument(
      '--budgets', nargs='+', type=int, default=[500, 1000, 2000]
  )
  parser.add_argument('--agree', type=float, default=3.0)
  parser.add_argument(
      '--recipe', default='own', choices=['own', 'paper', 'cfbi']
  )
  parser.add_argument('--crop', type=int, default=65)
  parser.add_argument('--num_frames', type=int, default=2)
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--test_seed', type=int, default=3)
  parser.add_argument('--test_videos', type=int, default=10)
  parser.add_argument(
      '--test_scale', type=float, default=eval_config.SYNTHETIC_SCALE
  )
  parser.add_argument('--workdir', default='runs/compare_models')
  parser.add_argument(
      '--backbone_from',
      default=PRETRAINED,
      help='model directory whose DeepLab initialises every run '
      f"('' = all from scratch; {PRETRAINED} is pretrained first if "
      'missing)',
  )
  parser.add_argument('--train_data', default='runs/synthetic_data')
  parser.add_argument('--test_data', default='runs/synthetic_ablation_test')
  parser.add_argument('--out', default='docs/models.md')
  parser.add_argument(
      '--report_only',
      action='store_true',
      help='write the report of the runs finished so far; train nothing',
  )
  args = parser.parse_args()
  if len(args.seeds) < 2:
    parser.error('give at least two seeds: the table reports a spread')
  if (
      args.backbone_from == PRETRAINED
      and not os.path.isdir(PRETRAINED)
      and not args.report_only
  ):
    synthetic_runs.run_command(
        [sys.executable, 'bench/pretrain_backbone.py', f'--out={PRETRAINED}'],
        PRETRAINED + '.log',
    )
  search = ()
  if not args.steps:
    args.steps, search = find_budget(args)
  if args.steps is None:  # --report_only before the search ended.
    synthetic_runs.write_report(args.out, report(args, {}, search))
    return
  results = {}
  for seed in args.seeds:  # Seed-major: early rows are paired.
    for model in args.models:
      summary = run_one(args, model, seed, args.steps)
      results.setdefault(model, []).append(summary)
      if summary is None:
        continue
      print(
          f'{model:11s} seed {seed}: J&F '
          f"{100 * summary['davis']['J&F-Mean']:.1f}, "
          f'{synthetic_runs.steady_fps(summary):.1f} frames/s',
          flush=True,
      )
  text = report(args, results, search)
  synthetic_runs.write_report(args.out, text)


if __name__ == '__main__':
  main()
