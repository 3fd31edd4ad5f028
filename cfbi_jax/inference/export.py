r"""The per-frame step as a standalone artifact (`jax.export`), weights baked in.

    cfbi-export --checkpoint DIR --height H --width W --objects K --out OUT

(or `python -m cfbi_jax.inference.export ...`)

writes, for frames of H x W and masks with object ids 0..K:

* `OUT/init.bin`: `init(frame uint8[H, W, 3], mask uint8[H, W]) -> state`;
* `OUT/step.bin`: `step(state, frame uint8[H, W, 3]) -> (state,
  labels uint8[H, W])`;
* `OUT/signature.json`: H, W, K, the platforms, the model's name and
  settings, and the state: a flat tuple of arrays (shapes, dtypes and what
  each holds), which is the only structure a caller passes around.

Both are `step.first_frame` / `step.next_frame` (single scale,
no flip, official preprocessing on the device) with the model's weights as
constants, serialized by `jax.export` for every platform JAX can lower to
here (CPU and CUDA by default). Running them needs only `jax` and
`flatbuffers` (JAX's serializer, which JAX does not install itself):

    import jax, numpy as np
    load = lambda p: jax.export.deserialize(open(p, 'rb').read())
    init, step = load('OUT/init.bin'), load('OUT/step.bin')
    state = init.call(frames[0], mask)
    for frame in frames[1:]:
      state, labels = step.call(state, frame)

The labels equal `Session(DIR).push(frame)`'s for the same frames (a test
runs the artifact where neither flax nor cfbi_jax can be imported).
"""

import argparse
import os
import sys
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cfbi_jax import atomic_files
from cfbi_jax import cli
from cfbi_jax.inference import step as step_lib

DEFAULT_PLATFORMS = ('cpu', 'cuda')


def export_step(
    model: nnx.Module,
    out_dir: str,
    *,
    height: int,
    width: int,
    num_objects: int,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    scale: float = 1.0,
    bgr: bool = True,
    max_long_edge: Optional[float] = None,
    model_config: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
  """Writes `init.bin`, `step.bin` and `signature.json` (module docstring).

  Args:
    model: the network (its weights become constants of the artifact).
    out_dir: output folder (created; files written atomically).
    height, width: frame size.
    num_objects: K, the largest object id of the first mask.
    platforms: `jax.export` platforms.
    scale: test scale (the network input is the official size at it).
    bgr: the model's input channel order (`config.model.bgr`).
    max_long_edge: long-edge cap (None: the official rule).
    model_config: recorded in the signature.

  Returns:
    The signature.
  """
  graphdef, params = step_lib.split_for_inference(model)
  max_objects = max(num_objects, 1)
  spec = step_lib.make_spec(
      (height, width),
      augs=step_lib.augmentations((scale,), False),
      max_long_edge=max_long_edge,
      bgr=bgr,
      max_objects=max_objects,
  )
  obj_valid = jnp.asarray(step_lib.object_valid(num_objects, max_objects))
  frame_aval = jax.ShapeDtypeStruct((height, width, 3), jnp.uint8)
  mask_aval = jax.ShapeDtypeStruct((height, width), jnp.uint8)
  first = lambda frame, mask: step_lib.first_frame(
      params, frame, mask.astype(jnp.int32), graphdef=graphdef, spec=spec
  )
  state_shapes = jax.eval_shape(first, frame_aval, mask_aval)
  treedef = jax.tree.structure(state_shapes)

  def init(frame, mask):
    return tuple(jax.tree.leaves(first(frame, mask)))

  def step(state, frame):
    states, outs = step_lib.next_frame(
        params,
        jax.tree.unflatten(treedef, list(state)),
        frame,
        jnp.zeros((height, width), jnp.uint8),
        jnp.asarray(False),
        obj_valid,
        graphdef=graphdef,
        spec=spec,
    )
    return tuple(jax.tree.leaves(states)), outs['labels']

  exported_init = jax.export.export(jax.jit(init), platforms=platforms)(
      frame_aval, mask_aval
  )
  state_avals = exported_init.out_avals
  exported_step = jax.export.export(jax.jit(step), platforms=platforms)(
      tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in state_avals),
      frame_aval,
  )
  names = [
      jax.tree_util.keystr(path)
      for path, _ in jax.tree_util.tree_flatten_with_path(state_shapes)[0]
  ]
  signature = {
      'height': height,
      'width': width,
      'objects': num_objects,
      'platforms': list(exported_step.platforms),
      'scale': scale,
      'input_size': list(spec.input_sizes[0]),
      'bgr': bgr,
      'model': dict(model_config or {}),
      'init': 'init(frame uint8[H,W,3], mask uint8[H,W] ids 0..K) -> state',
      'step': 'step(state, frame uint8[H,W,3]) -> (state, labels uint8[H,W])',
      'state': [
          {'name': n, 'shape': list(a.shape), 'dtype': str(a.dtype)}
          for n, a in zip(names, state_avals)
      ],
      'jax_version': jax.__version__,
  }
  os.makedirs(out_dir, exist_ok=True)
  for name, exported in (
      ('init.bin', exported_init),
      ('step.bin', exported_step),
  ):
    with atomic_files.atomic_path(os.path.join(out_dir, name)) as tmp:
      with open(tmp, 'wb') as f:
        f.write(exported.serialize())
  atomic_files.write_json(
      os.path.join(out_dir, 'signature.json'), signature, indent=2, default=str
  )
  return signature


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      description='Export the per-frame step of a model directory.'
  )
  parser.add_argument(
      '--checkpoint',
      required=True,
      help='model directory (convert.py or train.py output)',
  )
  parser.add_argument('--height', type=int, required=True)
  parser.add_argument('--width', type=int, required=True)
  parser.add_argument(
      '--objects',
      type=int,
      required=True,
      help='K: the first mask holds ids 0..K',
  )
  parser.add_argument('--out', required=True)
  parser.add_argument(
      '--scale',
      type=float,
      default=1.0,
      help='test scale (the bundled model is evaluated at 1.5)',
  )
  parser.add_argument('--platforms', nargs='+', default=list(DEFAULT_PLATFORMS))
  parser.add_argument(
      '--rgb',
      action='store_true',
      help='deprecated: the input channel order is the '
      "model's (config.model.bgr)",
  )
  args = parser.parse_args(argv)
  from cfbi_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from cfbi_jax.models import family  # pylint: disable=g-import-not-at-top

  model, config = checkpoint.load_model(args.checkpoint)
  bgr = family.bgr(config)
  if args.rgb:
    print(
        'warning: --rgb is deprecated; the input channel order is the '
        "model's own (bgr in its model_config.json)",
        file=sys.stderr,
    )
    bgr = False
  signature = export_step(
      model,
      args.out,
      height=args.height,
      width=args.width,
      num_objects=args.objects,
      platforms=args.platforms,
      scale=args.scale,
      bgr=bgr,
      model_config=config.to_dict(),
  )
  print(
      f'wrote {args.out}/init.bin, step.bin, signature.json for '
      f"{signature['platforms']}, {len(signature['state'])} state arrays"
  )


if __name__ == '__main__':
  cli.run(main)
