"""Tiny learnable training sets in the DAVIS 2017 and YouTube-VOS layouts.

Each video is a smooth random background with two textured objects (a red
and a green square, each with its own noise) that drift across the frame,
so a tiny model can learn to segment them in a few dozen steps. Written
with PIL / the project's palette writer, read back by the real readers.
"""

import json
import os

import numpy as np
from PIL import Image

from cfbi_jax import outputs

OBJECT_COLOURS = ((220, 40, 40), (40, 200, 60))


def render_video(num_frames, size, seed):
  """`(frames, labels)`: lists of `[H, W, 3]` uint8 and `[H, W]` uint8."""
  rng = np.random.default_rng(seed)
  h, w = size
  coarse = rng.integers(40, 200, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
  background = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
      (w, h), Image.BILINEAR), np.float32)
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
          0, 12, (side, side, 3))
      frame[y:y + side, x:x + side] = patch
      label[y:y + side, x:x + side] = k + 1
    frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    labels.append(label)
  return frames, labels


def _write(frame_path, mask_path, frame, label):
  os.makedirs(os.path.dirname(frame_path), exist_ok=True)
  Image.fromarray(frame).save(frame_path, quality=95)
  if mask_path:
    os.makedirs(os.path.dirname(mask_path), exist_ok=True)
    outputs.write_palette_png(mask_path, label)


def write_davis(root, num_videos=3, num_frames=8, size=(72, 96), seed=0):
  """DAVIS 2017 layout (`ImageSets/2017/train.txt`, 480p folders)."""
  names = [f'video{v}' for v in range(num_videos)]
  for v, name in enumerate(names):
    frames, labels = render_video(num_frames, size, seed * 1000 + v)
    for t, (frame, label) in enumerate(zip(frames, labels)):
      _write(os.path.join(root, 'JPEGImages', '480p', name, f'{t:05d}.jpg'),
             os.path.join(root, 'Annotations', '480p', name, f'{t:05d}.png'),
             frame, label)
  os.makedirs(os.path.join(root, 'ImageSets', '2017'), exist_ok=True)
  with open(os.path.join(root, 'ImageSets', '2017', 'train.txt'), 'w') as f:
    f.write('\n'.join(names) + '\n')
  return root


def write_youtube_vos(root, num_videos=3, num_frames=26, size=(72, 96),
                      seed=0):
  """YouTube-VOS train layout: every frame's JPEG, masks every 5th frame."""
  meta = {'videos': {}}
  for v in range(num_videos):
    name = f'{v:04d}abcd'
    frames, labels = render_video(num_frames, size, seed * 1000 + 500 + v)
    annotated = list(range(0, num_frames, 5))
    for t, (frame, label) in enumerate(zip(frames, labels)):
      _write(os.path.join(root, 'train', 'JPEGImages', name, f'{t:05d}.jpg'),
             os.path.join(root, 'train', 'Annotations', name, f'{t:05d}.png')
             if t in annotated else None, frame, label)
    meta['videos'][name] = {'objects': {
        str(k): {'category': 'square', 'frames': [f'{t:05d}' for t in annotated]}
        for k in (1, 2)}}
  with open(os.path.join(root, 'train', 'meta.json'), 'w') as f:
    json.dump(meta, f)
  return root
