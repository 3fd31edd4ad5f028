"""Static cost of the per-frame step as a GPU runs it, read on any machine.

    python bench/step_cost.py                     # the table of the issue
    python bench/step_cost.py --models cfbi_resnet101 --objects 2
    python bench/step_cost.py --models tiny_cfbi --no-memory --out /tmp/c

For each model variant, frame size and object count K, the per-frame step
that `evaluate.py` and `Session` run (`inference.step.next_frame`, one
scale, no flip, one reference slot, the model as
`inference.step.split_for_inference` makes it, with abstract parameters)
is traced in the form the GPU runs (`backend.tracing_for('cuda')`: every
`backend.is_cpu()` branch takes its GPU side) and lowered for CUDA, which
needs no GPU. The StableHLO module is then read, not run:

* `gflop`: convolution and dot FLOPs (2 per multiply-add), per named stage
  (the `jax.named_scope`s of `inference.step` and the models: `embed`,
  `global_matching`, `local_matching`, `attention`, `ensembler`, ...), each
  op weighted by the trips of the loops around it. XLA's `cost_analysis`
  counts a loop body once, so it cannot give this.
* `loop_iters`: sequential loop iterations per frame, the sum over every
  `while` of its trip count times the trips of the loops around it (a
  `lax.map` over 625 offsets is 625 launches of its body on a GPU).
* `scatters`, `sorts`, `gathers`: those ops, trip-weighted; `top_k`: the
  `lax.top_k` ops (`chlo.top_k`, a partial sort per row), and
  `top_k_values` the values they rank.
* `temp_mb`, `args_mb`: `memory_analysis()` of the same traced program
  compiled for this machine's CPU (buffer assignment; the CUDA compiler is
  not available without a GPU). `--no-memory` skips the compile.
* `slots`: the object slots the step runs
  (`inference.step.object_valid(K)`).

One summary line per configuration,

    step cost: model=<variant> size=<H>x<W> objects=<K> slots=<S> gflop=<G>
      loop_iters=<N> scatters=<N> sorts=<N> temp_mb=<M> args_mb=<M>

(one line in the output), and every row, stages and loops included, as
JSON lines in `<out>/step_cost.jsonl`. `size` is the network input (a
480x854 DAVIS frame gives 481x849).
"""

import argparse
import contextlib
import json
import os
import re
import sys
import time
from typing import Dict, Optional
from unittest import mock

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# The `jax.named_scope`s of the step (as `bench/gpu_suite.py` names them).
STAGES = (
    'preprocess',
    'embed',
    'segment',
    'global_matching',
    'local_matching',
    'attention',
    'ensembler',
    'postprocess',
    'advance',
)

FULL_MODELS = (
    'cfbi_resnet101',
    'cfbip_resnet101',
    'feelvos_resnet101',
    'videomatch_resnet101',
)
TINY_MODELS = ('tiny_cfbi', 'tiny_cfbip', 'tiny_feelvos', 'tiny_videomatch')

_COUNTED = {
    'stablehlo.scatter': 'scatters',
    'stablehlo.sort': 'sorts',
    'stablehlo.gather': 'gathers',
}


def _stage(location: str) -> Optional[str]:
  """The innermost of `STAGES` in an op location's name stack, or None."""
  m = re.search(r'"([^"]*)"', location)
  if not m:
    return None
  parts = [p for p in re.split(r'[/()]', m.group(1)) if p in STAGES]
  return parts[-1] if parts else None


def _shape(value) -> tuple:
  from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top

  return tuple(ir.RankedTensorType(value.type).shape)


def _prod(values) -> int:
  out = 1
  for v in values:
    out *= int(v)
  return out


def _dims(text: str, key: str) -> list:
  m = re.search(key + r'\s*=\s*\[([\d,\s]*)\]', text)
  return [int(v) for v in m.group(1).split(',') if v.strip()] if m else []


def op_flops(op) -> int:
  """FLOPs (2 per multiply-add) of one `stablehlo.convolution` or
  `stablehlo.dot_general`; 0 for any other op."""
  name = op.operation.name
  if name == 'stablehlo.dot_general':
    numbers = str(op.attributes['dot_dimension_numbers'])
    lhs = _shape(op.operands[0])
    contracted = _prod(
        lhs[d] for d in _dims(numbers, 'lhs_contracting_dimensions')
    )
    return 2 * _prod(_shape(op.results[0])) * contracted
  if name == 'stablehlo.convolution':
    numbers = str(op.attributes['dimension_numbers'])
    kernel_dims = re.search(r'x\[([^\]]*)\]->', numbers).group(1).split(',')
    kernel_dims = [d.strip() for d in kernel_dims]
    kernel = _shape(op.operands[1])
    out_features = kernel[kernel_dims.index('o')]
    # Each output element takes kernel_size / out_features multiply-adds
    # (spatial taps x input features per group).
    return 2 * _prod(_shape(op.results[0])) * _prod(kernel) // out_features
  return 0


