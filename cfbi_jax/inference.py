"""Frame-by-frame propagation: the per-frame step and the official eval loop.

The recurrence is an explicit carry, `PropagationState`, through pure jitted
functions:

* `embed_frame(model, image)`: normalise (official BGR quirk) and embed.
* `start(emb, labels, num_ref_slots)`: the state after the first frame.
* `segment_frame(model, state, emb, obj_valid, out_size)`: probabilities
  of one frame at the original size (stride-4 logits resized with
  align-corners bilinear, then softmax over the object slots).
* `advance(state, emb, labels, add_reference)`: the next frame's state; the
  previous frame becomes (emb, labels) and, on frames that introduce
  objects, (emb, labels) fills the next reference slot.
* `propagate_step(model, state, image, obj_valid, out_size, annotation)`:
  the three above for one augmentation, `(state, frame) -> (state,
  outputs)`. Training unrolls the same `segment` / `advance` pieces.

Memory is constant in video length: the state holds a fixed number of
reference slots (first frame plus frames where objects appear) and one
previous frame. `VideoPropagator` runs the official evaluation loop of
`networks/engine/eval_manager.py` (notes §17) over any number of test-time
augmentations (scales x flip): probabilities averaged at the original size,
hard argmax, new-object annotations pasted over the prediction, and every
augmentation's state advanced with that merged label map (flipped for flip
augmentations). Shapes are bucketed (object slots, reference slots) and
compilations are counted.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfbi_jax import model as model_lib
from cfbi_jax import preprocessing
from cfbi_jax import resize


@flax.struct.dataclass
class PropagationState:
  """What is carried from frame to frame (batch B, R reference slots).

  Attributes:
    ref_scales: per scale `[B, R, h_s, w_s, C_s]` reference embeddings.
    ref_labels: `[B, R, H, W]` int32 reference labels (mask resolution).
    ref_valid: `[B, R]` bool, filled reference slots.
    prev_scales: per scale `[B, h_s, w_s, C_s]` previous-frame embeddings.
    prev_labels: `[B, H, W]` int32 previous-frame (hard) labels.
  """
  ref_scales: Tuple[jnp.ndarray, ...]
  ref_labels: jnp.ndarray
  ref_valid: jnp.ndarray
  prev_scales: Tuple[jnp.ndarray, ...]
  prev_labels: jnp.ndarray


def start(emb: model_lib.FrameEmbedding, labels: jnp.ndarray,
          num_ref_slots: int) -> PropagationState:
  """The state after the first (annotated) frame.

  Args:
    emb: embedding of the first frame (batch B).
    labels: `[B, H, W]` its annotation.
    num_ref_slots: R, the number of reference slots (>= 1).

  Returns:
    A state whose reference slot 0 and previous frame are that frame.
  """
  pad = lambda x: jnp.concatenate(
      [x[:, None], jnp.zeros((x.shape[0], num_ref_slots - 1) + x.shape[1:],
                             x.dtype)], axis=1)
  labels = labels.astype(jnp.int32)
  valid = jnp.zeros((labels.shape[0], num_ref_slots), bool).at[:, 0].set(True)
  return PropagationState(
      ref_scales=tuple(pad(s) for s in emb.scales), ref_labels=pad(labels),
      ref_valid=valid, prev_scales=tuple(emb.scales), prev_labels=labels)


def advance(state: PropagationState, emb: model_lib.FrameEmbedding,
            labels: jnp.ndarray, add_reference: jnp.ndarray
            ) -> PropagationState:
  """Moves the state to the next frame.

  Args:
    state: the current state.
    emb: the frame just segmented.
    labels: `[B, H, W]` its final labels (prediction merged with any
      annotation).
    add_reference: `[B]` bool; where True, (emb, labels) also fills the next
      free reference slot (a frame that introduced objects). Does nothing
      when every slot is used (callers size the slots in advance).

  Returns:
    The next state.
  """
  labels = labels.astype(jnp.int32)
  num_slots = state.ref_valid.shape[1]
  next_slot = jnp.sum(state.ref_valid, axis=1)                   # [B]
  write = (jnp.arange(num_slots)[None] == next_slot[:, None]) \
      & add_reference[:, None]                                     # [B, R]

  def put(old, new):
    w = write.reshape(write.shape + (1,) * (old.ndim - 2))
    return jnp.where(w, new[:, None].astype(old.dtype), old)

  return PropagationState(
      ref_scales=tuple(put(o, n) for o, n in zip(state.ref_scales,
                                                  emb.scales)),
      ref_labels=put(state.ref_labels, labels),
      ref_valid=state.ref_valid | write,
      prev_scales=tuple(emb.scales), prev_labels=labels)


def embed_frame(model: model_lib.CFBI, image: jnp.ndarray,
                bgr: bool = True) -> model_lib.FrameEmbedding:
  """Embeds `[B, h, w, 3]` RGB frames (uint8 or float in [0, 255])."""
  return model.embed(model_lib.preprocess_images(image, bgr=bgr))[0]


def segment_frame(model: model_lib.CFBI, state: PropagationState,
                  emb: model_lib.FrameEmbedding, obj_valid: jnp.ndarray,
                  out_size: Tuple[int, int]
                  ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Probabilities of one frame at `out_size`.

  Args:
    model: the network.
    state: references and previous frame.
    emb: the frame's embedding.
    obj_valid: `[B, K+1]` bool.
    out_size: `(H, W)` of the probabilities (the original frame size).

  Returns:
    `(probs, logits_s4)`: `[B, H, W, K+1]` softmax probabilities (exactly 0
    on invalid slots) and `[B, h4, w4, K+1]` stride-4 logits.
  """
  logits, _ = model.segment(state.ref_scales, state.ref_labels,
                            state.ref_valid, state.prev_scales,
                            state.prev_labels, emb, obj_valid)
  up = resize.resize_bilinear_ac(logits, out_size)
  up = jnp.where(obj_valid[:, None, None, :], up, -jnp.inf)
  return jax.nn.softmax(up, axis=-1), logits


