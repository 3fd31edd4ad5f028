"""The per-frame contract every model family follows, and the carried state.

This is the layer below training and inference: the training `lax.scan`
body (`train_step`) and the inference device step (`inference/step.py`,
which `Session`, the evaluation loop and `export` run) are both made of
these pieces. It imports no I/O, no TensorFlow, no configs and no model
(`import cfbi_jax.vos` loads jax, flax and NumPy only; a test checks it).

* `FrameEmbedding`, `VOSModel`, `Segmentation`: what a model gives per
  frame, the stages every model provides (`embed`, `segment`,
  `start_memory`, `advance_memory`), and what `segment` returns;
  `preprocess_images`: uint8 frames to the network's input.
* `PropagationState`: what is carried from frame to frame (references,
  previous frame, and the model's own `memory`). Its size is fixed by
  static shapes, so memory is flat in video length.
* `start` / `advance`: the state after the first frame, and the move to the
  next frame (the previous frame becomes the new one; frames that introduce
  objects also fill the next reference slot); `grow_references` adds slots.
  `start_state` / `advance_state` do the same and move the model's memory
  with it.
* `frame_segmentation(model, state, emb, obj_valid, out_size)`: one
  frame's `Segmentation` with its logits at a given size (segment, then
  align-corners bilinear) and what the model needs to move its memory;
  `frame_loss` the training loss of a frame.
* `merge_annotation`: new objects' annotations pasted over a prediction.

Arrays are NHWC; objects live in `K + 1` slots (slot 0 the background)
with an `obj_valid` `[B, K + 1]` mask, never a Python loop over objects.
Stages run under `jax.named_scope`s (`segment` with `global_matching` /
`local_matching` / `attention` / `ensembler` inside, `postprocess`), which
profiles and `bench/gpu_suite.py` use to time them separately.
"""

from typing import Any, Dict, Optional, Protocol, Tuple

import flax.struct
import jax
import jax.numpy as jnp

from cfbi_jax import losses
from cfbi_jax import masks
from cfbi_jax import resize

# The logit of an invalid (padded) object slot.
INVALID_LOGIT = -1e4


@flax.struct.dataclass
class FrameEmbedding:
  """What the network keeps of a frame.

  Attributes:
    features_s4: `[B, h4, w4, C]` the stride-4 backbone features the head
      reads (CFBI: the low-level ResNet feature `low_s4`, the ensembler's
      shortcut; FEELVOS and VideoMatch: the DeepLab decoder output).
    scales: per matching scale `[B, h_s, w_s, C_s]` embeddings (CFBI and
      FEELVOS: one at stride 4; CFBI+: strides 4, 8 and 16; VideoMatch:
      one at its matching stride).
  """

  features_s4: jnp.ndarray
  scales: Tuple[jnp.ndarray, ...]


@flax.struct.dataclass
class Segmentation:
  """What `VOSModel.segment` returns for one frame.

  Attributes:
    logits: `[B, h, w, K + 1]` logits at the model's output grid (stride 4
      for CFBI, CFBI+ and FEELVOS; VideoMatch's matching stride);
      invalid slots hold `INVALID_LOGIT`.
    memory_update: what `advance_memory` needs to move the model's memory
      with this frame (None for a model without memory).
    aux: named intermediates for inspection and tests (`global_fg_s4`,
      `attention_s4`, ...); nothing downstream reads them.
    object_logits: None, or `[B, h, w, K + 1]` per-object logits z_k of a
      model that scores each object against its own background
      (VideoMatch: p_k = sigmoid(z_k)); training then takes
      `losses.object_binary_cross_entropy` of these instead of the
      cross-entropy of `logits` (`frame_loss`).
  """

  logits: jnp.ndarray
  memory_update: Any = None
  aux: Dict[str, Any] = flax.struct.field(default_factory=dict)
  object_logits: Optional[jnp.ndarray] = None


