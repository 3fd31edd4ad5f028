"""Training step time, examples per second and peak memory.

    python bench/bench_train.py [--variants tiny_cfbi cfbi_resnet101 ...]
        [--crop 465] [--batch 1] [--num-frames 3] [--accumulate 1]
        [--data DAVIS_ROOT]
    python bench/bench_train.py --compiled-memory [--form cuda] ...
    python bench/bench_train.py --pipeline-only --data DAVIS_ROOT

For every variant, a child process builds the model (random weights; the
time does not depend on them) and the training optimizer of
`configs/common.py`, compiles the whole jitted train step (one batched
backbone call for all frames, the `lax.scan` over the N current frames
feeding its own predictions, bootstrapped CE, backward, SGD update) for a
batch of `--batch` clips of N + 2 frames at `--crop`, then reports the best
of `--repeats` timed steps after a warm-up. Peak memory is the device's
`peak_bytes_in_use` where the backend reports it (GPU/TPU), else the child's
peak resident set size (CPU). The table prints each variant beside the
first one as a ratio.

`--data` also times the tf.data input pipeline (clips per second on this
host's CPUs) on a DAVIS-layout folder, at the same crop and clip length,
to compare with the step rate: the pipeline must not be the bottleneck.
`--pipeline-only` times just the pipeline, with one clip loader and with
one per core, and prints the cores that feed `--step-clips-per-s`.

`--compiled-memory` compiles the train step for abstract shapes (nothing
of the model's size is allocated) per `--batches`, `--remats` and
`--precisions`, and prints its buffer assignment, one `compiled memory
MB:` line per setting; `--form cuda` compiles the program a GPU would run
(`backend.tracing_for`) for this backend.
"""

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def disc_batch(batch: int, frames: int, crop: int, slots: int) -> dict:
  """A train-step batch: random frames, two drifting discs as objects 1-2.

  `frames` is T (reference, previous and current frames), `slots` the
  object slots with the background (max_objects + 1); the step's cost does
  not depend on the pixel values.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, frames, crop, crop, 3), dtype=np.uint8)
  yy, xx = np.mgrid[:crop, :crop]
  labels = np.zeros((batch, frames, crop, crop), np.uint8)
  for f in range(frames):
    for k in range(2):
      cy, cx = crop * (k + 1) / 3 + 3 * f, crop / 2
      disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (crop / 6) ** 2
      labels[:, f, disc] = k + 1
  return {
      'frames': jnp.asarray(images),
      'labels': jnp.asarray(labels),
      'object_valid': jnp.asarray(np.arange(slots)[None].repeat(batch, 0) <= 2),
  }


def _child(
    variant: str,
    crop: int,
    batch: int,
    num_frames: int,
    accumulate: int,
    repeats: int,
) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import losses  # pylint: disable=g-import-not-at-top
  from cfbi_jax import peak_memory  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top
  from cfbi_jax import optimizer  # pylint: disable=g-import-not-at-top
  from cfbi_jax import train_step as ts  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top

  config = common.training_model_config(variant)
  module = models.build(config, rngs=nnx.Rngs(0))
  num_params = sum(
      x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param))
  )
  tx = optimizer.make_optimizer(
      common.optim_config(total_steps=100_000), nnx.state(module, nnx.Param)
  )
  graphdef, state = ts.create_train_state(module, tx, seed=0)
  step = jax.jit(
      ts.make_train_step(graphdef, tx, accumulate_steps=accumulate),
      donate_argnums=(0,),
  )
  t = num_frames + 2
  batch_arrays = disc_batch(batch, t, crop, slots=6)
  schedule = {
      'num_hard': jnp.int32(losses.num_hard_pixels(60_000, crop * crop)),
      'use_own_predictions': jnp.bool_(True),
  }
  t0 = time.perf_counter()
  state, metrics = step(state, batch_arrays, schedule)
  jax.block_until_ready(metrics['loss'])
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, metrics = step(state, batch_arrays, schedule)
    jax.block_until_ready(metrics['loss'])
    times.append(time.perf_counter() - t0)
  peak_mb, peak_kind = peak_memory.peak_memory()
  step_s = float(np.min(times))
  return dict(
      variant=variant,
      params=int(num_params),
      step_s=step_s,
      examples_per_s=batch / step_s,
      frames_per_s=batch * t / step_s,
      compile_s=compile_s,
      peak_mb=peak_mb,
      peak_kind=peak_kind,
      loss=float(metrics['loss']),
      device=str(jax.devices()[0].device_kind),
  )


def compiled_memory(
    variant: str,
    crop: int,
    batch: int,
    num_frames: int,
    remat=(),
    precision: str = 'float32',
    form: str = '',
) -> dict:
  """Compiles the train step for abstract inputs; returns its memory.

  The same function `train.py` runs (`train_step.make_train_step`, state
  donated), for `batch` clips of `num_frames` + 2 frames at `crop`, with
  `remat` parts recomputed and the model's `compute_dtype` = `precision`.
  Parameters, optimizer state and batch are `jax.ShapeDtypeStruct`s
  (`nnx.eval_shape`), so nothing of the model's size is allocated; the
  figures are this backend's buffer assignment (`memory_analysis()`).
  `form='cuda'` traces the program a GPU runs (`backend.tracing_for`) and
  compiles that for this backend.

  Returns:
    `{'temp', 'args', 'total'}` in MiB (total: temporaries + arguments +
    outputs not aliased to arguments) and `compile_s`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import optimizer  # pylint: disable=g-import-not-at-top
  from cfbi_jax import train_step as ts  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top

  from cfbi_jax import data_config  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  config = common.training_model_config(variant)
  config.compute_dtype = precision
  slots = data_config.default_data_config().max_objects + 1
  module = nnx.eval_shape(lambda: models.build(config, rngs=nnx.Rngs(0)))
  tx = optimizer.make_optimizer(
      common.optim_config(total_steps=100_000), nnx.state(module, nnx.Param)
  )
  graphdef = nnx.split(module)[0]
  abstract_state = jax.eval_shape(
      lambda: ts.create_train_state(
          models.build(config, rngs=nnx.Rngs(0)), tx, seed=0
      )[1]
  )
  t = num_frames + 2
  shape = lambda shp, dtype: jax.ShapeDtypeStruct(shp, dtype)
  batch_avals = {
      'frames': shape((batch, t, crop, crop, 3), jnp.uint8),
      'labels': shape((batch, t, crop, crop), jnp.uint8),
      'object_valid': shape((batch, slots), jnp.bool_),
  }
  schedule = {
      'num_hard': shape((), jnp.int32),
      'use_own_predictions': shape((), jnp.bool_),
  }
  step = jax.jit(
      ts.make_train_step(graphdef, tx, remat=tuple(remat)), donate_argnums=(0,)
  )
  from cfbi_jax import backend  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  with backend.tracing_for(form) if form else contextlib.nullcontext():
    traced = step.trace(abstract_state, batch_avals, schedule)
  compiled = traced.lower().compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  mib = lambda v: v / 2**20
  temp = mib(mem.temp_size_in_bytes)
  args = mib(mem.argument_size_in_bytes)
  out = mib(mem.output_size_in_bytes - mem.alias_size_in_bytes)
  return {
      'temp': temp,
      'args': args,
      'total': temp + args + out,
      'compile_s': compile_s,
  }


