"""Evaluation output files: palette PNGs, probabilities, zips, overlays.

Evaluation (`evaluation.py`, the demo notebook) writes one palette PNG per
frame in the DAVIS / YouTube-VOS result layouts
(`../shared/reference/cfbi-official-notes.md` §17), optionally the
per-frame probabilities, the CodaLab zip for YouTube-VOS and an overlay video
for looking at results; training draws overlays for its image summaries.
Every file is written atomically (`atomic_files.atomic_path`), so an
interrupted run never leaves a truncated file under a final name and
`sequence_done` can safely skip finished sequences on resume. Parent
folders are created as needed.
"""

import fractions
import os
import zipfile
from typing import Iterable, Optional, Sequence

import av
import numpy as np
from PIL import Image

from cfbi_jax import atomic_files
from cfbi_jax import masks


def _as_labels(labels: np.ndarray) -> np.ndarray:
  """Checks a `[H, W]` integer label map with values 0..255; returns uint8."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.dtype.kind not in 'biu':
    raise ValueError(
        f'labels must be a [H, W] integer array, got '
        f'{labels.dtype} {labels.shape}'
    )
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError('labels must lie in 0..255 for a palette PNG')
  return labels.astype(np.uint8)


def write_palette_png(
    path: str, labels: np.ndarray, palette: np.ndarray = masks.DAVIS_PALETTE
) -> None:
  """Writes a label map as an 8-bit palette PNG (pixel value = object id).

  Args:
    path: destination `.png`.
    labels: `[H, W]` integer object ids in 0..255.
    palette: `[N, 3]` uint8 colours, N <= 256 (the DAVIS palette by default).
  """
  labels = _as_labels(labels)
  height, width = labels.shape
  img = Image.frombytes('P', (width, height), labels.tobytes())
  img.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
  with atomic_files.atomic_path(path) as tmp:
    img.save(tmp, format='PNG')


def write_probabilities(path: str, probs: np.ndarray) -> None:
  """Writes one frame's probabilities to an uncompressed `.npz`.

  Stored as float32 under the key 'probs' (float16 would halve the size but
  lose the resolution ensembling and J&F ties depend on; compression gains
  little on smooth float data and costs time).

  Args:
    path: destination, conventionally `<frame>.npz`.
    probs: `[K + 1, H, W]` float probabilities (background first).
  """
  probs = np.asarray(probs)
  if probs.ndim != 3 or probs.dtype.kind != 'f':
    raise ValueError(
        f'probs must be a [K + 1, H, W] float array, got '
        f'{probs.dtype} {probs.shape}'
    )
  with atomic_files.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, probs=probs.astype(np.float32))


def sequence_done(directory: str, frame_names: Sequence[str]) -> bool:
  """Whether `<directory>/<name>.png` exists for every frame name.

  Writes are atomic, so a present PNG is complete; evaluation uses this to
  skip finished sequences when resuming.

  Args:
    directory: the sequence's output folder.
    frame_names: output stems of all frames of the sequence.

  Returns:
    True if all PNGs are present (and `frame_names` is not empty).
  """
  return bool(frame_names) and all(
      os.path.isfile(os.path.join(directory, n + '.png')) for n in frame_names
  )


def write_youtube_vos_zip(annotations_dir: str, zip_path: str) -> str:
  """Zips YouTube-VOS results in the CodaLab submission layout.

  Archive paths are `Annotations/<seq>/<frame>.png` whatever the folder's
  own name; hidden files (temporaries) and non-PNGs are skipped.

  Args:
    annotations_dir: folder holding `<seq>/<frame>.png`.
    zip_path: destination `.zip` (written atomically).

  Returns:
    `zip_path`.

  Raises:
    FileNotFoundError: `annotations_dir` does not exist.
    ValueError: it holds no `<seq>/<frame>.png`.
  """
  if not os.path.isdir(annotations_dir):
    raise FileNotFoundError(f'no annotations folder: {annotations_dir}')
  entries = []
  for seq in sorted(os.listdir(annotations_dir)):
    seq_dir = os.path.join(annotations_dir, seq)
    if seq.startswith('.') or not os.path.isdir(seq_dir):
      continue
    for f in sorted(os.listdir(seq_dir)):
      if not f.startswith('.') and f.lower().endswith('.png'):
        entries.append((os.path.join(seq_dir, f), f'Annotations/{seq}/{f}'))
  if not entries:
    raise ValueError(f'no <seq>/<frame>.png files in {annotations_dir}')
  with atomic_files.atomic_path(zip_path) as tmp:
    # PNGs are already compressed; storing them keeps zipping fast.
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_STORED) as zf:
      for src, arcname in entries:
        zf.write(src, arcname)
  return zip_path


def overlay(
    rgb: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray = masks.DAVIS_PALETTE,
    alpha: float = 0.5,
    boundary_color: Optional[Sequence[int]] = (0, 0, 0),
) -> np.ndarray:
  """Blends object colours into a frame and outlines the objects.

  Object pixels (label > 0) become `round((1 - alpha) * rgb + alpha *
  palette[label])`; background pixels are unchanged. Object pixels with a
  4-neighbour of another label are then painted `boundary_color`.

  Args:
    rgb: `[H, W, 3]` uint8 frame.
    labels: `[H, W]` integer object ids.
    palette: `[N, 3]` colours indexed by object id.
    alpha: weight of the object colour.
    boundary_color: RGB of the outlines, None for no outlines.

  Returns:
    `[H, W, 3]` uint8 image.
  """
  rgb = np.asarray(rgb)
  labels = np.asarray(labels)
  if rgb.shape[:2] != labels.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f'rgb {rgb.shape} and labels {labels.shape} do not match')
  colours = np.asarray(palette, np.float32)[labels]
  blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
  fg = labels > 0
  out = rgb.copy()
  out[fg] = np.clip(np.rint(blend[fg]), 0, 255).astype(np.uint8)
  if boundary_color is not None:
    edge = np.zeros(labels.shape, bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    out[edge & fg] = np.asarray(boundary_color, np.uint8)
  return out


def _video_codec() -> str:
  """'libx264' when this PyAV build can encode H.264, else 'mpeg4'."""
  try:
    av.codec.Codec('libx264', 'w')
    return 'libx264'
  except ValueError:  # av.codec.codec.UnknownCodecError
    return 'mpeg4'


def write_overlay_video(
    path: str, frames: Iterable[np.ndarray], fps: float = 24.0
) -> int:
  """Encodes RGB frames to a video file (H.264 if available, else MPEG-4).

  Odd heights or widths are padded by one replicated row or column, since
  yuv420p needs even sizes. The file is written atomically.

  Args:
    path: destination, normally `.mp4` (the container follows the extension).
    frames: `[H, W, 3]` uint8 RGB frames, all the same size; consumed one at
      a time.
    fps: frame rate.

  Returns:
    The number of frames written.

  Raises:
    ValueError: no frames, or frames of different sizes.
  """
  codec = _video_codec()
  rate = fractions.Fraction(fps).limit_denominator(1001)
  count, size = 0, None
  with atomic_files.atomic_path(path) as tmp:
    with av.open(tmp, mode='w') as container:
      stream = None
      for frame in frames:
        frame = np.asarray(frame, np.uint8)
        if size is None:
          size = frame.shape
          stream = container.add_stream(codec, rate=rate)
          stream.height = frame.shape[0] + frame.shape[0] % 2
          stream.width = frame.shape[1] + frame.shape[1] % 2
          stream.pix_fmt = 'yuv420p'
          if codec == 'libx264':
            stream.options = {'crf': '18'}
          else:
            stream.bit_rate = 8_000_000
        elif frame.shape != size:
          raise ValueError(f'frame {count} is {frame.shape}, expected {size}')
        pad = ((0, size[0] % 2), (0, size[1] % 2), (0, 0))
        if any(p[1] for p in pad):
          frame = np.pad(frame, pad, mode='edge')
        video_frame = av.VideoFrame.from_ndarray(frame, format='rgb24')
        container.mux(stream.encode(video_frame))
        count += 1
      if stream is None:
        raise ValueError(f'no frames to write to {path}')
      container.mux(stream.encode(None))
  return count
