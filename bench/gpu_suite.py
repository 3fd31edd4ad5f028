"""cfbi-jax beside the official code: per frame, end to end, memory, compile.

    bench/gpu_suite.sh            # the device run (writes $OUT), see there
    python bench/gpu_suite.py --smoke --out /tmp/suite   # same code, CPU, tiny
    python bench/gpu_suite.py --static --out /tmp/suite  # no run: step_cost.py

For every (model, setting, K) a child process builds the model (random
weights: speed does not depend on them) and measures, on a DAVIS-480p-like
video (480x854 frames, network input 481x849, K disk objects):

* `compile_s`: ahead-of-time compilation of the per-frame step
  (`inference.step.next_frame`: on-device resize, embedding, matching,
  ensembler, upsampling, softmax, argmax, state update);
* `step_s`: median seconds of one step called on a frame already on the
  device and waited for (what `official_cfbi_gpu.py` times);
* `loop_s`: seconds per frame of the whole evaluation loop
  (`videos.VideoPropagator` over uint8 host frames decoded from PNG on
  its reader thread, labels fetched, palette PNGs written behind), after
  its first two frames; its compilation comes from the persistent cache;
* `peak_mb`: the device's `peak_bytes_in_use` (the process's peak RSS on
  CPU) at the end, and the compiled step's `memory_analysis()` (arguments,
  outputs, temporaries); `compile_peak_mb` is the same peak read right
  after compiling (and the first frame), `steps_peak_mb` after the timed
  steps, so a peak reached while compiling (autotuning) shows as
  `compile_peak_mb == steps_peak_mb`, and one reached by the steps
  themselves as a larger `steps_peak_mb`;
* optionally a `jax.profiler` trace of three steps and its device-op
  summary (`--trace`).

Settings, each named after the official flags it mirrors:
`default` (the official DAVIS script: float32), `fast` (the official fast
flags: float16 matching, global atrous 2) and `fast_bf16` (`fast` plus
bfloat16 convolutions, `model.compute_dtype`). The table puts each beside
the official row of the same name (`fast_bf16` beside `fast`) with the
ratio ours / official; official rows come from `--official` (the JSON lines
of `official_cfbi_gpu.py`), or are left empty.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (_ROOT, os.path.dirname(os.path.abspath(__file__))):
  if _path not in sys.path:
    sys.path.insert(0, _path)

# The `jax.named_scope`s of the step, shared with the static report.
from step_cost import STAGES  # pylint: disable=g-import-not-at-top,wrong-import-position

MODELS = {'cfbi': 'cfbi_resnet101', 'cfbip': 'cfbip_resnet101'}
SMOKE_MODELS = {'cfbi': 'tiny_cfbi', 'cfbip': 'tiny_cfbip'}
SETTINGS = ('default', 'fast', 'fast_bf16')
OFFICIAL_SETTING = {'default': 'default', 'fast': 'fast', 'fast_bf16': 'fast'}


def setting_overrides(setting: str, arch: str) -> dict:
  """Model fields of a setting (the official flags it mirrors)."""
  if setting == 'default':
    return {}
  fields = {'matching_dtype': 'float16'}
  # --global_atrous_rate 2 acts on the /4 scale (CFBI+'s is 2 already).
  fields['global_atrous'] = (2,) if arch == 'cfbi' else (2, 1, 1)
  if arch == 'cfbip':
    fields['min_matching_pixels'] = 0  # The fast script drops it.
  if setting == 'fast_bf16':
    fields['compute_dtype'] = 'bfloat16'
  return fields


def _disks(h, w, k, t):
  """A label map with k disks drifting by t pixels, and a textured frame."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  yy, xx = np.mgrid[:h, :w]
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), np.uint8)
  frame = frame.repeat(8, 0).repeat(8, 1)[:h, :w].copy()
  labels = np.zeros((h, w), np.uint8)
  for i in range(k):
    cy = h * (i + 1) / (k + 1)
    cx = w * (i + 1) / (k + 1) + 2 * t
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 8) ** 2
    frame[inside] = (40 * i, 255 - 40 * i, 128)
    labels[inside] = i + 1
  return frame, labels


def op_stages(hlo_text: str) -> dict:
  """`{HLO op name: stage}` from a compiled module's text (`as_text()`).

  The stage is the innermost of `STAGES` in the op's `op_name` metadata
  (the JAX name stack), or 'other'.
  """
  import re  # pylint: disable=g-import-not-at-top

  stages = {}
  for m in re.finditer(
      r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?' r'metadata=\{op_name="([^"]*)"',
      hlo_text,
      re.M,
  ):
    parts = [p for p in re.split(r'[/()]', m.group(2)) if p in STAGES]
    stages[m.group(1)] = parts[-1] if parts else 'other'
  return stages


