"""Forward time and peak memory of each variant, one propagated frame.

    python bench/bench_model.py [--size 481 849] [--objects 1 2 3 5]
        [--variants cfbi_resnet101 cfbi_mobilenetv2 cfbip_resnet101]

For every variant and object count, a child process builds the model
(random weights; timing does not depend on them), compiles `embed` and
`segment` for one 481x849 frame (the official DAVIS input size) with one
reference frame, and reports the best of `--repeats` timed runs after a
warm-up (the best, because other load on a shared machine only adds time). A
separate jitted call of the global matching alone, on the same shapes and
settings, gives the global-matching share. Peak memory is the device's
`peak_bytes_in_use` where the backend reports it (GPU/TPU), else the child
process's peak resident set size (CPU).

The official code's CPU figures quoted in the task (2-core CPU, 481x849,
2 objects: 13 s per frame for CFBI-R101, 9.9 s for CFBI+) are printed beside
ours as a ratio; they were measured on the same kind of machine, not in this
run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

OFFICIAL_CPU_SECONDS = {('cfbi_resnet101', 2): 13.0,
                        ('cfbip_resnet101', 2): 9.9}


def _child(variant: str, num_objects: int, size, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import matching  # pylint: disable=g-import-not-at-top
  from cfbi_jax import memory  # pylint: disable=g-import-not-at-top
  from cfbi_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from cfbi_jax import presets  # pylint: disable=g-import-not-at-top
  from cfbi_jax import resize  # pylint: disable=g-import-not-at-top

  config = presets.model_config(variant)
  module = model_lib.from_config(config, rngs=nnx.Rngs(0))
  h, w = size
  rng = np.random.default_rng(0)
  frames = jnp.asarray(rng.normal(size=(2, h, w, 3)).astype(np.float32))
  # Labels: num_objects blobs on a background.
  yy, xx = np.mgrid[:h, :w]
  labels = np.zeros((h, w), np.int32)
  for k in range(num_objects):
    cy, cx = h * (k + 1) / (num_objects + 1), w * (k + 1) / (num_objects + 1)
    labels[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 8) ** 2] = k + 1
  labels = jnp.asarray(labels)
  obj_valid = jnp.ones((1, num_objects + 1), bool)

  @nnx.jit
  def embed(m, x):
    return m.embed(x)[0]

  @nnx.jit
  def segment(m, ref, prev, cur):
    return m.segment([s[:, None] for s in ref.scales], labels[None, None],
                     jnp.ones((1, 1), bool), prev.scales, labels[None], cur,
                     obj_valid)[0]

  def frame(m):
    ref = embed(m, frames[:1])
    cur = embed(m, frames[1:])
    out = segment(m, ref, ref, cur)
    return ref, cur, out

  t0 = time.perf_counter()
  ref, cur, out = frame(module)
  jax.block_until_ready(out)
  compile_s = time.perf_counter() - t0

  def timed(fn, *args):
    best = []
    for _ in range(repeats):
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best.append(time.perf_counter() - t)
    return float(np.min(best))

  embed_s = timed(embed, module, frames[1:])
  segment_s = timed(segment, module, ref, ref, cur)

  # Global matching alone, same shapes and flags as inside `segment`.
  def global_all(ref_scales, cur_scales):
    outs = []
    for s, (r, c) in enumerate(zip(ref_scales, cur_scales)):
      md = module.matching_dims[s]
      lab = resize.resize_labels_nearest(labels, c.shape[1:3])
      outs.append(matching.global_matching(
          c[0, ..., :md], r[0, None, ..., :md], lab[None], obj_valid[0],
          bg_bias=jnp.float32(0), fg_bias=jnp.float32(0),
          num_chunks=module.global_chunks[s], atrous=module.global_atrous[s],
          min_pixels=module.min_matching_pixels,
          matching_dtype=jnp.dtype(module.matching_dtype)))
    return outs

  global_jit = jax.jit(global_all)
  jax.block_until_ready(global_jit(ref.scales, cur.scales))
  global_s = timed(global_jit, ref.scales, cur.scales)
  peak_mb, peak_kind = memory.peak_memory()
  return dict(variant=variant, objects=num_objects, embed_s=embed_s,
              segment_s=segment_s, global_s=global_s, compile_s=compile_s,
              peak_mb=peak_mb, peak_kind=peak_kind,
              device=str(jax.devices()[0].device_kind))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', nargs='+', default=[
      'cfbi_resnet101', 'cfbi_mobilenetv2', 'cfbip_resnet101'])
  parser.add_argument('--objects', nargs='+', type=int, default=[1, 2, 3, 5])
  parser.add_argument('--size', nargs=2, type=int, default=[481, 849])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    variant, k = args.child.split(':')
    print(json.dumps(_child(variant, int(k), args.size, args.repeats)))
    return
  rows = []
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  for variant in args.variants:
    for k in args.objects:
      cmd = [sys.executable, os.path.abspath(__file__), '--child',
             f'{variant}:{k}', '--size', *map(str, args.size), '--repeats',
             str(args.repeats)]
      out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                           check=False)
      if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f'child {variant}:{k} failed')
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(f'done {variant} K={k}', file=sys.stderr, flush=True)
  h, w = args.size
  print(f'\nOne propagated frame at {h}x{w}, 1 reference, on '
        f'{rows[0]["device"]} ({os.cpu_count()} CPUs); best of '
        f'{args.repeats} runs; seconds unless stated.\n')
  for variant in args.variants:
    mine = [r for r in rows if r['variant'] == variant]
    print(f'{variant}')
    header = f'  {"":28s}' + ''.join(
        '{:>10s}'.format('K=%d' % r['objects']) for r in mine)
    print(header)
    lines = [
        ('backbone+embedding', [r['embed_s'] for r in mine], '{:10.3f}'),
        ('matching+ensembler', [r['segment_s'] for r in mine], '{:10.3f}'),
        ('total per frame', [r['embed_s'] + r['segment_s'] for r in mine],
         '{:10.3f}'),
        ('  of which global matching', [r['global_s'] for r in mine],
         '{:10.3f}'),
        ('  global matching share', [r['global_s'] / (r['embed_s'] +
                                                       r['segment_s'])
                                     for r in mine], '{:10.1%}'),
        (f'peak memory MB ({mine[0]["peak_kind"]})',
         [r['peak_mb'] for r in mine], '{:10.0f}'),
        ('compile + first run', [r['compile_s'] for r in mine], '{:10.1f}'),
    ]
    official = [OFFICIAL_CPU_SECONDS.get((variant, r['objects'])) for r in mine]
    if any(official):
      lines.append(('official CPU (quoted)', official, '{:10.1f}'))
      lines.append(('speed-up vs official',
                    [o / (r['embed_s'] + r['segment_s']) if o else None
                     for o, r in zip(official, mine)], '{:9.2f}x'))
    for name, values, fmt in lines:
      print(f'  {name:28s}' + ''.join(
          fmt.format(v) if v is not None else f'{"-":>10s}' for v in values))
    print()


if __name__ == '__main__':
  main()
