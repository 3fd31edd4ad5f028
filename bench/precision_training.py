"""Training in bfloat16 beside float32 on the synthetic benchmark.

    python bench/precision_training.py                  # 3 seeds, 300 steps
    python bench/precision_training.py --seeds 0 --steps 3700 --crop 97 \\
        --num_frames 3 --backbone_from '' --workdir runs/precision_full

For each precision and seed it trains the tiny CFBI with `train.py
--config=configs/synthetic.py` (recipe `scratch`), the only difference
between the two runs of a seed being `--config.model.compute_dtype`
(`float32`, or `bfloat16`: DeepLab and the collaborative ensembler compute
in bfloat16; a third run per seed, `float32_remat`, is the control: the
float32 step with remat, the same arithmetic rounded in another order),
scores each with `evaluate.py` on held-out synthetic videos
and writes a Markdown table (J&F per run, the paired difference from
float32 per seed, training time) to `--out`
(`docs/precision_training.md`).

What bfloat16 does not touch, by design (`models/cfbi.py`,
`layers.call_in_dtype`): the weights and the optimizer state (float32
master copies; the bfloat16 copies are casts inside the step), the
embedding head and all of matching (distances are differences of squared
norms, which bfloat16 would round away), GroupNorm and GCT statistics
(computed in float32 whatever the input), the logits' resize and the
bootstrapped cross-entropy (the logits are cast to float32 first).

The default budget is `bench/ablate.py`'s (300 steps at crop 65, N = 2,
the DeepLab from the bundled model, seed 3's held-out videos): three seeds
of both precisions train in about 20 minutes on 2 CPU cores. XLA:CPU
emulates much of bfloat16 arithmetic, so its training times say nothing
of a GPU's; the J&F columns are the point. Runs resume (`synthetic_runs`).
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import synthetic_runs  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import eval as eval_config  # pylint: disable=g-import-not-at-top,wrong-import-position

# Setting -> train.py flags. `float32_remat` is the control: the float32
# step with both remat parts, the same arithmetic in another order, so its
# paired difference from `float32` is what rounding alone moves J&F by.
SETTINGS = {
    'float32': ['--config.model.compute_dtype=float32'],
    'bfloat16': ['--config.model.compute_dtype=bfloat16'],
    'float32_remat': [
        '--config.model.compute_dtype=float32',
        '--config.train.remat=("backbone", "frame")',
    ],
}
PRECISIONS = tuple(SETTINGS)


def run_one(args, precision: str, seed: int) -> dict:
  """Trains and scores one (precision, seed); returns its summary."""
  return synthetic_runs.train_and_score(
      synthetic_runs.Run(
          run_dir=os.path.join(args.workdir, f'{precision}-seed{seed}'),
          config_arg=f'steps={args.steps}',
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
      ),
      SETTINGS[precision],
  )


def table(args, results) -> str:
  """The Markdown report: one row per precision, J&F in percent."""
  init = (
      f'the DeepLab from `{args.backbone_from}`, the rest from the seed'
      if args.backbone_from
      else 'everything from the seed'
  )
  lines = [
      '# Training in bfloat16 beside float32 (synthetic benchmark)',
      '',
      'Written by `'
      + ' '.join(['python bench/precision_training.py'] + sys.argv[1:])
      + '`.',
      '',
      f'Each run trains `tiny_cfbi` for {args.steps} steps (batch '
      f'{args.batch_size}, N = {args.num_frames}, crop {args.crop}, recipe '
      f'`scratch` of `configs/synthetic.py`, {init}) on the synthetic '
      'training set (seed 1) and is scored with the DAVIS J&F on '
      f'{args.test_videos} held-out synthetic videos (seed {args.test_seed}) '
      f'at test scale {args.test_scale:g}. The two runs of a seed share the '
      'initialisation and the data order; only '
      '`model.compute_dtype` differs. bfloat16 covers DeepLab and the '
      'collaborative ensembler; weights, optimizer state, the embedding, '
      'matching, normalisation statistics, the loss and every gradient '
      'summed over pixels stay float32. `float32_remat` is the control: '
      'float32 with both remat parts, the same arithmetic in another '
      'order; its paired delta is what rounding alone moves J&F by at this '
      'budget.',
      '',
      '| precision | J&F mean | J mean | F mean | delta (paired) | '
      'per seed (J&F) | training minutes |',
      '|---|---|---|---|---|---|---|',
  ]
  jf = {
      p: [100 * r['davis']['J&F-Mean'] for r in runs]
      for p, runs in results.items()
  }
  for p in results:
    runs = results[p]
    j = statistics.mean(100 * r['davis']['J-Mean'] for r in runs)
    f = statistics.mean(100 * r['davis']['F-Mean'] for r in runs)
    if p == 'float32' or 'float32' not in results:
      delta = ''
    else:
      diffs = [a - b for a, b in zip(jf[p], jf['float32'])]
      delta = (
          f'{statistics.mean(diffs):+.1f} ('
          + ', '.join(f'{d:+.1f}' for d in diffs)
          + ')'
      )
    minutes = sum(r.get('train_seconds', 0.0) for r in runs) / 60
    lines.append(
        f'| {p} | {statistics.mean(jf[p]):.1f} | {j:.1f} | '
        f'{f:.1f} | {delta} | '
        + ', '.join(f'{v:.1f}' for v in jf[p])
        + f' | {minutes:.1f} |'
    )
  lines.append('')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
  parser.add_argument(
      '--settings', nargs='+', default=list(PRECISIONS), choices=PRECISIONS
  )
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--crop', type=int, default=65)
  parser.add_argument('--num_frames', type=int, default=2)
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--test_seed', type=int, default=3)
  parser.add_argument('--test_videos', type=int, default=10)
  parser.add_argument(
      '--test_scale', type=float, default=eval_config.get_config().tta.scales[0]
  )
  parser.add_argument('--workdir', default='runs/precision')
  parser.add_argument(
      '--backbone_from',
      default='models/tiny_cfbi_synthetic',
      help="DeepLab source ('' = all from the seed)",
  )
  parser.add_argument('--train_data', default='runs/synthetic_data')
  parser.add_argument('--test_data', default='runs/synthetic_ablation_test')
  parser.add_argument('--out', default='docs/precision_training.md')
  args = parser.parse_args()
  results = {p: [] for p in args.settings}
  for seed in args.seeds:
    for p in args.settings:
      summary = run_one(args, p, seed)
      results[p].append(summary)
      print(
          f"{p:9s} seed {seed}: J&F {100 * summary['davis']['J&F-Mean']:.1f}"
          f" ({summary.get('train_seconds', 0.0) / 60:.1f} min)",
          flush=True,
      )
  report = table(args, results)
  synthetic_runs.write_report(args.out, report)


if __name__ == '__main__':
  main()