def _constant(value) -> Optional[int]:
  """The integer of a scalar `stablehlo.constant` value, else None."""
  from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top

  if not isinstance(value, ir.OpResult):
    return None
  owner = value.owner
  if owner.name != 'stablehlo.constant':
    return None
  m = re.match(r'dense<(-?\d+)>', str(owner.attributes['value']))
  return int(m.group(1)) if m else None


def trip_count(while_op) -> Optional[int]:
  """Iterations of a counted `stablehlo.while` (JAX's scan, map and
  fori_loop form: `i = c0; while i < c1: ...; i += 1`), or None."""
  from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top

  cond = while_op.regions[0].blocks[0]
  for op in cond.operations:
    if op.operation.name != 'stablehlo.compare':
      continue
    direction = str(op.attributes['comparison_direction'])
    lhs, rhs = op.operands
    if not isinstance(lhs, ir.BlockArgument):
      return None
    limit = _constant(rhs)
    start = _constant(while_op.operands[lhs.arg_number])
    if limit is None or start is None:
      return None
    if 'LT' in direction:
      return max(0, limit - start)
    if 'LE' in direction:
      return max(0, limit - start + 1)
    return None
  return None


def module_cost(module) -> Dict:
  """Trip-weighted cost of a lowered StableHLO module (`ir.Module`).

  Follows `func.call`s into their callees (an op inside a callee takes the
  stage of its own name stack, else of the call site) and weights every op
  by the product of the trip counts of the `while` loops around it; a loop
  whose trip count cannot be read counts once and is reported.

  Returns:
    `{'gflop': {stage: GFLOP}, 'gflop_total', 'loop_iters', 'loops': [{
    'stage', 'trips', 'weight'}], 'scatters', 'sorts', 'gathers', 'top_k'
    (`lax.top_k` ops), 'top_k_values' (the values they rank),
    'unknown_loops'}`.
  """
  funcs = {}
  for op in module.body.operations:
    if op.operation.name == 'func.func':
      funcs[str(op.attributes['sym_name']).strip('"')] = op
  out = {
      'flops': {},
      'loop_iters': 0,
      'loops': [],
      'scatters': 0,
      'sorts': 0,
      'gathers': 0,
      'top_k': 0,
      'top_k_values': 0,
      'unknown_loops': 0,
  }

  def visit(block, weight, stage):
    for op in block.operations:
      name = op.operation.name
      here = _stage(str(op.location)) or stage
      if name == 'func.call':
        callee = str(op.attributes['callee']).lstrip('@').strip('"')
        visit(funcs[callee].regions[0].blocks[0], weight, here)
        continue
      if name == 'stablehlo.while':
        trips = trip_count(op)
        if trips is None:
          out['unknown_loops'] += 1
          trips = 1
        out['loops'].append({'stage': here, 'trips': trips, 'weight': weight})
        out['loop_iters'] += weight * trips
        for region in op.regions:
          for inner in region.blocks:
            visit(inner, weight * trips, here)
        continue
      if name in _COUNTED:
        out[_COUNTED[name]] += weight
      if name == 'chlo.top_k':
        out['top_k'] += weight
        out['top_k_values'] += weight * _prod(_shape(op.operands[0]))
      flops = op_flops(op)
      if flops:
        out['flops'][here or 'other'] = (
            out['flops'].get(here or 'other', 0) + weight * flops
        )
      for region in op.regions:
        for inner in region.blocks:
          visit(inner, weight, here)

  visit(funcs['main'].regions[0].blocks[0], 1, None)
  flops = out.pop('flops')
  out['gflop'] = {k: v / 1e9 for k, v in sorted(flops.items())}
  out['gflop_total'] = sum(flops.values()) / 1e9
  return out


def _gpu_form():
  """`backend.tracing_for('cuda')`, or, for a checkout that predates it, a
  patched `backend.is_cpu` (so the same tool reads an older step)."""
  from cfbi_jax import backend  # pylint: disable=g-import-not-at-top

  if hasattr(backend, 'tracing_for'):
    return backend.tracing_for('cuda')
  return mock.patch.object(backend, 'is_cpu', lambda: False)