def trace_summary(trace_dir: str, stages: dict, top: int = 12):
  """Device time per stage and per XLA op in a `jax.profiler` trace.

  On GPU/TPU only the device processes' events count (the host's launch
  events carry the same op names); on CPU the XLA:CPU ops of the host.

  Returns:
    `(per stage [(stage, seconds)], top ops [(stage/op, seconds)])`.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top

  paths = sorted(
      glob.glob(
          os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True
      )
  )
  if not paths:
    return [], []
  with gzip.open(paths[-1], 'rt') as f:
    events = json.load(f)
  if isinstance(events, dict):
    events = events.get('traceEvents', [])
  process = {
      e.get('pid'): e.get('args', {}).get('name', '')
      for e in events
      if e.get('ph') == 'M' and e.get('name') == 'process_name'
  }
  ops = [
      e
      for e in events
      if e.get('ph') == 'X'
      and 'dur' in e
      and e.get('args', {}).get('hlo_module', '').endswith('next_frame')
      and 'hlo_op' in e.get('args', {})
      and not e.get('name', '').startswith('end:')
  ]
  on_device = [e for e in ops if '/device:' in process.get(e.get('pid'), '')]
  per_op, per_stage = {}, {}
  for e in on_device or ops:
    op = e['args']['hlo_op']
    stage = stages.get(op, 'other')
    per_op[f'{stage}/{op}'] = per_op.get(f'{stage}/{op}', 0.0) + e['dur'] / 1e6
    per_stage[stage] = per_stage.get(stage, 0.0) + e['dur'] / 1e6
  order = lambda d: sorted(d.items(), key=lambda kv: -kv[1])
  return order(per_stage), order(per_op)[:top]


def child(
    model: str,
    setting: str,
    k: int,
    size,
    frames: int,
    repeats: int,
    trace_dir: str,
) -> dict:
  """Measures one (model, setting, K); returns one row."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from cfbi_jax import host_threads  # pylint: disable=g-import-not-at-top
  from cfbi_jax import peak_memory  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top
  from cfbi_jax.inference import step as step_lib  # pylint: disable=g-import-not-at-top
  from cfbi_jax.inference import videos  # pylint: disable=g-import-not-at-top

  config = models.model_config(model)
  config.update(setting_overrides(setting, config.arch))
  module = models.build(config, rngs=nnx.Rngs(0))
  h, w = size
  video = [_disks(h, w, k, t) for t in range(frames)]
  prop = videos.VideoPropagator(module)
  spec = prop.session().spec((h, w), 1)
  first, labels0 = video[0]
  # Device arrays, as the loop's session passes them (one signature).
  states = prop.steps.first(
      prop.params,
      jax.device_put(first),
      jax.device_put(labels0.astype(np.int32)),
      spec=spec,
  )
  obj_valid = step_lib.object_valid(k)
  no_annotation = jax.numpy.zeros((h, w), np.uint8)
  frame = jax.device_put(video[1][0])
  args = (
      prop.params,
      states,
      frame,
      no_annotation,
      np.asarray(False),
      obj_valid,
  )
  t0 = time.perf_counter()
  compiled = prop.steps.next.lower(*args, spec=spec).compile()
  compile_s = time.perf_counter() - t0
  # Read now and again after the steps: the device's peak so far is the
  # compile-time peak (autotuning buffers, the first frame), which the
  # run-time peak must be told apart from.
  compile_peak_mb, _ = peak_memory.peak_memory()
  mem = compiled.memory_analysis()
  compiled_mb = {}
  for field in (
      'argument_size_in_bytes',
      'output_size_in_bytes',
      'alias_size_in_bytes',
      'temp_size_in_bytes',
      'generated_code_size_in_bytes',
  ):
    compiled_mb[field.replace('_size_in_bytes', '')] = (
        getattr(mem, field, 0) / 2**20 if mem is not None else None
    )

  def step(states):
    return compiled(
        prop.params, states, frame, no_annotation, np.asarray(False), obj_valid
    )

  states, outs = step(states)  # Warm-up.
  jax.block_until_ready(outs)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    states, outs = step(states)
    jax.block_until_ready(outs)
    times.append(time.perf_counter() - t)
  steps_peak_mb, _ = peak_memory.peak_memory()
  in_use = (jax.devices()[0].memory_stats() or {}).get('bytes_in_use')
  trace_stages, trace_ops = [], []
  if trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(3):
        states, outs = step(states)
      jax.block_until_ready(outs)
    trace_stages, trace_ops = trace_summary(
        trace_dir, op_stages(compiled.as_text())
    )
  del states, outs

  # The whole loop: PNG frames decoded on the reader thread, outputs written
  # behind, as `evaluate.py` runs it.
  with tempfile.TemporaryDirectory() as tmp:
    for t, (f, _) in enumerate(video):
      Image.fromarray(f).save(os.path.join(tmp, f'{t:05d}.png'))

    def decoded():
      for t in range(frames):
        yield np.asarray(
            Image.open(os.path.join(tmp, f'{t:05d}.png')).convert('RGB')
        )

    def write_png(t, labels):
      # Palette PNG as evaluate.py writes (PIL directly:
      # `cfbi_jax.output_files` needs PyAV, which the GPU image lacks).
      image = Image.fromarray(labels, mode='P')
      image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * 759)
      image.save(os.path.join(tmp, f'out_{t:05d}.png'))

    stamps = []
    t_loop = time.perf_counter()
    with host_threads.BackgroundWriter() as writer:
      for t, labels, _ in prop.run(decoded(), {0: labels0}, frames):
        writer.submit(write_png, t, labels)
        stamps.append(time.perf_counter())
    loop_first_s = stamps[1] - t_loop
    steady = np.diff(stamps[2:])
  peak_mb, peak_kind = peak_memory.peak_memory()
  return {
      'model': model,
      'arch': config.arch,
      'setting': setting,
      'objects': k,
      'size': [h, w],
      'input_size': list(spec.input_sizes[0]),
      'compile_s': compile_s,
      'step_s': statistics.median(times),
      'step_min_s': min(times),
      'loop_s': float(np.median(steady)) if len(steady) else None,
      'loop_mean_s': float(np.mean(steady)) if len(steady) else None,
      'loop_first_frames_s': loop_first_s,
      'compilations': prop.compilations,
      'peak_mb': peak_mb,
      'compile_peak_mb': compile_peak_mb,
      'steps_peak_mb': steps_peak_mb,
      'steps_in_use_mb': in_use / 2**20 if in_use is not None else None,
      'peak_kind': peak_kind,
      'compiled_mb': compiled_mb,
      'trace_stages': trace_stages,
      'trace_ops': trace_ops,
      'device': str(jax.devices()[0].device_kind),
      'backend': jax.default_backend(),
  }


