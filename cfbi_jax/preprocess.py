"""Training augmentations: small pure TensorFlow ops on clip dicts.

A clip is a dict `{'frames': [T, H, W, 3] uint8, 'labels': [T, H, W] uint8}`
whose frame 0 is the reference frame; ops may add keys (`select_objects`
adds `object_valid`) and pass unknown keys through. Every random op takes an
explicit stateless seed (a `[2]` int32/int64 tensor, see
`tf.random.experimental.stateless_split`) and applies one random draw to the
whole clip (one scale, one crop window, one flip), so an op is a pure
function of `(clip, seed)`: the same inputs give the same output eagerly and
inside `tf.data.Dataset.map`, which is what makes the input pipeline
resumable. `input_pipeline.make_train_dataset` composes them in the order of
the training recipe (`../shared/reference/cfbi-official-notes.md` §19, itself
a reconstruction from a third-party derivative, see §23):

  sample_frame_indices -> (load) -> random_scale -> balanced_random_crop
  -> select_objects -> random_flip

Deliberate differences from the OpenCV-based recipe: images are resized with
TF's bicubic kernel (Keys, A = -0.5, half-pixel centres) instead of
`cv2.INTER_CUBIC` (A = -0.75), and labels with TF's nearest neighbour; the
crop fallback after failed tries is ours (the recipe's description does not
say what happens then).

Only the training input pipeline imports this module; the model and the train
step stay free of TensorFlow.
"""

from typing import Dict, Tuple

import tensorflow as tf

try:
  # tf.data must never claim an accelerator the JAX side is using.
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # Runtime already initialised: harmless.
  pass

Clip = Dict[str, tf.Tensor]

# Label maps are uint8, so object ids are 1..255.
_NUM_IDS = 256


def _split(seed: tf.Tensor, num: int) -> tf.Tensor:
  return tf.random.experimental.stateless_split(seed, num)


def _uniform(shape, seed: tf.Tensor) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed, dtype=tf.float32)


def _uniform_int(seed: tf.Tensor, shape, limit: tf.Tensor) -> tf.Tensor:
  """Integers uniform in `[0, limit)`; `limit` >= 1 may be a dynamic scalar."""
  limit = tf.cast(limit, tf.int32)
  draw = tf.cast(
      tf.floor(_uniform(shape, seed) * tf.cast(limit, tf.float32)), tf.int32
  )
  return tf.minimum(draw, limit - 1)  # float rounding at the top end