def compiled_memory_line(
    variant, crop, batch, frames, remat, precision, row
) -> str:
  """The one-line form (`--compiled-memory`)."""
  return (
      f'compiled memory MB: variant={variant} crop={crop} batch={batch} '
      f"frames={frames} remat={'+'.join(remat) or 'none'} "
      f"precision={precision} temp={row['temp']:.0f} "
      f"args={row['args']:.0f} total={row['total']:.0f} "
      f"compile_s={row['compile_s']:.1f}"
  )


def _pipeline(
    root: str,
    split: str,
    crop: int,
    batch: int,
    num_frames: int,
    batches: int,
    parallel: int = -1,
) -> float:
  """Clips per second of the tf.data pipeline on a DAVIS-layout folder,
  loading `parallel` clips at once (-1: one per CPU core)."""
  from cfbi_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  config = input_pipeline.default_data_config()
  config.source, config.root, config.crop_size = 'davis', root, crop
  config.split = split
  config.num_parallel_calls = parallel
  ds = input_pipeline.make_train_dataset(
      config, batch_size=batch, num_frames=num_frames, seed=0
  )
  it = iter(ds.as_numpy_iterator())
  next(it)  # Warm-up (file listing, first decode).
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch / (time.perf_counter() - t0)
  del it
  return rate


