"""Frames per second of the evaluation loop at DAVIS 480p.

    python bench/bench_eval.py [--variants cfbi_resnet101 cfbip_resnet101]
        [--objects 1 3 5] [--tta single ms_flip] [--matching float32 bfloat16]
        [--frames 4]

For every combination, a child process builds the model (random weights;
speed does not depend on them), runs `inference.VideoPropagator` (the
official eval loop: preprocessing, every augmentation, averaging, argmax,
state update) on a synthetic 480x854 video with K blob objects, and reports
propagated frames per second after the first propagated frame (which
includes compilation). `ms_flip` is the official multi-scale + flip setting
(scales 1.0/1.15/1.3/1.5, long edge 800 x scale, 8 augmentations). Rows are
printed side by side with the float32 single-scale speed as the reference.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def _child(variant, num_objects, tta, matching, num_frames):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import inference  # pylint: disable=g-import-not-at-top
  from cfbi_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from cfbi_jax import presets  # pylint: disable=g-import-not-at-top

  config = presets.model_config(variant)
  config.matching_dtype = matching
  module = model_lib.from_config(config, rngs=nnx.Rngs(0))
  h, w = 480, 854
  rng = np.random.default_rng(0)
  base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(
      8, 1)[:h, :w]
  yy, xx = np.mgrid[:h, :w]
  frames, first = [], None
  for t in range(num_frames):
    frame = base.copy().astype(np.uint8)
    labels = np.zeros((h, w), np.uint8)
    for k in range(num_objects):
      cy = h * (k + 1) / (num_objects + 1)
      cx = w * (k + 1) / (num_objects + 1) + 3 * t
      inside = (yy - cy) ** 2 + (xx - cx) ** 2 < (h / 10) ** 2
      frame[inside] = (40 * k, 255 - 40 * k, 128)
      labels[inside] = k + 1
    frames.append(frame)
    first = labels if first is None else first
  scales, flip = ((1.0,), False) if tta == 'single' else (
      (1.0, 1.15, 1.3, 1.5), True)
  prop = inference.VideoPropagator(module, scales=scales, flip=flip)
  times = []
  start = time.perf_counter()
  for t, _, _ in prop.run(iter(frames), {0: first}, num_frames):
    now = time.perf_counter()
    times.append(now - start)
    start = now
  steady = times[2:]
  return {'variant': variant, 'objects': num_objects, 'tta': tta,
          'matching': matching, 'fps': len(steady) / sum(steady),
          'first_frame_s': times[1], 'compiled': len(prop.compiled)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', nargs='+',
                      default=['cfbi_resnet101', 'cfbip_resnet101'])
  parser.add_argument('--objects', nargs='+', type=int, default=[1, 3, 5])
  parser.add_argument('--tta', nargs='+', default=['single', 'ms_flip'])
  parser.add_argument('--matching', nargs='+',
                      default=['float32', 'bfloat16', 'float16'])
  parser.add_argument('--frames', type=int, default=4,
                      help='frames per video (>= 3; the first two are warm-up)')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    v, k, tta, m = args.child.split(':')
    print(json.dumps(_child(v, int(k), tta, m, args.frames)))
    return
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  rows = []
  for v in args.variants:
    for tta in args.tta:
      for m in args.matching:
        for k in args.objects:
          out = subprocess.run(
              [sys.executable, os.path.abspath(__file__), '--child',
               f'{v}:{k}:{tta}:{m}', '--frames', str(args.frames)],
              capture_output=True, text=True, env=env, check=False)
          if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f'{v} {tta} {m} K={k} failed')
          rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
          print(f'done {v} {tta} {m} K={k}', file=sys.stderr, flush=True)
  import jax  # pylint: disable=g-import-not-at-top
  print(f'\nDAVIS 480p (480x854 -> 481x849 single-scale), propagated frames '
        f'per second on {jax.devices()[0].device_kind} ({os.cpu_count()} '
        f'CPUs), {args.frames - 2} timed frames per video\n')
  print(f'{"variant":18s} {"tta":8s} {"matching":9s}' + ''.join(
      f'{"K=" + str(k):>9s}' for k in args.objects) + '   vs float32 single')
  for v in args.variants:
    ref = {r['objects']: r['fps'] for r in rows if r['variant'] == v
           and r['tta'] == 'single' and r['matching'] == 'float32'}
    for tta in args.tta:
      for m in args.matching:
        mine = [r for r in rows if r['variant'] == v and r['tta'] == tta
                and r['matching'] == m]
        ratios = [r['fps'] / ref[r['objects']] for r in mine
                  if r['objects'] in ref]
        print(f'{v:18s} {tta:8s} {m:9s}' + ''.join(
            f'{r["fps"]:9.3f}' for r in mine) + '   ' + ' '.join(
                f'{x:.2f}x' for x in ratios))


if __name__ == '__main__':
  main()
