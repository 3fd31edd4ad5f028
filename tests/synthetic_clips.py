"""A tiny synthetic video shared by the inference and evaluation tests."""

import numpy as np


def two_squares(num_frames=4, size=(33, 49), seed=0, late_object=False):
  """Frames with two drifting squares on a random background.

  The default size is of the form 16k+1, so the eval loop feeds the frames
  unresized.

  Args:
    num_frames: number of frames.
    size: `(height, width)`.
    seed: background seed.
    late_object: object 2 first appears at frame 2 (YouTube-VOS style).

  Returns:
    `(frames, labels)`: lists of `[H, W, 3]` uint8 and `[H, W]` uint8.
  """
  rng = np.random.default_rng(seed)
  background = rng.integers(0, 255, size + (3,), dtype=np.uint8)
  frames, labels = [], []
  for t in range(num_frames):
    frame, label = background.copy(), np.zeros(size, np.uint8)
    frame[5 + t : 15 + t, 5:15] = (250, 20, 20)
    label[5 + t : 15 + t, 5:15] = 1
    if not late_object or t >= 2:
      frame[18:28, 25 + t : 35 + t] = (20, 250, 20)
      label[18:28, 25 + t : 35 + t] = 2
    frames.append(frame)
    labels.append(label)
  return frames, labels
