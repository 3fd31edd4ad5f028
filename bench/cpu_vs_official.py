r"""One propagated frame on this machine's CPU: the official code beside
cfbi-jax, and beside an older cfbi-jax commit, in one run.

    python bench/cpu_vs_official.py --official-python /path/to/torch/python \
        [--before 8773df5] [--models cfbi] [--objects 2] [--out runs/cpu]

The official row is `../shared/bench/official_cfbi_gpu.py --device cpu`
(the official per-frame loop body, random weights) run by a Python that has
torch; ours is `bench/gpu_suite.py`'s child (the compiled per-frame step on
a frame already on the device, and the evaluation loop), for this checkout
and, with `--before`, for that commit checked out in a temporary git
worktree. All of them: DAVIS 480p (481x849 input), K disk objects, float32,
one after the other on idle cores. The table gives each cfbi-jax row with
its ratio to the official seconds per frame, and the before / after ratio.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

_BENCH = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_BENCH)
sys.path.insert(0, _BENCH)

import gpu_suite  # pylint: disable=g-import-not-at-top,wrong-import-position


def ours(checkout: str, model: str, k: int, repeats: int) -> dict:
  """gpu_suite's child row for `checkout` (its own code)."""
  env = dict(os.environ, PYTHONPATH=checkout, JAX_PLATFORMS='cpu')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  cmd = [
      sys.executable,
      os.path.join(checkout, 'bench', 'gpu_suite.py'),
      '--out',
      tempfile.mkdtemp(),
      '--child',
      f'{model}|default|{k}|',
      '--size',
      '480',
      '854',
      '--frames',
      '4',
      '--repeats',
      str(repeats),
  ]
  done = subprocess.run(
      cmd, capture_output=True, text=True, env=env, cwd=checkout, check=False
  )
  if done.returncode:
    raise SystemExit(f'{checkout}: {done.stderr[-3000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--official-python',
      required=True,
      help='a Python with torch, numpy and Pillow',
  )
  parser.add_argument(
      '--official-script',
      default=os.path.join(
          _ROOT, '..', 'shared', 'bench', 'official_cfbi_gpu.py'
      ),
  )
  parser.add_argument(
      '--before', default='', help='a git commit of cfbi-jax to time as well'
  )
  parser.add_argument('--models', nargs='+', default=['cfbi'])
  parser.add_argument('--objects', nargs='+', type=int, default=[2])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default='runs/cpu_vs_official')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  official_path = os.path.join(args.out, 'official.jsonl')
  subprocess.run(
      [
          args.official_python,
          args.official_script,
          '--size',
          '481',
          '849',
          '--objects',
          *map(str, args.objects),
          '--models',
          *args.models,
          '--settings',
          'default',
          '--repeats',
          str(args.repeats),
          '--device',
          'cpu',
          '--out',
          official_path,
      ],
      check=True,
      stdout=subprocess.DEVNULL,
  )
  official = gpu_suite._official_rows(official_path)  # pylint: disable=protected-access
  checkouts = [('after (this checkout)', _ROOT)]
  worktree = None
  if args.before:
    worktree = tempfile.mkdtemp(prefix='cfbi_before_')
    subprocess.run(
        [
            'git',
            '-C',
            _ROOT,
            'worktree',
            'add',
            '--detach',
            worktree,
            args.before,
        ],
        check=True,
        capture_output=True,
    )
    checkouts.insert(0, (f'before ({args.before})', worktree))
  try:
    rows = {}
    for label, checkout in checkouts:
      rows[label] = [
          ours(checkout, gpu_suite.MODELS[m], k, args.repeats)
          for m in args.models
          for k in args.objects
      ]
  finally:
    if worktree:
      subprocess.run(
          ['git', '-C', _ROOT, 'worktree', 'remove', '--force', worktree],
          check=False,
      )
  text = [
      'One propagated frame on the CPU (480x854 frame, 481x849 input, '
      f'float32, random weights), {os.cpu_count()} cores\n'
  ]
  for label, found in rows.items():
    text += [f'cfbi-jax {label}', gpu_suite.table(found, official), '']
  if args.before:
    (before, b_rows), (_, a_rows) = rows.items()
    for b, a in zip(b_rows, a_rows):
      text.append(
          f"{a['arch']} K={a['objects']}: step {b['step_s']:.3f} s "
          f"-> {a['step_s']:.3f} s (after / before "
          f"{a['step_s'] / b['step_s']:.2f}x), {before}"
      )
  print('\n'.join(text))
  with open(os.path.join(args.out, 'table.md'), 'w') as f:
    f.write('\n'.join(text) + '\n')
  with open(os.path.join(args.out, 'ours.jsonl'), 'w') as f:
    for label, found in rows.items():
      for r in found:
        f.write(json.dumps({'checkout': label, **r}) + '\n')


if __name__ == '__main__':
  main()