def memory_rows(model: str, setting: str, objects, sizes, refs) -> list:
  """Compiled memory of the per-frame step by K, frame size and references.

  Compiles only (`memory_analysis()` of `inference.step.next_frame`), nothing
  runs, so it works for the full models on any backend.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top
  from cfbi_jax.inference import step as step_lib  # pylint: disable=g-import-not-at-top
  from cfbi_jax.inference import videos  # pylint: disable=g-import-not-at-top

  config = models.model_config(model)
  config.update(setting_overrides(setting, config.arch))
  prop = videos.VideoPropagator(models.build(config, rngs=nnx.Rngs(0)))
  rows = []
  for h, w in sizes:
    for r in refs:
      spec = prop.session().spec((h, w), r)
      frame = jax.ShapeDtypeStruct((h, w, 3), np.uint8)
      states = jax.eval_shape(
          prop.steps.first,
          prop.params,
          frame,
          jax.ShapeDtypeStruct((h, w), np.int32),
          spec=spec,
      )
      for k in objects:
        num_slots = len(step_lib.object_valid(k))
        t0 = time.perf_counter()
        compiled = prop.steps.next.lower(
            prop.params,
            states,
            frame,
            jax.ShapeDtypeStruct((h, w), np.uint8),
            jax.ShapeDtypeStruct((), bool),
            jax.ShapeDtypeStruct((num_slots,), bool),
            spec=spec,
        ).compile()
        mem = compiled.memory_analysis()
        mb = lambda f: getattr(mem, f, 0) / 2**20
        rows.append(
            {
                'model': model,
                'setting': setting,
                'objects': k,
                'slots': num_slots,
                'size': [h, w],
                'refs': r,
                'input_size': list(spec.input_sizes[0]),
                'argument_mb': mb('argument_size_in_bytes'),
                'output_mb': mb('output_size_in_bytes'),
                'alias_mb': mb('alias_size_in_bytes'),
                'temp_mb': mb('temp_size_in_bytes'),
                'compile_s': time.perf_counter() - t0,
                'backend': jax.default_backend(),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  return rows


def memory_table(rows) -> str:
  lines = [
      '| model | setting | frame | input | refs | K (slots) | args MB | '
      'temp MB | out MB | aliased MB | compile s |',
      '|' + '---|' * 11,
  ]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['setting']} | {r['size'][0]}x{r['size'][1]} | "
        f"{r['input_size'][0]}x{r['input_size'][1]} | {r['refs']} | "
        f"{r['objects']} ({r['slots']}) | {r['argument_mb']:.0f} | "
        f"{r['temp_mb']:.0f} | {r['output_mb']:.0f} | {r['alias_mb']:.0f} | "
        f"{r['compile_s']:.1f} |"
    )
  return '\n'.join(lines)


def _official_rows(path: str):
  rows = {}
  if path and os.path.exists(path):
    with open(path) as f:
      for line in f:
        r = json.loads(line)
        if 'error' not in r:
          rows[(r['model'], r['setting'], r['objects'])] = r
  return rows


def table(rows, official) -> str:
  """The side-by-side markdown table."""
  lines = [
      '| model | K | setting | official s/frame | ours step s | ratio | '
      'ours loop s/frame | loop / step | official MB | ours peak MB | '
      'ratio | compiled temp MB | compiled args MB | compile s |',
      '|' + '---|' * 14,
  ]
  for r in rows:
    o = official.get(
        (r['arch'], OFFICIAL_SETTING[r['setting']], r['objects']), {}
    )
    osec, omb = o.get('sec_median'), o.get('max_mem_mb')
    fmt = lambda v, f: f.format(v) if v is not None else '-'
    cm = r['compiled_mb']
    lines.append(
        f"| {r['arch']} | {r['objects']} | {r['setting']} | "
        f"{fmt(osec, '{:.4f}')} | {r['step_s']:.4f} | "
        f"{fmt(r['step_s'] / osec if osec else None, '{:.2f}x')} | "
        f"{fmt(r['loop_s'], '{:.4f}')} | "
        f"{fmt(r['loop_s'] / r['step_s'] if r['loop_s'] else None, '{:.2f}x')}"
        f" | {fmt(omb, '{:.0f}')} | {r['peak_mb']:.0f} ({r['peak_kind']}) | "
        f"{fmt(r['peak_mb'] / omb if omb else None, '{:.2f}x')} | "
        f"{fmt(cm.get('temp'), '{:.0f}')} | {fmt(cm.get('argument'), '{:.0f}')}"
        f" | {r['compile_s']:.1f} |"
    )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--smoke',
      action='store_true',
      help='tiny models at a tiny size (CPU test of the suite)',
  )
  parser.add_argument('--models', nargs='+', default=['cfbi', 'cfbip'])
  parser.add_argument('--settings', nargs='+', default=list(SETTINGS))
  parser.add_argument('--objects', nargs='+', type=int, default=[2, 5])
  parser.add_argument(
      '--size',
      nargs=2,
      type=int,
      default=None,
      help='frame size (default 480 854; smoke 48 64)',
  )
  parser.add_argument(
      '--frames',
      type=int,
      default=None,
      help='loop frames (default 12; smoke 5)',
  )
  parser.add_argument('--repeats', type=int, default=None)
  parser.add_argument(
      '--trace', action='store_true', help='profile 3 steps of every K=2 child'
  )
  parser.add_argument(
      '--official', default='', help='JSON lines of official_cfbi_gpu.py'
  )
  parser.add_argument('--child-timeout', type=float, default=300)
  parser.add_argument('--out', required=True)
  parser.add_argument(
      '--memory',
      action='store_true',
      help='only the compiled memory of the step by K, frame '
      'size (--sizes) and references (--refs); no runs',
  )
  parser.add_argument('--sizes', nargs='+', default=['480x854', '720x1280'])
  parser.add_argument('--refs', nargs='+', type=int, default=[1, 4])
  parser.add_argument(
      '--static',
      action='store_true',
      help='only the static cost of the step in its GPU form '
      '(bench/step_cost.py: GFLOP, loop iterations, scatters, '
      'compiled memory) for --models and --objects; no runs',
  )
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  size = args.size or ([48, 64] if args.smoke else [480, 854])
  frames = args.frames or (5 if args.smoke else 12)
  repeats = args.repeats or (3 if args.smoke else 10)
  if args.child:
    model, setting, k, trace_dir = args.child.split('|')
    print(
        json.dumps(
            child(model, setting, int(k), size, frames, repeats, trace_dir)
        )
    )
    return
  os.makedirs(args.out, exist_ok=True)
  names = SMOKE_MODELS if args.smoke else MODELS
  if args.static:
    import step_cost  # pylint: disable=g-import-not-at-top

    lines = []
    with open(os.path.join(args.out, 'step_cost.jsonl'), 'w') as f:
      for arch in args.models:
        for k in args.objects:
          row = step_cost.step_cost(names[arch], tuple(size), k)
          f.write(json.dumps(row) + '\n')
          lines.append(step_cost.summary_line(row))
          print(lines[-1], flush=True)
    with open(os.path.join(args.out, 'step_cost.txt'), 'w') as f:
      f.write('\n'.join(lines) + '\n')
    return
  if args.memory:
    sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes]
    rows = []
    for arch in args.models:
      for setting in args.settings:
        rows += memory_rows(
            names[arch], setting, args.objects, sizes, args.refs
        )
    text = (
        'Compiled memory of the per-frame step (memory_analysis, '
        f'{rows[0]["backend"]})\n\n' + memory_table(rows)
    )
    print(text)
    with open(os.path.join(args.out, 'memory.md'), 'w') as f:
      f.write(text + '\n')
    return
  # Children share compiled programs through the persistent cache (the
  # loop's step is the one compiled ahead of time by the same child).
  env = dict(
      os.environ,
      PYTHONPATH=_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
      XLA_PYTHON_CLIENT_PREALLOCATE='false',
  )
  env.setdefault(
      'JAX_COMPILATION_CACHE_DIR', os.path.join(args.out, 'jax_cache')
  )
  rows = []
  ours_path = os.path.join(args.out, 'ours.jsonl')
  for arch in args.models:
    for setting in args.settings:
      for k in args.objects:
        trace_dir = (
            os.path.join(args.out, 'trace', f'{arch}_{setting}')
            if args.trace and k == min(args.objects)
            else ''
        )
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            '--out',
            args.out,
            '--child',
            f'{names[arch]}|{setting}|{k}|{trace_dir}',
            '--size',
            *map(str, size),
            '--frames',
            str(frames),
            '--repeats',
            str(repeats),
        ]
        t0 = time.perf_counter()
        try:
          done = subprocess.run(
              cmd,
              capture_output=True,
              text=True,
              env=env,
              timeout=args.child_timeout,
              check=False,
          )
        except subprocess.TimeoutExpired:
          print(
              f'{arch} {setting} K={k}: over {args.child_timeout:.0f} s, '
              'skipped',
              file=sys.stderr,
              flush=True,
          )
          continue
        if done.returncode:
          print(
              f'{arch} {setting} K={k} failed:\n{done.stderr[-3000:]}',
              file=sys.stderr,
              flush=True,
          )
          continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        with open(ours_path, 'a') as f:
          f.write(json.dumps(row) + '\n')
        print(
            f'{arch} {setting} K={k}: step {row["step_s"]:.4f} s, loop '
            f'{row["loop_s"]} s, compile {row["compile_s"]:.1f} s, child '
            f'{time.perf_counter() - t0:.0f} s',
            file=sys.stderr,
            flush=True,
        )
  if not rows:
    raise SystemExit('no child finished')
  official = _official_rows(args.official)
  if not official:
    print(
        'no official rows (official code not run): official columns ' 'empty',
        file=sys.stderr,
    )
  h, w = size
  text = (
      f'cfbi-jax vs official, one propagated frame of a {h}x{w} video '
      f'on {rows[0]["device"]} ({rows[0]["backend"]}); step = median '
      f'of {repeats} device steps, loop = median s/frame of the '
      f'evaluation loop over {frames} frames\n\n' + table(rows, official)
  )
  for r in rows:
    if r['trace_stages']:
      total = sum(s for _, s in r['trace_stages'])
      text += (
          f"\n\nProfile of 3 steps, {r['arch']} {r['setting']} "
          f"K={r['objects']}: device seconds per stage (share), then "
          'the largest ops\n'
          + '\n'.join(
              f'  {n:16s} {s:9.5f} ({s / total:.0%})'
              for n, s in r['trace_stages']
          )
          + '\n'
          + '\n'.join(f'  {s:9.5f}  {n[:90]}' for n, s in r['trace_ops'])
      )
  print(text)
  with open(os.path.join(args.out, 'table.md'), 'w') as f:
    f.write(text + '\n')


if __name__ == '__main__':
  main()
