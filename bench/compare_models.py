"""CFBI, CFBI+, FEELVOS and VideoMatch, trained and scored the same way on
the synthetic benchmark.

    python bench/compare_models.py                 # 4 models x 3 seeds
    python bench/compare_models.py --models cfbi feelvos --seeds 0 1

For every model and seed it trains the model's tiny variant with
`train.py --config=configs/synthetic.py:model=<model>` on the synthetic
training set (seed 1), with the same budget (`--steps` at `--crop`, batch
`--batch_size`, N = `--num_frames`), the same data order (the seed) and
the same initialisation of the DeepLab feature extractor (that of
`--backbone_from`, the bundled model, as the papers start from a trained
DeepLabV3+; everything after it starts from the seed). Each model keeps
its paper's training rule: CFBI and CFBI+ switch to their own previous
predictions half-way (sequential training), FEELVOS is fed the
ground-truth previous mask, VideoMatch matches each frame to the reference
alone. It then scores every model with `evaluate.py` on the same
held-out videos (seed `--test_seed`) at one test scale and writes
`--out` (`docs/models.md`): J&F mean, spread and the paired difference to
CFBI (same seed), frames per second on this machine and parameters.

Runs go through `bench/synthetic_runs.py` (the two entry points as
subprocesses; finished runs are reused, so an interrupted comparison
resumes). The default budget is about an hour on 2 CPU cores.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import synthetic_runs  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import eval as eval_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top,wrong-import-position

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


def run_one(args, model: str, seed: int) -> dict:
  """Trains and scores one (model, seed); returns its summary."""
  return synthetic_runs.train_and_score(
      synthetic_runs.Run(
          run_dir=os.path.join(args.workdir, f'{model}-seed{seed}'),
          config_arg=f'model={model},steps={args.steps}',
          seed=seed,
          backbone_from=args.backbone_from,
          train_data=args.train_data,
          test_data=args.test_data,
          crop=args.crop,
          num_frames=args.num_frames,
          batch_size=args.batch_size,
          test_seed=args.test_seed,
          test_videos=args.test_videos,
          test_scale=args.test_scale,
      )
  )


def report(args, results) -> str:
  """The Markdown page: one row per model, J&F in percent."""
  jf_of = {
      m: [100 * r['davis']['J&F-Mean'] for r in runs]
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
      f'same tiny DeepLab for all) for {args.steps} steps (batch '
      f'{args.batch_size}, N = {args.num_frames} frames, crop {args.crop}, '
      'the `scratch` recipe of `configs/synthetic.py`) on the synthetic '
      'training set (seed 1, 200 videos), and is scored with the DAVIS J&F '
      f'on {args.test_videos} held-out synthetic videos (seed '
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
      '| model | J&F mean | spread | std | delta to CFBI | per seed | '
      'J mean | F mean | frames/s | parameters | runs (J&F) |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for model in args.models:
    runs, jf = results[model], jf_of[model]
    j = [100 * r['davis']['J-Mean'] for r in runs]
    f = [100 * r['davis']['F-Mean'] for r in runs]
    if base is None or model == 'cfbi':
      delta, per_seed = '', ''
    else:
      diffs = [a - b for a, b in zip(jf, base)]
      delta = f'{statistics.mean(diffs):+.1f}'
      per_seed = ', '.join(f'{d:+.1f}' for d in diffs)
    fps = max(synthetic_runs.steady_fps(r) for r in runs)
    lines.append(
        f'| {PAPERS[model][0]} | {statistics.mean(jf):.1f} | '
        f'±{(max(jf) - min(jf)) / 2:.1f} | {statistics.stdev(jf):.1f} | '
        f'{delta} | {per_seed} | {statistics.mean(j):.1f} | '
        f'{statistics.mean(f):.1f} | {fps:.1f} | {parameters(model):,} | '
        + ', '.join(f'{v:.1f}' for v in jf)
        + ' |'
    )
  first = results[args.models[0]][0]
  if 'copy_first_frame' in first:
    copy = first['copy_first_frame']
    lines.append(
        f'| copy the first mask (no model) | '
        f"{100 * copy['J&F-Mean']:.1f} | | | | | "
        f"{100 * copy['J-Mean']:.1f} | {100 * copy['F-Mean']:.1f} "
        '| | | |'
    )
  minutes = (
      sum(
          r.get('train_seconds', 0.0) for runs in results.values() for r in runs
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
      'a few hundred steps and synthetic videos, so only the ordering, not '
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
  parser.add_argument('--steps', type=int, default=400)
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
      default='models/tiny_cfbi_synthetic',
      help='model directory whose DeepLab initialises every '
      "run ('' = all from scratch)",
  )
  parser.add_argument('--train_data', default='runs/synthetic_data')
  parser.add_argument('--test_data', default='runs/synthetic_ablation_test')
  parser.add_argument('--out', default='docs/models.md')
  args = parser.parse_args()
  if len(args.seeds) < 2:
    parser.error('give at least two seeds: the table reports a spread')
  results = {}
  for seed in args.seeds:  # Seed-major: early rows are paired.
    for model in args.models:
      summary = run_one(args, model, seed)
      results.setdefault(model, []).append(summary)
      print(
          f'{model:11s} seed {seed}: J&F '
          f"{100 * summary['davis']['J&F-Mean']:.1f}, "
          f'{synthetic_runs.steady_fps(summary):.1f} frames/s',
          flush=True,
      )
  text = report(args, results)
  synthetic_runs.write_report(args.out, text)


if __name__ == '__main__':
  main()
