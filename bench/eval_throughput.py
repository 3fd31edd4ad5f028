r"""Evaluation throughput: frames per second for devices x video_batch.

    python bench/eval_throughput.py                      # CPU: 4 fake devices
    python bench/eval_throughput.py --model tiny_cfbi_synthetic \
        --videos 8 --frames 20 --devices 1 2 4 --video_batch 1 2 4

Runs held-out synthetic videos (`cfbi_jax.synthetic`, seed 2, 120x160)
through the evaluation loop's runners: `videos.VideoPropagator` for one
lane (one video at a time on one device, the official loop) and
`lanes.LanePool` for devices x video_batch lanes. Each setting runs every
video once to compile, then again timed; frames/s is all frames of the
timed pass over its wall time (frames in host memory, outputs fetched to
the host, nothing written: the step's throughput, not the disk's). Each
row also gives the speed-up over one lane and checks that the labels equal
one lane's.

On the CPU, `--fake_devices N` (default 4) splits the host into N XLA
devices (`--xla_force_host_platform_device_count`); they share the cores,
so more devices can only help where one device leaves cores idle. On a
GPU, give a real model directory and `--height/--width` for real frame
sizes (`bench/gpu_suite.sh --eval`).
"""

import argparse
import os
import sys
import time


def _parse():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--model',
      default='tiny_cfbi_synthetic',
      help='model directory or bundled model name',
  )
  parser.add_argument(
      '--random_variant',
      default='',
      help='instead of --model: random weights of a variant '
      '(e.g. cfbi_resnet101, for speed only)',
  )
  parser.add_argument('--videos', type=int, default=8)
  parser.add_argument('--frames', type=int, default=20)
  parser.add_argument(
      '--height',
      type=int,
      default=0,
      help='resize the synthetic frames (0: 120x160)',
  )
  parser.add_argument('--width', type=int, default=0)
  parser.add_argument('--devices', type=int, nargs='+', default=[1, 2, 4])
  parser.add_argument('--video_batch', type=int, nargs='+', default=[1, 2])
  parser.add_argument(
      '--fake_devices',
      type=int,
      default=4,
      help='CPU only: fake XLA devices (0: leave as is)',
  )
  parser.add_argument(
      '--out', default='', help='also write the table (markdown) here'
  )
  return parser.parse_args()


def main():
  args = _parse()
  if args.fake_devices and 'cuda' not in os.environ.get('JAX_PLATFORMS', ''):
    flag = f'--xla_force_host_platform_device_count={args.fake_devices}'
    os.environ['XLA_FLAGS'] = (
        os.environ.get('XLA_FLAGS', '') + ' ' + flag
    ).strip()
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from cfbi_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top
  from cfbi_jax import peak_memory  # pylint: disable=g-import-not-at-top
  from cfbi_jax import synthetic  # pylint: disable=g-import-not-at-top
  from cfbi_jax.inference import lanes  # pylint: disable=g-import-not-at-top
  from cfbi_jax.inference import videos  # pylint: disable=g-import-not-at-top

  if args.random_variant:
    model = models.build(models.model_config(args.random_variant))
    name = f'{args.random_variant} (random weights)'
  else:
    model, _ = checkpoint.load_model(args.model)
    name = args.model
  clips = []
  for v in range(args.videos):
    frames, labels = synthetic.render_video(synthetic.video_seed(2, v))
    frames, labels = list(frames[: args.frames]), list(labels[: args.frames])
    if args.height and args.width:
      size = (args.width, args.height)
      frames = [np.asarray(Image.fromarray(f).resize(size)) for f in frames]
      labels = [
          np.asarray(Image.fromarray(l).resize(size, Image.NEAREST))
          for l in labels
      ]
    clips.append((frames, {0: labels[0]}))
  total = sum(len(f) for f, _ in clips)
  size = clips[0][0][0].shape[:2]

  def one_lane():
    runner = videos.VideoPropagator(model)
    run = lambda: [
        [l for _, l, _ in runner.run(iter(f), a, len(f))] for f, a in clips
    ]
    return run

  def pooled(devices, batch):
    pool = lanes.LanePool(model, jax.local_devices()[:devices], batch)

    def run():
      out = {}
      consume = lambda stream, i: out.__setitem__(
          i,
          [
              l
              for _, l, _ in stream.run(
                  iter(clips[i][0]), clips[i][1], len(clips[i][0])
              )
          ],
      )
      pool.run(list(range(len(clips))), consume, lambda i: size)
      return [out[i] for i in range(len(clips))]

    return run

  settings = [(1, 1)] + [
      (d, b)
      for d in args.devices
      for b in args.video_batch
      if (d, b) != (1, 1) and d <= len(jax.local_devices())
  ]
  rows, reference, base = [], None, None
  for devices, batch in settings:
    run = one_lane() if (devices, batch) == (1, 1) else pooled(devices, batch)
    run()  # Compiles every shape.
    start = time.perf_counter()
    labels = run()
    seconds = time.perf_counter() - start
    fps = total / seconds
    if reference is None:
      reference, base = labels, fps
    same = all(
        np.array_equal(a, b)
        for x, y in zip(labels, reference)
        for a, b in zip(x, y)
    )
    peak = peak_memory.peak_memory()[0]
    rows.append((devices, batch, devices * batch, fps, fps / base, same, peak))
    print(
        f'devices {devices} x video_batch {batch}: {fps:.1f} frames/s '
        f"({fps / base:.2f}x), labels equal one lane's: {same}",
        flush=True,
    )
  device = jax.devices()[0]
  lines = [
      f'{name}, {args.videos} videos x {args.frames} frames at '
      f'{size[0]}x{size[1]}, {device.platform} ({device.device_kind}, '
      f'{len(jax.local_devices())} devices, {os.cpu_count()} host cores); '
      f'peak memory: {peak_memory.peak_memory()[1]}, the most so far after '
      'each row (rows run in order)',
      '',
      '| devices | video_batch | lanes | frames/s | vs one lane | labels '
      "equal one lane's | peak MB so far |",
      '|---|---|---|---|---|---|---|',
  ] + [
      f'| {d} | {b} | {n} | {f:.1f} | {r:.2f}x | {s} | {m:.0f} |'
      for d, b, n, f, r, s, m in rows
  ]
  table = '\n'.join(lines)
  print(table)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(table + '\n')


if __name__ == '__main__':
  main()