def pipeline_lines(
    root: str,
    split: str,
    crop: int,
    batch: int,
    num_frames: int,
    batches: int,
    step_clips_per_s: float,
) -> list:
  """`--pipeline-only`: the pipeline's rate with one clip loader and with
  one per core, and the cores that keep a step of `step_clips_per_s` fed."""
  cores = os.cpu_count()
  one = _pipeline(root, split, crop, batch, num_frames, batches, 1)
  every = _pipeline(root, split, crop, batch, num_frames, batches, -1)
  per_core = min(one, every / cores)
  return [
      f'input pipeline: crop={crop} frames={num_frames + 2} batch={batch} '
      f'loaders=1 clips/s={one:.2f}',
      f'input pipeline: crop={crop} frames={num_frames + 2} batch={batch} '
      f'loaders={cores} (one per core) clips/s={every:.2f}',
      f'input pipeline: {per_core:.2f} clips/s per core; a step consuming '
      f'{step_clips_per_s:.2f} clips/s needs '
      f'{math.ceil(step_clips_per_s / per_core)} cores',
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--variants',
      nargs='+',
      default=['tiny_cfbi', 'cfbi_mobilenetv2', 'cfbi_resnet101'],
  )
  parser.add_argument('--crop', type=int, default=465)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--num-frames', type=int, default=3)
  parser.add_argument('--accumulate', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument(
      '--data',
      default='',
      help='DAVIS-layout folder to time the input pipeline',
  )
  parser.add_argument(
      '--data-split',
      default='train',
      help='split file of --data (ImageSets/2017/<split>.txt)',
  )
  parser.add_argument(
      '--compiled-memory',
      action='store_true',
      help='compile only (abstract shapes) and print the '
      "train step's buffer assignment per --batches, "
      '--remats and --precisions',
  )
  parser.add_argument('--batches', nargs='+', type=int, default=[2, 4])
  parser.add_argument(
      '--remats', nargs='+', default=['none', 'backbone', 'backbone+frame']
  )
  parser.add_argument(
      '--precisions', nargs='+', default=['float32', 'bfloat16']
  )
  parser.add_argument(
      '--form',
      default='',
      help="with --compiled-memory: 'cuda' traces the GPU's "
      'form of the step (compiled for this backend)',
  )
  parser.add_argument(
      '--pipeline-only',
      action='store_true',
      help='time only the input pipeline on --data (one '
      'loader, then one per core) against --step-clips-per-s',
  )
  parser.add_argument(
      '--step-clips-per-s',
      type=float,
      default=2 / 0.35,
      help='the step rate the pipeline must feed (default: '
      '2 clips per 0.35 s, the last R101 step measured on '
      'an H200)',
  )
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.pipeline_only:
    if not args.data:
      parser.error('--pipeline-only needs --data')
    for line in pipeline_lines(
        args.data,
        args.data_split,
        args.crop,
        args.batch,
        args.num_frames,
        10,
        args.step_clips_per_s,
    ):
      print(line, flush=True)
    return
  if args.compiled_memory:
    for variant in args.variants:
      for batch in args.batches:
        for remat in args.remats:
          parts = () if remat == 'none' else tuple(remat.split('+'))
          for precision in args.precisions:
            row = compiled_memory(
                variant,
                args.crop,
                batch,
                args.num_frames,
                parts,
                precision,
                args.form,
            )
            print(
                compiled_memory_line(
                    variant,
                    args.crop,
                    batch,
                    args.num_frames + 2,
                    parts,
                    precision,
                    row,
                ),
                flush=True,
            )
    return
  if args.child:
    print(
        json.dumps(
            _child(
                args.child,
                args.crop,
                args.batch,
                args.num_frames,
                args.accumulate,
                args.repeats,
            )
        )
    )
    return
  rows = []
  env = dict(os.environ, PYTHONPATH=ROOT)
  for variant in args.variants:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        '--child',
        variant,
        '--crop',
        str(args.crop),
        '--batch',
        str(args.batch),
        '--num-frames',
        str(args.num_frames),
        '--accumulate',
        str(args.accumulate),
        '--repeats',
        str(args.repeats),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:  # Out of memory, typically: report and go on.
      print(out.stderr[-1500:], file=sys.stderr)
      print(
          f'FAILED {variant} (exit {out.returncode})',
          file=sys.stderr,
          flush=True,
      )
      continue
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f'done {variant}', file=sys.stderr, flush=True)
  if not rows:
    raise SystemExit('every variant failed')
  t = args.num_frames + 2
  print(
      f'\nOne training step: batch {args.batch} x {t} frames '
      f'({args.num_frames} current) at {args.crop}x{args.crop}, '
      f'accumulate {args.accumulate}, on {rows[0]["device"]} '
      f'({os.cpu_count()} CPUs); best of {args.repeats} steps.\n'
  )
  base = rows[0]
  print(f'  {"":26s}' + ''.join(f'{r["variant"]:>18s}' for r in rows))
  lines = [
      ('parameters (M)', 'params', lambda v: v / 1e6, '{:18.2f}'),
      ('step time (s)', 'step_s', float, '{:18.3f}'),
      ('  ratio to first', 'step_s', lambda v: v / base['step_s'], '{:17.1f}x'),
      ('examples (clips) / s', 'examples_per_s', float, '{:18.3f}'),
      ('frames / s', 'frames_per_s', float, '{:18.2f}'),
      (f'peak memory MB ({base["peak_kind"]})', 'peak_mb', float, '{:18.0f}'),
      (
          '  ratio to first',
          'peak_mb',
          lambda v: v / base['peak_mb'],
          '{:17.1f}x',
      ),
      ('compile + first step (s)', 'compile_s', float, '{:18.1f}'),
  ]
  for name, key, fn, fmt in lines:
    print(f'  {name:26s}' + ''.join(fmt.format(fn(r[key])) for r in rows))
  if args.data:
    rate = _pipeline(
        args.data, args.data_split, args.crop, args.batch, args.num_frames, 10
    )
    print(
        f'\n  input pipeline: {rate:.2f} clips/s on {os.cpu_count()} CPUs'
        f' ({args.data}); slowest step needs '
        f'{min(r["examples_per_s"] for r in rows):.3f}, fastest '
        f'{max(r["examples_per_s"] for r in rows):.3f} clips/s'
    )


if __name__ == '__main__':
  main()
