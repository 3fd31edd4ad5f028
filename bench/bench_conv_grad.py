"""Convolution gradients on CPU: XLA's own against `layers.conv_tap_backward`.

    python bench/bench_conv_grad.py [--repeats 10] [--no-step]

Inside a loop (a `lax.scan`, as the train step runs the per-frame step
over the current frames) XLA:CPU lowers the gradients of a k x k
convolution (the input gradient, and the kernel gradient, a convolution
whose window is the whole feature map) to a generic loop emitter, while
outside loops they run in an optimised library. `layers.SpatialConv`
therefore takes the gradient of every k x k convolution tap by tap, as
k^2 matrix products, on the CPU backend. This script times both forms,
side by side in one run:

1. per layer: the forward + backward of single convolutions with the
   shapes of the tiny model's ensembler at the synthetic recipe's crop
   (`configs/synthetic.py`: crop 97, stride-4 maps of 25 x 25, batch 2 x 4
   object slots) and of the full ensembler at a 233 crop (stride-4 maps of
   59 x 59, one clip of 2 object slots), over 3 frames, once unrolled and
   once inside a `lax.scan` as in the train step, also reporting the
   largest relative difference of the two gradients;
2. the whole jitted train step of the synthetic recipe
   (`configs/synthetic.py`, built by `trainer.create_state`; its config
   imports TensorFlow, `--no-step` skips it), compiled once with
   `SpatialConv` as it is and once with the class patched back to
   `nnx.Conv.__call__` (XLA's gradient), timed alternately.

Best of `--repeats` runs each; the ratio column is XLA time / tap time.
"""

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cfbi_jax import layers  # pylint: disable=g-import-not-at-top,wrong-import-position

# name, (N, H, W, C_in, C_out, kernel, stride, dilation)
LAYERS = (
    ('tiny decoder conv1 3x3 48->16', (8, 25, 25, 48, 16, 3, 1, 1)),
    ('tiny decoder conv2 3x3 16->16', (8, 25, 25, 16, 16, 3, 1, 1)),
    ('tiny layer2 3x3 dil 2, 8->8', (8, 25, 25, 8, 8, 3, 1, 2)),
    ('tiny layer3 3x3 stride 2', (8, 25, 25, 8, 16, 3, 2, 1)),
    ('full decoder conv1 3x3 320->128', (2, 59, 59, 320, 128, 3, 1, 1)),
    ('full layer2 3x3 dil 2, 64->64', (2, 59, 59, 64, 64, 3, 1, 2)),
)


def _best(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # Compile.
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def _layer_rows(repeats):
  rng = np.random.default_rng(0)
  rows = []
  for name, (n, h, w, c, o, k, s, d) in LAYERS:
    p = d * (k - 1) // 2
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    kernel = jnp.asarray(
        rng.standard_normal((k, k, c, o)) / np.sqrt(k * k * c), jnp.float32
    )

    def xla_conv(x, kernel, s=s, d=d, p=p):
      return jax.lax.conv_general_dilated(
          x,
          kernel,
          (s, s),
          ((p, p), (p, p)),
          rhs_dilation=(d, d),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )

    tap_conv = functools.partial(
        layers.conv_tap_backward, stride=s, dilation=d, padding=p
    )
    xs = jnp.stack([x, jnp.flip(x, 1), jnp.flip(x, 2)])  # 3 "frames".
    row = [name]
    for scanned in (False, True):
      grads, times = {}, {}
      for label, conv in (('xla', xla_conv), ('tap', tap_conv)):
        if scanned:  # As in the train step: inside the lax.scan over frames.

          def loss(xs, kernel, conv=conv):
            def body(total, x):
              return total + jnp.sum(jnp.sin(conv(x, kernel))), None

            return jax.lax.scan(body, jnp.zeros(()), xs)[0]

        else:

          def loss(xs, kernel, conv=conv):
            return sum(jnp.sum(jnp.sin(conv(x, kernel))) for x in xs)

        fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
        times[label] = _best(fn, (xs, kernel), repeats)
        grads[label] = fn(xs, kernel)
      diff = max(
          float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
          for a, b in zip(grads['xla'], grads['tap'])
      )
      row += [times['xla'], times['tap'], diff]
    rows.append(tuple(row))
  return rows


def _step_times(repeats):
  """Synthetic-recipe train step, tap gradients vs XLA's (patched)."""
  import bench_train  # pylint: disable=g-import-not-at-top
  from cfbi_jax import trainer  # pylint: disable=g-import-not-at-top
  from cfbi_jax import train_step as ts  # pylint: disable=g-import-not-at-top
  from configs import synthetic  # pylint: disable=g-import-not-at-top

  config = synthetic.get_config()  # The recipe as `train.py` runs it.
  crop = config.data.crop_size
  arrays = bench_train.disc_batch(
      config.train.batch_size,
      config.train.num_frames + 2,
      crop,
      config.data.max_objects + 1,
  )
  # The second half's schedule: hardest 15%, own previous predictions.
  schedule = trainer.schedule_values(
      config.train.steps, config.train, crop * crop
  )

  def build():
    graphdef, tx, state = trainer.create_state(config)
    step = jax.jit(ts.make_train_step(graphdef, tx, accumulate_steps=1))
    jax.block_until_ready(step(state, arrays, schedule))  # Compile now.
    return step, state

  tap_step, tap_state = build()
  original = layers.SpatialConv.__call__
  layers.SpatialConv.__call__ = nnx.Conv.__call__  # XLA's gradients.
  try:
    xla_step, xla_state = build()
  finally:
    layers.SpatialConv.__call__ = original
  times = {'xla': [], 'tap': []}
  for _ in range(repeats):  # Alternate, so that drift hits both alike.
    for label, step, state in (
        ('xla', xla_step, xla_state),
        ('tap', tap_step, tap_state),
    ):
      t0 = time.perf_counter()
      jax.block_until_ready(step(state, arrays, schedule))
      times[label].append(time.perf_counter() - t0)
  return min(times['xla']), min(times['tap'])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--no-step', action='store_true')
  args = parser.parse_args()
  if jax.default_backend() != 'cpu':
    print(
        f'note: backend is {jax.default_backend()}; SpatialConv uses '
        "XLA's gradients there, this compares the two forms anyway"
    )
  print(
      f'forward + backward, best of {args.repeats}, on '
      f'{jax.devices()[0].device_kind} ({os.cpu_count()} CPUs)\n'
  )
  print(f'  {"":34s}{"3 frames unrolled":^34s}{"3 frames in lax.scan":^34s}')
  print(
      f'  {"":34s}' + f'{"XLA ms":>9s}{"tap ms":>9s}{"ratio":>7s}'
      f'{"rel diff":>9s}' * 2
  )
  for name, *cells in _layer_rows(args.repeats):
    line = f'  {name:34s}'
    for xla, tap, diff in (cells[:3], cells[3:]):
      line += f'{1e3 * xla:9.2f}{1e3 * tap:9.2f}{xla / tap:6.1f}x{diff:9.0e}'
    print(line)
  if not args.no_step:
    xla, tap = _step_times(args.repeats)
    print(
        f'\n  {"synthetic-recipe train step":36s}{1e3 * xla:10.1f}'
        f'{1e3 * tap:10.1f}{xla / tap:7.1f}x'
    )


if __name__ == '__main__':
  main()
