"""Tiny learnable training sets in the DAVIS 2017 and YouTube-VOS layouts.

Each video is a smooth random background with two textured objects (a red
and a green square, each with its own noise) that drift across the frame,
so a tiny model can learn to segment them in a few dozen steps (simpler
than `cfbi_jax.synthetic`'s benchmark videos on purpose). Written with
`cfbi_jax.synthetic.write_video`, read back by the real readers.
"""

import json
import os

import numpy as np
from PIL import Image

from cfbi_jax import synthetic

OBJECT_COLOURS = ((220, 40, 40), (40, 200, 60))


def render_video(num_frames, size, seed):
  """`(frames, labels)`: lists of `[H, W, 3]` uint8 and `[H, W]` uint8."""
  rng = np.random.default_rng(seed)
  h, w = size
  coarse = rng.integers(40, 200, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
  background = np.asarray(
      Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BILINEAR),
      np.float32,
  )
  side = max(8, min(h, w) // 4)
  starts = rng.integers(0, [h - side, w - side], (2, 2))
  speeds = rng.integers(-3, 4, (2, 2))
  frames, labels = [], []
  for t in range(num_frames):
    frame = background + rng.normal(0, 6, background.shape)
    label = np.zeros(size, np.uint8)
    for k in range(2):
      y, x = np.clip(starts[k] + speeds[k] * t, 0, [h - side, w - side])
      patch = np.asarray(OBJECT_COLOURS[k], np.float32) + rng.normal(
          0, 12, (side, side, 3)
      )
      frame[y : y + side, x : x + side] = patch
      label[y : y + side, x : x + side] = k + 1
    frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    labels.append(label)
  return frames, labels


def write_davis(root, num_videos=3, num_frames=8, size=(72, 96), seed=0):
  """DAVIS 2017 layout (`ImageSets/2017/train.txt`, 480p folders)."""
  names = [f'video{v}' for v in range(num_videos)]
  for v, name in enumerate(names):
    frames, labels = render_video(num_frames, size, seed * 1000 + v)
    synthetic.write_video(
        os.path.join(root, 'JPEGImages', '480p', name),
        os.path.join(root, 'Annotations', '480p', name),
        frames,
        labels,
    )
  synthetic.add_to_split(root, 'train', names)
  return root


def write_youtube_vos(root, num_videos=3, num_frames=26, size=(72, 96), seed=0):
  """YouTube-VOS train layout: every frame's JPEG, masks every 5th frame."""
  meta = {'videos': {}}
  for v in range(num_videos):
    name = f'{v:04d}abcd'
    frames, labels = render_video(num_frames, size, seed * 1000 + 500 + v)
    annotated = list(range(0, num_frames, 5))
    synthetic.write_video(
        os.path.join(root, 'train', 'JPEGImages', name),
        os.path.join(root, 'train', 'Annotations', name),
        frames,
        labels,
        annotated,
    )
    meta['videos'][name] = {
        'objects': {
            str(k): {
                'category': 'square',
                'frames': [f'{t:05d}' for t in annotated],
            }
            for k in (1, 2)
        }
    }
  with open(os.path.join(root, 'train', 'meta.json'), 'w') as f:
    json.dump(meta, f)
  return root


def evaluate_args(root, out):
  """`evaluate.py` arguments that segment the train split of a DAVIS layout
  at `root` with the bundled model into `out`, without scoring."""
  return [
      '--config=configs/eval.py:dataset=davis2017',
      '--config.checkpoint=tiny_cfbi_synthetic',
      f'--config.data.root={root}',
      '--config.data.split=train',
      f'--config.output_dir={out}',
      '--config.score=False',
  ]