class VOSModel(Protocol):
  """What the per-frame step needs of a model (`models.build` makes one).

  Besides the references and the previous frame, which every model gets,
  a model may carry state of its own from frame to frame, its `memory` (a
  pytree of fixed shapes; `()` for CFBI). Its object axis, where it has
  one, has `memory_slots` >= K + 1 entries, so it keeps its shape when
  later frames bring new objects. `segment` reads it and returns what
  moving it needs (`Segmentation.memory_update`); `advance_memory` then
  moves it with the frame's final labels (annotations merged, or the
  labels fed in training).
  """

  def embed(
      self, images: jnp.ndarray, dropout_rng: Optional[jax.Array] = None
  ) -> Tuple[FrameEmbedding, Dict[str, jnp.ndarray]]:
    """`[B, H, W, 3]` normalised images -> (their embedding, features)."""

  def segment(
      self,
      state: 'PropagationState',
      current: FrameEmbedding,
      obj_valid: jnp.ndarray,
      training: bool = False,
  ) -> Segmentation:
    """One frame against the state's references, previous frame and
    memory (`obj_valid` `[B, K + 1]`)."""

  def start_memory(
      self, emb: FrameEmbedding, labels: jnp.ndarray, memory_slots: int
  ) -> Any:
    """The memory after the first frame (`labels` `[B, H, W]`)."""

  def advance_memory(
      self,
      state: 'PropagationState',
      emb: FrameEmbedding,
      labels: jnp.ndarray,
      update: Any,
      training: bool = False,
  ) -> Any:
    """The memory after a frame with final `labels` `[B, H, W]`; `update`
    is the frame's `Segmentation.memory_update` (None where no frame was
    segmented: the training clip's ground-truth previous frame)."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_images(frames: jnp.ndarray, bgr: bool = True) -> jnp.ndarray:
  """uint8 RGB frames -> the network's normalised input.

  The official loaders read BGR with OpenCV and apply the RGB-ordered
  ImageNet constants to the B, G, R channels in that order (notes §3); with
  `bgr=True` (official) the channels are reversed before the same
  normalisation. `bgr=False` feeds RGB (a documented deviation switch).

  Args:
    frames: `[..., H, W, 3]` uint8 or float RGB values in [0, 255].
    bgr: reproduce the official channel order.

  Returns:
    `[..., H, W, 3]` float32.
  """
  x = frames.astype(jnp.float32)
  if bgr:
    x = x[..., ::-1]
  x = x / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


@flax.struct.dataclass
class PropagationState:
  """What is carried from frame to frame (batch B, R reference slots).

  Attributes:
    ref_scales: per scale `[B, R, h_s, w_s, C_s]` reference embeddings.
    ref_labels: `[B, R, H, W]` int32 reference labels (mask resolution).
    ref_valid: `[B, R]` bool, filled reference slots.
    prev_scales: per scale `[B, h_s, w_s, C_s]` previous-frame embeddings.
    prev_labels: `[B, H, W]` int32 previous-frame (hard) labels.
    memory: the model's own carried state (`VOSModel`), `()` if none.
  """

  ref_scales: Tuple[jnp.ndarray, ...]
  ref_labels: jnp.ndarray
  ref_valid: jnp.ndarray
  prev_scales: Tuple[jnp.ndarray, ...]
  prev_labels: jnp.ndarray
  memory: Any = ()


def start(
    emb: FrameEmbedding,
    labels: jnp.ndarray,
    num_ref_slots: int,
    memory: Any = (),
) -> PropagationState:
  """The state after the first (annotated) frame.

  Args:
    emb: embedding of the first frame (batch B).
    labels: `[B, H, W]` its annotation.
    num_ref_slots: R, the number of reference slots (>= 1).
    memory: the model's memory after that frame (`start_state` makes it).

  Returns:
    A state whose reference slot 0 and previous frame are that frame.
  """
  pad = lambda x: jnp.concatenate(
      [
          x[:, None],
          jnp.zeros((x.shape[0], num_ref_slots - 1) + x.shape[1:], x.dtype),
      ],
      axis=1,
  )
  labels = labels.astype(jnp.int32)
  valid = jnp.zeros((labels.shape[0], num_ref_slots), bool).at[:, 0].set(True)
  return PropagationState(
      ref_scales=tuple(pad(s) for s in emb.scales),
      ref_labels=pad(labels),
      ref_valid=valid,
      prev_scales=tuple(emb.scales),
      prev_labels=labels,
      memory=memory,
  )


def advance(
    state: PropagationState,
    emb: FrameEmbedding,
    labels: jnp.ndarray,
    add_reference: jnp.ndarray,
    memory: Any = None,
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
    memory: the model's memory after this frame (`advance_state` makes
      it); None keeps the state's.

  Returns:
    The next state.
  """
  labels = labels.astype(jnp.int32)
  num_slots = state.ref_valid.shape[1]
  next_slot = jnp.sum(state.ref_valid, axis=1)  # [B]
  write = (jnp.arange(num_slots)[None] == next_slot[:, None]) & add_reference[
      :, None
  ]  # [B, R]

  def put(old, new):
    w = write.reshape(write.shape + (1,) * (old.ndim - 2))
    return jnp.where(w, new[:, None].astype(old.dtype), old)

  return PropagationState(
      ref_scales=tuple(put(o, n) for o, n in zip(state.ref_scales, emb.scales)),
      ref_labels=put(state.ref_labels, labels),
      ref_valid=state.ref_valid | write,
      prev_scales=tuple(emb.scales),
      prev_labels=labels,
      memory=state.memory if memory is None else memory,
  )


