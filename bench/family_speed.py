"""Per-frame time of every family's tiny variant on one video, side by side.

    python bench/family_speed.py                       # 427x240, 3 objects
    python bench/family_speed.py --size 240 427 --frames 12 \\
        --models tiny_feelvos tiny_videomatch \\
        --override tiny_videomatch:top_k_block=0

Each model (random weights, seed 0: the time does not depend on them; the
VideoMatch update buffer has a fixed size) segments the same synthetic
video (`synthetic.render_video`, `--size`, `--objects` objects from the
first frame) through `Session`, single scale, as `evaluate.py` runs it.
The first two frames compile and are not timed; the rest are timed one
`push` (dispatch and labels fetched) at a time, and the median is
reported. `--override variant:field=value` changes an evaluation field
(e.g. VideoMatch's `top_k_block=0`, the plain top K) and adds a row.

Beside the times, the static cost of the same step lowered for CUDA
(`bench/step_cost.py`): GFLOP, sequential loop iterations, sorts and
`top_k` ops with the values they rank (trip-weighted). One table, ratios
to the first model's time.
"""

import argparse
import ast
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_cost as step_cost_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_override(text: str):
  """'variant:field=value' -> (variant, field, Python literal value)."""
  variant, _, assignment = text.partition(':')
  field, _, value = assignment.partition('=')
  if not variant or not field or not value:
    raise argparse.ArgumentTypeError(
        f'override {text!r}: expected variant:field=value'
    )
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    parsed = value
  return variant, field, parsed


def time_model(model_config, frames, labels, warmup: int = 2):
  """Median seconds per frame of `Session` on the video."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top
  from cfbi_jax.inference import session as session_lib  # pylint: disable=g-import-not-at-top

  module = models.build(model_config, rngs=nnx.Rngs(0))
  session = session_lib.Session(module, bgr=bool(model_config.bgr))
  session.push(frames[0], labels[0])
  times = []
  for i, frame in enumerate(frames[1:], start=1):
    start = time.perf_counter()
    out = session.push(frame)
    elapsed = time.perf_counter() - start
    assert out.shape == frame.shape[:2]
    if i > warmup:
      times.append(elapsed)
  del np
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--models',
      nargs='+',
      default=['tiny_feelvos', 'tiny_videomatch', 'tiny_cfbi', 'tiny_cfbip'],
  )
  parser.add_argument(
      '--size', nargs=2, type=int, default=[240, 427], help='frame H W'
  )
  parser.add_argument('--frames', type=int, default=10)
  parser.add_argument('--objects', type=int, default=3)
  parser.add_argument('--override', nargs='*', type=parse_override, default=[])
  args = parser.parse_args()
  # pylint: disable=g-import-not-at-top
  from unittest import mock

  from cfbi_jax import models
  from cfbi_jax import synthetic

  # pylint: enable=g-import-not-at-top
  spec = synthetic.VideoSpec(
      size=tuple(args.size),
      num_frames=args.frames,
      num_objects=(args.objects, args.objects),
      exit_prob=0.0,
  )
  frames, labels = synthetic.render_video(0, spec)
  rows = []
  configs = [(v, models.model_config(v), '') for v in args.models]
  for variant, field, value in args.override:
    config = models.model_config(variant)
    if field not in models.eval_fields(config):
      parser.error(
          f'{field} is not an evaluation field of {variant}: '
          f'{models.eval_fields(config)}'
      )
    config[field] = value
    configs.append((variant, config, f'{field}={value}'))
  for variant, config, note in configs:
    seconds = time_model(config, frames, labels)
    with mock.patch.object(
        models,
        'model_config',
        lambda v, c=config: c.copy_and_resolve_references(),
    ):
      cost = step_cost_lib.step_cost(
          variant, tuple(args.size), args.objects, memory=False
      )
    rows.append((variant, note, seconds, cost))
    print(
        f'{variant} {note}: {seconds * 1e3:.0f} ms/frame, '
        f"{cost['gflop_total']:.2f} GFLOP, {cost['sorts']} sorts, "
        f"{cost.get('top_k', 0)} top_k over {cost.get('top_k_values', 0):,} "
        'values',
        flush=True,
    )
  base = rows[0][2]
  print()
  print(
      f'{args.size[1]}x{args.size[0]} frames, {args.objects} objects, '
      'Session single scale, random weights; median of '
      f'{args.frames - 3} timed frames on this machine.'
  )
  print()
  print(
      '| model | setting | ms/frame | frames/s | vs first | GFLOP | loop iters '
      '| sorts | top_k ops | values ranked by top_k |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|')
  for variant, note, seconds, cost in rows:
    print(
        f'| {variant} | {note or "default"} | {seconds * 1e3:.0f} | '
        f'{1 / seconds:.2f} | {seconds / base:.2f}x | '
        f"{cost['gflop_total']:.2f} | {cost['loop_iters']} | "
        f"{cost['sorts']} | {cost.get('top_k', 0)} | "
        f"{cost.get('top_k_values', 0):,} |"
    )


if __name__ == '__main__':
  main()