def step_cost(
    variant: str, frame_size, objects: int, refs: int = 1, memory: bool = True
) -> Dict:
  """Lowers one per-frame step in its GPU form and reads its cost.

  Args:
    variant: a model variant (`models.model_config`).
    frame_size: `(H, W)` of the video frame (the input size follows the
      official loader's rule).
    objects: K, the objects known before the frame.
    refs: reference slots of the carried state.
    memory: also compile for this machine's CPU and read
      `memory_analysis()`.

  Returns:
    One row: `module_cost` plus model, sizes, K, slots and memory.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top
  from cfbi_jax.inference import step as step_lib  # pylint: disable=g-import-not-at-top

  from cfbi_jax import layers  # pylint: disable=g-import-not-at-top

  def inference_model():
    # What `step.split_for_inference` runs (an older checkout has no
    # folding).
    model = models.build(models.model_config(variant), rngs=nnx.Rngs(0))
    if hasattr(layers, 'fold_frozen_batchnorm'):
      layers.fold_frozen_batchnorm(model)
    return model

  graphdef, params = nnx.split(nnx.eval_shape(inference_model))
  h, w = frame_size
  spec = step_lib.make_spec((h, w), num_ref_slots=refs)
  obj_valid = np.asarray(step_lib.object_valid(objects))
  frame = jax.ShapeDtypeStruct((h, w, 3), np.uint8)
  t0 = time.perf_counter()
  with _gpu_form():
    steps = step_lib.compile_steps(graphdef)
    states = jax.eval_shape(
        steps.first,
        params,
        frame,
        jax.ShapeDtypeStruct((h, w), np.int32),
        spec=spec,
    )
    traced = steps.next.trace(
        params,
        states,
        frame,
        jax.ShapeDtypeStruct((h, w), np.uint8),
        jax.ShapeDtypeStruct((), bool),
        jax.ShapeDtypeStruct(obj_valid.shape, bool),
        spec=spec,
    )
  lowered = traced.lower(lowering_platforms=('cuda',))
  row = {
      'model': variant,
      'frame': [h, w],
      'size': list(spec.input_sizes[0]),
      'objects': objects,
      'slots': int(obj_valid.shape[0]),
      'refs': refs,
  }
  row.update(module_cost(lowered.compiler_ir('stablehlo')))
  row['lower_s'] = time.perf_counter() - t0
  row['temp_mb'] = row['args_mb'] = None
  if memory:
    t0 = time.perf_counter()
    mem = traced.lower().compile().memory_analysis()
    row['compile_cpu_s'] = time.perf_counter() - t0
    row['temp_mb'] = mem.temp_size_in_bytes / 2**20
    row['args_mb'] = mem.argument_size_in_bytes / 2**20
  return row


def summary_line(row: Dict) -> str:
  """The one-line form of a row (see the module docstring)."""
  mb = lambda v: 'na' if v is None else f'{v:.0f}'
  return (
      f"step cost: model={row['model']} size={row['size'][0]}x"
      f"{row['size'][1]} objects={row['objects']} slots={row['slots']} "
      f"gflop={row['gflop_total']:.1f} loop_iters={row['loop_iters']} "
      f"scatters={row['scatters']} sorts={row['sorts']} "
      f"temp_mb={mb(row['temp_mb'])} args_mb={mb(row['args_mb'])}"
  )


def stage_line(row: Dict) -> str:
  """GFLOP per stage and the loops, for the log."""
  stages = ' '.join(f'{k}={v:.1f}' for k, v in row['gflop'].items())
  loops = ' '.join(
      f"{l['stage']}:{l['trips']}x{l['weight']}" for l in row['loops']
  )
  return (
      f'  gflop by stage: {stages}\n  loops (stage:trips x outer): '
      f"{loops or 'none'}; gathers={row['gathers']}"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--models', nargs='+', default=list(FULL_MODELS + TINY_MODELS)
  )
  parser.add_argument(
      '--frame',
      nargs=2,
      type=int,
      default=[480, 854],
      help='video frame size (480 854: a 481x849 input)',
  )
  parser.add_argument('--objects', nargs='+', type=int, default=[1, 2, 3, 4, 5])
  parser.add_argument('--refs', type=int, default=1)
  parser.add_argument(
      '--no-memory',
      action='store_true',
      help='skip the CPU compile (temp_mb, args_mb)',
  )
  parser.add_argument(
      '--memory-objects',
      nargs='+',
      type=int,
      default=None,
      help='compile for memory only at these K (default ' 'all)',
  )
  parser.add_argument('--out', default='runs/step_cost')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'step_cost.jsonl')
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)
  for variant in args.models:
    for k in args.objects:
      memory = not args.no_memory and (
          args.memory_objects is None or k in args.memory_objects
      )
      row = step_cost(variant, tuple(args.frame), k, args.refs, memory)
      print(summary_line(row), flush=True)
      print(stage_line(row), file=sys.stderr, flush=True)
      with open(path, 'a') as f:
        f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
  main()