def _reflect(index: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
  """Reflects indices into `[0, length)` (0 1 2 3 2 1 0 1 ... for length 4)."""
  period = tf.maximum(2 * (length - 1), 1)
  m = tf.math.floormod(index, period)
  return tf.where(m < length, m, period - m)


def sample_frame_indices(
    seed: tf.Tensor,
    num_available: tf.Tensor,
    *,
    num_frames: int,
    max_gap: int,
    reverse_prob: float,
    reference_tries: int,
    pairs: bool = False,
) -> Dict[str, tf.Tensor]:
  """Chooses which of a video's (annotated) frames make a training clip.

  The rules (notes §19): the frame list is reversed with probability
  `reverse_prob`; `num_frames` gaps are drawn uniformly from
  `1..max_gap`; the previous frame is uniform in `[0, N - sum(gaps))` (0 when
  that range is empty), the current frames follow it at the cumulative gaps,
  and indices past the end are reflected back into the video. The reference
  frame is uniform over all N frames; `reference_tries` candidates are drawn
  so that the loader can skip references with too little foreground.

  With `pairs` (VideoMatch's training pairs, `data.frame_sampling='pairs'`)
  the previous and current frames are instead each uniform over all N
  frames, independently of each other and of the reference: every current
  frame makes a random pair with the reference.

  Args:
    seed: `[2]` stateless seed.
    num_available: scalar N >= 1, the number of frames that may be sampled.
    num_frames: number of current frames.
    max_gap: largest gap between consecutive sampled frames (1 = consecutive).
    reverse_prob: probability of playing the video backwards.
    reference_tries: number of reference candidates.
    pairs: independent uniform frames instead of a clip (`max_gap` and
      `reverse_prob` unused).

  Returns:
    `{'reference': [reference_tries] int32, 'sequence': [num_frames + 1]
    int32}` frame indices in `[0, N)`; `sequence[0]` is the previous frame.
  """
  if max_gap < 1:
    raise ValueError(f'max_gap must be >= 1, got {max_gap}')
  n = tf.cast(num_available, tf.int32)
  gap_seed, prev_seed, reverse_seed, ref_seed = tf.unstack(_split(seed, 4))
  if pairs:
    sequence = _uniform_int(prev_seed, [num_frames + 1], n)
  else:
    gaps = 1 + _uniform_int(gap_seed, [num_frames], max_gap)
    prev = _uniform_int(prev_seed, [], tf.maximum(n - tf.reduce_sum(gaps), 1))
    offsets = tf.concat([[0], tf.cumsum(gaps)], axis=0)
    sequence = _reflect(prev + offsets, n)
    reverse = _uniform([], reverse_seed) < reverse_prob
    sequence = tf.where(reverse, n - 1 - sequence, sequence)
  reference = _uniform_int(ref_seed, [reference_tries], n)
  return {'reference': reference, 'sequence': sequence}


def _resize_clip(clip: Clip, size: tf.Tensor) -> Clip:
  """Bicubic frames (rounded, clipped to uint8) and nearest-neighbour labels."""
  frames = tf.image.resize(
      tf.cast(clip['frames'], tf.float32),
      size,
      method='bicubic',
      antialias=False,
  )
  frames = tf.cast(tf.clip_by_value(tf.round(frames), 0, 255), tf.uint8)
  labels = tf.image.resize(clip['labels'][..., None], size, method='nearest')
  return {**clip, 'frames': frames, 'labels': labels[..., 0]}


def random_scale(
    clip: Clip,
    seed: tf.Tensor,
    *,
    scale_range: Tuple[float, float],
    short_edge: int,
) -> Clip:
  """Resizes all frames by one random factor.

  The factor is `U(scale_range) * short_edge / min(H, W)` and the new size is
  `round(H * factor) x round(W * factor)`, so a 480p video ends with its short
  edge between 480 and 624 pixels for the recipe's (1.0, 1.3) and 480.

  Args:
    clip: `frames [T, H, W, 3]`, `labels [T, H, W]`.
    seed: `[2]` stateless seed.
    scale_range: `(low, high)` range of the factor relative to `short_edge`.
    short_edge: target short edge at factor 1.

  Returns:
    The clip with resized `frames` and `labels`.
  """
  low, high = scale_range
  shape = tf.shape(clip['labels'])
  hw = tf.cast(shape[1:3], tf.float32)
  draw = low + (high - low) * _uniform([], seed)
  factor = draw * short_edge / tf.reduce_min(hw)
  size = tf.cast(tf.round(hw * factor), tf.int32)
  return _resize_clip(clip, tf.maximum(size, 1))


def _object_pixel_counts(labels: tf.Tensor) -> tf.Tensor:
  """`[256]` int32 pixel count of every id in a `[h, w]` label map."""
  return tf.math.bincount(
      tf.cast(tf.reshape(labels, [-1]), tf.int32),
      minlength=_NUM_IDS,
      maxlength=_NUM_IDS,
  )


def best_foreground_window(
    reference: tf.Tensor, window: Tuple[tf.Tensor, tf.Tensor]
) -> tf.Tensor:
  """The deterministic fallback crop: most foreground, nearest the centre.

  Among all `window`-sized positions, takes those holding the most
  foreground pixels of `reference` and, of these, the one whose offset is
  nearest (squared distance, then raster order) to the window centred on the
  foreground's bounding box (clipped to the image; the image centre when
  there is no foreground). So when the centred window holds all foreground
  it is the one chosen, and otherwise no window holds more foreground than
  the chosen one.

  Args:
    reference: `[H, W]` label map of the reference frame.
    window: `(height, width)` of the crop, at most `(H, W)`.

  Returns:
    `[2]` int32 offset `(y0, x0)` of the window's top-left corner.
  """
  ch, cw = window
  shape = tf.shape(reference)
  h, w = shape[0], shape[1]
  fg = tf.cast(reference > 0, tf.int32)
  # Summed-area table: every window's foreground count in one subtraction.
  sat = tf.pad(tf.cumsum(tf.cumsum(fg, axis=0), axis=1), [[1, 0], [1, 0]])
  sums = (
      sat[ch:, cw:]
      - sat[: h - ch + 1, cw:]
      - sat[ch:, : w - cw + 1]
      + sat[: h - ch + 1, : w - cw + 1]
  )

  def centred(axis_any, size, extent):
    idx = tf.cast(tf.where(axis_any)[:, 0], tf.int32)
    has = tf.size(idx) > 0
    first = tf.cond(has, lambda: idx[0], lambda: tf.constant(0))
    last = tf.cond(has, lambda: idx[-1], lambda: size - 1)
    off = tf.math.floordiv(first + last + 1 - extent, 2)
    return tf.clip_by_value(off, 0, size - extent)

  cy = centred(tf.reduce_any(fg > 0, axis=1), h, ch)
  cx = centred(tf.reduce_any(fg > 0, axis=0), w, cw)
  ys = tf.range(h - ch + 1)[:, None] - cy
  xs = tf.range(w - cw + 1)[None, :] - cx
  dist2 = tf.cast(ys * ys + xs * xs, tf.int64)
  score = tf.cast(sums, tf.int64) * (1 << 40) - dist2
  flat = tf.cast(tf.argmax(tf.reshape(score, [-1])), tf.int32)
  return tf.stack([flat // (w - cw + 1), flat % (w - cw + 1)])


def balanced_random_crop(
    clip: Clip,
    seed: tf.Tensor,
    *,
    crop_size: int,
    max_tries: int,
    min_foreground: float,
    min_object_pixels: int,
    balanced: bool = True,
) -> Clip:
  """Crops one window from all frames, retrying until it shows objects.

  The window is `min(crop_size, H) x min(crop_size, W)`. Up to `max_tries`
  uniformly random positions are tried in order; the first is kept whose
  cropped reference frame (frame 0) has a foreground fraction >=
  `min_foreground` and at least one object with more than
  `min_object_pixels` pixels. If none qualifies, the window is
  `best_foreground_window` (no randomness), so the reference's foreground
  fraction reaches `min_foreground` whenever any window allows it. A window
  smaller than `crop_size` (small images) is then resized up to it.

  Args:
    clip: `frames [T, H, W, 3]`, `labels [T, H, W]`.
    seed: `[2]` stateless seed.
    crop_size: output height and width S.
    max_tries: number of random windows to try (>= 0).
    min_foreground: required foreground fraction of the cropped reference.
    min_object_pixels: an object counts only above this many pixels.
    balanced: False gives the normal random crop of the ablation (CFBI
      Table 4): the first random window whatever it shows.

  Returns:
    The clip with `frames [T, S, S, 3]` and `labels [T, S, S]`.
  """
  if not balanced:
    max_tries = 1
  labels = clip['labels']
  shape = tf.shape(labels)
  h, w = shape[1], shape[2]
  ch, cw = tf.minimum(crop_size, h), tf.minimum(crop_size, w)
  reference = labels[0]
  needed = min_foreground * tf.cast(ch * cw, tf.float32)

  offsets, accepted = [], []
  for try_seed in tf.unstack(_split(seed, max_tries)) if max_tries else []:
    y_seed, x_seed = tf.unstack(_split(try_seed, 2))
    y0 = _uniform_int(y_seed, [], h - ch + 1)
    x0 = _uniform_int(x_seed, [], w - cw + 1)
    counts = _object_pixel_counts(reference[y0 : y0 + ch, x0 : x0 + cw])[1:]
    foreground = tf.cast(tf.reduce_sum(counts), tf.float32)
    accepted.append(
        tf.logical_or(
            not balanced,
            tf.logical_and(
                foreground >= needed, tf.reduce_any(counts > min_object_pixels)
            ),
        )
    )
    offsets.append(tf.stack([y0, x0]))

  fallback = lambda: best_foreground_window(reference, (ch, cw))
  if offsets:
    accepted = tf.stack(accepted)
    first = lambda: tf.stack(offsets)[tf.argmax(tf.cast(accepted, tf.int32))]
    offset = tf.cond(tf.reduce_any(accepted), first, fallback)
  else:
    offset = fallback()
  y0, x0 = offset[0], offset[1]
  out = {
      **clip,
      'frames': clip['frames'][:, y0 : y0 + ch, x0 : x0 + cw],
      'labels': labels[:, y0 : y0 + ch, x0 : x0 + cw],
  }
  out = tf.cond(
      tf.logical_and(ch == crop_size, cw == crop_size),
      lambda: out,
      lambda: _resize_clip(out, [crop_size, crop_size]),
  )
  num_frames = clip['labels'].shape[0]
  out['frames'] = tf.ensure_shape(
      out['frames'], [num_frames, crop_size, crop_size, 3]
  )
  out['labels'] = tf.ensure_shape(
      out['labels'], [num_frames, crop_size, crop_size]
  )
  return out


def select_objects(
    clip: Clip, seed: tf.Tensor, *, max_objects: int, min_object_pixels: int
) -> Clip:
  """Keeps the reference's sizeable objects, at most `max_objects`, as 1..K.

  Objects with more than `min_object_pixels` pixels in the reference frame
  (frame 0) are candidates; if there are more than `max_objects`, a random
  subset of that size is kept. Kept objects are renumbered 1..K in the order
  of their original ids, consistently in every frame; every other pixel
  (other objects, objects absent from the reference) becomes background.

  Args:
    clip: `labels [T, H, W]` (and anything else, passed through).
    seed: `[2]` stateless seed.
    max_objects: most objects kept.
    min_object_pixels: an object is kept only above this many pixels.

  Returns:
    The clip with relabelled `labels` and `object_valid [max_objects + 1]`
    bool: slot 0 (background) is True, slot k is True iff object k exists.
  """
  counts = _object_pixel_counts(clip['labels'][0])
  candidate = tf.logical_and(counts > min_object_pixels, tf.range(_NUM_IDS) > 0)
  # Random priorities; non-candidates sort last.
  priority = tf.where(candidate, _uniform([_NUM_IDS], seed), 2.0)
  rank = tf.argsort(tf.argsort(priority))
  keep = tf.logical_and(candidate, rank < max_objects)
  new_ids = tf.where(keep, tf.cumsum(tf.cast(keep, tf.int32)), 0)
  labels = tf.gather(
      tf.cast(new_ids, tf.uint8), tf.cast(clip['labels'], tf.int32)
  )
  num_kept = tf.reduce_sum(tf.cast(keep, tf.int32))
  object_valid = tf.range(max_objects + 1) <= num_kept
  return {**clip, 'labels': labels, 'object_valid': object_valid}


def random_flip(clip: Clip, seed: tf.Tensor, *, prob: float) -> Clip:
  """Flips every frame and label map left-right with probability `prob`.

  Args:
    clip: `frames [T, H, W, 3]`, `labels [T, H, W]`.
    seed: `[2]` stateless seed.
    prob: flip probability.

  Returns:
    The clip, flipped or unchanged as a whole.
  """
  flip = _uniform([], seed) < prob
  frames = tf.cond(
      flip, lambda: tf.reverse(clip['frames'], [2]), lambda: clip['frames']
  )
  labels = tf.cond(
      flip, lambda: tf.reverse(clip['labels'], [2]), lambda: clip['labels']
  )
  return {**clip, 'frames': frames, 'labels': labels}