def start_state(
    model: VOSModel,
    emb: FrameEmbedding,
    labels: jnp.ndarray,
    num_ref_slots: int,
    memory_slots: int,
) -> PropagationState:
  """`start` with the model's first memory (`memory_slots` object slots)."""
  return start(
      emb,
      labels,
      num_ref_slots,
      model.start_memory(emb, labels.astype(jnp.int32), memory_slots),
  )


def advance_state(
    model: VOSModel,
    state: PropagationState,
    emb: FrameEmbedding,
    labels: jnp.ndarray,
    add_reference: jnp.ndarray,
    update: Any,
    training: bool = False,
) -> PropagationState:
  """`advance` with the model's memory moved too (`update`: the
  `memory_update` of `frame_segmentation`, None for a frame that was not
  segmented)."""
  labels = labels.astype(jnp.int32)
  memory = model.advance_memory(state, emb, labels, update, training)
  return advance(state, emb, labels, add_reference, memory)


def grow_references(
    state: PropagationState, num_ref_slots: int
) -> PropagationState:
  """The same state with `num_ref_slots` reference slots (more, unused).

  Unused slots are ignored by matching and attention (`ref_valid`), so the
  outputs do not change; a stream that meets more annotated frames than it
  has slots grows its state with this.

  Args:
    state: a state with R <= `num_ref_slots` slots.
    num_ref_slots: the new slot count.

  Returns:
    The state, reference arrays zero-padded along the slot axis.
  """
  extra = num_ref_slots - state.ref_valid.shape[1]
  if extra < 0:
    raise ValueError(
        f'cannot shrink {state.ref_valid.shape[1]} reference '
        f'slots to {num_ref_slots}'
    )
  pad = lambda x: jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
  return state.replace(
      ref_scales=tuple(pad(x) for x in state.ref_scales),
      ref_labels=pad(state.ref_labels),
      ref_valid=pad(state.ref_valid),
  )


def merge_annotation(
    labels: jnp.ndarray, annotation: jnp.ndarray
) -> jnp.ndarray:
  """Pastes an annotation's objects (ids > 0) over predicted labels (notes
  §17); void pixels (255) keep the prediction."""
  objects = (annotation > 0) & (annotation != masks.VOID_ID)
  return jnp.where(objects, annotation.astype(labels.dtype), labels)


def frame_segmentation(
    model: VOSModel,
    state: PropagationState,
    emb: FrameEmbedding,
    obj_valid: jnp.ndarray,
    out_size: Tuple[int, int],
    training: bool = False,
) -> Segmentation:
  """One frame's `Segmentation` with its logits (and object logits) at
  `out_size`: the core that training (its `lax.scan` body,
  `train_step.clip_loss`) and inference (`inference.step.next_frame`)
  share.

  Args:
    model: the network.
    state: the carried state (batch B).
    emb: the frame's embedding.
    obj_valid: `[B, K + 1]` bool object slots.
    out_size: `(H, W)` of the logits (the frame's original size in
      inference, the crop in training).
    training: the model's training path (`model.segment`).

  Returns:
    The model's `Segmentation` with `[B, H, W, K + 1]` float32 `logits`
    (stride-4 logits resized with align-corners bilinear; invalid slots
    hold `INVALID_LOGIT`) and `object_logits` (where the model gives them)
    resized the same way.
  """
  with jax.named_scope('segment'):
    out = model.segment(state, emb, obj_valid, training=training)
  with jax.named_scope('postprocess'):
    up = lambda x: resize.resize_bilinear_ac(x.astype(jnp.float32), out_size)
    return out.replace(
        logits=up(out.logits),
        object_logits=None
        if out.object_logits is None
        else up(out.object_logits),
    )


def frame_loss(
    out: Segmentation,
    labels: jnp.ndarray,
    obj_valid: jnp.ndarray,
    num_hard: jnp.ndarray,
) -> jnp.ndarray:
  """One frame's training loss, `[B]`: the mean of the `num_hard` hardest
  pixels of the model's per-pixel loss, the cross-entropy of the logits
  (CFBI, CFBI+, FEELVOS) or, where the model gives `object_logits`, their
  per-object foreground/background cross-entropy (VideoMatch).

  Args:
    out: `frame_segmentation`'s output at the label size.
    labels: `[B, H, W]` integer labels.
    obj_valid: `[B, K + 1]` bool.
    num_hard: scalar k of the bootstrapping schedule.
  """
  if out.object_logits is None:
    return losses.bootstrapped_cross_entropy(out.logits, labels, num_hard)
  return losses.bootstrapped_mean(
      losses.object_binary_cross_entropy(out.object_logits, labels, obj_valid),
      num_hard,
  )