def merge_annotation(labels: jnp.ndarray,
                     annotation: Optional[jnp.ndarray]) -> jnp.ndarray:
  """Pastes an annotation's objects over predicted labels (notes §17)."""
  if annotation is None:
    return labels
  return jnp.where(annotation > 0, annotation.astype(labels.dtype), labels)


def propagate_step(model: model_lib.CFBI, state: PropagationState,
                   image: jnp.ndarray, obj_valid: jnp.ndarray,
                   out_size: Tuple[int, int],
                   annotation: Optional[jnp.ndarray] = None,
                   bgr: bool = True
                   ) -> Tuple[PropagationState, Dict[str, jnp.ndarray]]:
  """One frame, one augmentation: `(state, frame) -> (state, outputs)`.

  Args:
    model: the network.
    state: the carry.
    image: `[B, h, w, 3]` RGB frame at network input size.
    obj_valid: `[B, K+1]` objects known before this frame.
    out_size: original frame size for the outputs.
    annotation: optional `[B, H, W]` labels given for this frame (new
      objects); they override the prediction and make the frame a reference.
    bgr: the official channel order.

  Returns:
    `(next_state, {'probs', 'labels', 'logits_s4'})`.
  """
  emb = embed_frame(model, image, bgr)
  probs, logits = segment_frame(model, state, emb, obj_valid, out_size)
  labels = merge_annotation(jnp.argmax(probs, axis=-1), annotation)
  add = jnp.full((image.shape[0],), annotation is not None)
  return advance(state, emb, labels, add), {
      'probs': probs, 'labels': labels, 'logits_s4': logits}


# ------------------------------------------------------------- eval loop
@dataclasses.dataclass(frozen=True)
class Augmentation:
  """One test-time augmentation: a scale and an optional horizontal flip."""
  scale: float
  flip: bool


def augmentations(scales: Sequence[float], flip: bool) -> List[Augmentation]:
  """The official order: [s1, flip(s1), s2, flip(s2), ...]."""
  out = []
  for s in scales:
    out.append(Augmentation(float(s), False))
    if flip:
      out.append(Augmentation(float(s), True))
  return out


def bucket(n: int, minimum: int = 1) -> int:
  """Rounds up to a power of two (bounds the number of compiled shapes)."""
  n = max(n, minimum)
  return 1 << (n - 1).bit_length()


@nnx.jit(static_argnames=('bgr',))
def _embed_jit(model, image, bgr):
  return embed_frame(model, image, bgr)


@nnx.jit(static_argnames=('out_size',))
def _segment_jit(model, state, emb, obj_valid, out_size):
  return segment_frame(model, state, emb, obj_valid, out_size)[0]


_start_jit = jax.jit(start, static_argnames=('num_ref_slots',))
_advance_jit = jax.jit(advance)


class VideoPropagator:
  """Runs the official evaluation loop over one video at a time.

  Attributes:
    compiled: the distinct shape signatures compiled so far (the run summary
      reports their number).
  """

  def __init__(self, model: model_lib.CFBI, *, scales: Sequence[float] = (1.0,),
               flip: bool = False, max_long_edge: Optional[float] = None,
               bgr: bool = True, max_objects: int = 10):
    self.model = model
    self.augs = augmentations(scales, flip)
    if max_long_edge is None:  # The official rule (tools/eval_net.py).
      max_long_edge = 1040 if list(scales) == [1.0] else 800
    self.max_long_edge = max_long_edge
    self.bgr = bgr
    self.max_objects = max_objects
    self.compiled = set()

  def _note(self, *signature):
    self.compiled.add(signature)

  def _inputs(self, frame: np.ndarray) -> List[jnp.ndarray]:
    h, w = frame.shape[:2]
    out = []
    for aug in self.augs:
      size = preprocessing.input_size(h, w, aug.scale, self.max_long_edge)
      image = preprocessing.resize_cubic_cv2(frame.astype(np.float32), size)
      if aug.flip:
        image = image[:, ::-1]
      out.append(jnp.asarray(np.ascontiguousarray(image))[None])
    return out

  def _labels_per_aug(self, labels: jnp.ndarray) -> List[jnp.ndarray]:
    return [labels[:, :, ::-1] if aug.flip else labels for aug in self.augs]

  def run(self, frames, annotations: Dict[int, np.ndarray],
          num_frames: int):
    """Segments a video.

    Args:
      frames: iterable of `[H, W, 3]` uint8 RGB frames, in order.
      annotations: frame index -> `[H, W]` uint8 labels for annotated frames
        (index 0 must be there).
      num_frames: number of frames (for sizing).

    Yields:
      `(index, labels [H, W] uint8, probs [H, W, K+1] float32 or None)` per
      frame; frame 0 yields its annotation and no probabilities.
    """
    if 0 not in annotations:
      raise ValueError('the first frame must be annotated')
    ref_slots = bucket(len(annotations))
    states, known = None, 0
    for t, frame in enumerate(frames):
      if t >= num_frames:
        break
      h, w = frame.shape[:2]
      images = self._inputs(frame)
      embs = []
      for aug, image in zip(self.augs, images):
        self._note('embed', image.shape)
        embs.append(_embed_jit(self.model, image, self.bgr))
      annotation = annotations.get(t)
      if t == 0:
        labels = jnp.asarray(annotation, jnp.int32)[None]
        states = [_start_jit(e, l, ref_slots) for e, l in
                  zip(embs, self._labels_per_aug(labels))]
        known = int(annotation.max())
        yield t, np.asarray(annotation, np.uint8), None
        continue
      if known > self.max_objects:
        raise ValueError(f'object id {known} exceeds max_objects '
                         f'{self.max_objects}')
      num_slots = min(bucket(known + 1, 2), self.max_objects + 1)
      obj_valid = jnp.asarray(np.arange(num_slots) <= known)[None]
      probs = 0.0
      for aug, state, emb in zip(self.augs, states, embs):
        self._note('segment', emb.scales[0].shape, num_slots, ref_slots,
                   (h, w))
        p = _segment_jit(self.model, state, emb, obj_valid, (h, w))
        probs = probs + (p[:, :, ::-1] if aug.flip else p)
      probs = probs / len(self.augs)
      labels = jnp.argmax(probs, axis=-1)
      if annotation is not None:
        labels = merge_annotation(labels, jnp.asarray(annotation)[None])
      add = jnp.asarray([annotation is not None])
      states = [_advance_jit(s, e, l, add) for s, e, l in
                zip(states, embs, self._labels_per_aug(labels))]
      yield t, np.asarray(labels[0], np.uint8), np.asarray(
          probs[0, ..., :known + 1])
      if annotation is not None:
        known = max(known, int(annotation.max()))
