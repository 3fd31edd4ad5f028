"""The per-frame step of propagation: one pure function over device arrays.

This is the contract below training and inference: `session.Session` (and
through it `evaluate.py`) and `export` run its step, and the training
`lax.scan` body (`train_step`) shares `frame_logits` and `advance`. It
holds the carried state and the pure functions that move it; it imports no
I/O, no TensorFlow and no configs.

* `FrameEmbedding`, `VOSModel`: what a model gives per frame, and the two
  stages (`embed`, `segment`) every model provides; `preprocess_images`:
  uint8 frames to the network's input.
* `PropagationState`: what is carried from frame to frame (references,
  previous frame, and the model's own `memory`). Its size is fixed by
  static shapes, so memory is flat in video length.
* `start` / `advance`: the state after the first frame, and the move to the
  next frame (the previous frame becomes the new one; frames that introduce
  objects also fill the next reference slot); `grow_references` adds slots.
  `start_state` / `advance_state` do the same and move the model's memory
  with it (`VOSModel.start_memory` / `advance_memory`).
* `frame_logits(model, state, emb, obj_valid, out_size)`: one frame's
  logits at a given size (segment, then align-corners bilinear), and what
  the model needs to move its memory.
* `first_frame(params, frame, labels, *, graphdef, spec)` and
  `next_frame(params, states, frame, annotation, has_annotation, obj_valid,
  *, graphdef, spec)`: the whole device side of one frame of the official
  evaluation loop (notes §17) for every test-time augmentation at once:
  uint8 RGB frame at its original size in; on-device resize (OpenCV cubic
  rule), flip, BGR and normalisation; embedding; matching and ensembler;
  logits upsampled to the original size, softmax, the average over
  augmentations, argmax, new-object annotations pasted over the prediction;
  every augmentation's state advanced with the merged labels. Out come the
  new states, `uint8` labels and, only if `spec.with_probs`, the averaged
  probabilities.

Stages run under `jax.named_scope`s (`preprocess`, `embed`, `segment` with
`global_matching` / `local_matching` / `attention` / `ensembler` inside,
`postprocess`, `advance`), which profiles and `bench/gpu_suite.py` use to
time them separately.

Both are pure in `(params, state, frame)`, with the model structure
(`graphdef`, from `nnx.split`) and the shapes (`StepSpec`) static, so the
caller jits them once per (input sizes, object slots, reference slots) with
plain `jax.jit` (no NNX graph traversal per call) and donates the state
(`compile_steps`). Annotations arrive every frame as data (zeros and
`has_annotation=False` on ordinary frames), so a video compiles one step per
object count, not one per annotated frame.
"""

import dataclasses
import functools
from typing import Any, Dict, Optional, Protocol, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from cfbi_jax import preprocessing
from cfbi_jax import resize
from cfbi_jax.datasets import VOID_ID

# The logit of an invalid (padded) object slot.
INVALID_LOGIT = -1e4


@flax.struct.dataclass
class FrameEmbedding:
  """What the network keeps of a frame.

  Attributes:
    low_s4: `[B, h4, w4, C_low]` the stride-4 backbone feature the head
      reads (CFBI: the low-level ResNet feature, the ensembler's shortcut;
      FEELVOS: the DeepLab decoder output).
    scales: per matching scale `[B, h_s, w_s, C_s]` embeddings (CFBI and
      FEELVOS: one at stride 4; CFBI+: strides 4, 8 and 16; VideoMatch:
      one at its matching stride).
  """
  low_s4: jnp.ndarray
  scales: Tuple[jnp.ndarray, ...]


class VOSModel(Protocol):
  """What the per-frame step needs of a model (`models.build` makes one).

  Arrays are NHWC; objects live in `K + 1` slots (slot 0 the background)
  with an `obj_valid` `[B, K + 1]` mask.

  Besides the references and the previous frame, which every model gets,
  a model may carry state of its own from frame to frame, its `memory` (a
  pytree of fixed shapes; `()` for CFBI). Its object axis, where it has
  one, has `memory_slots` >= K + 1 entries, so it keeps its shape when
  later frames bring new objects. `segment` reads it and puts what moving
  it needs in `aux['memory_update']`; `advance_memory` then moves it with
  the frame's final labels (annotations merged, or the labels fed in
  training).
  """

  def embed(self, images: jnp.ndarray,
            dropout_rng: Optional[jax.Array] = None
            ) -> Tuple[FrameEmbedding, Dict[str, jnp.ndarray]]:
    """`[B, H, W, 3]` normalised images -> (their embedding, features)."""

  def segment(self, ref_scales: Sequence[jnp.ndarray],
              ref_labels: jnp.ndarray, ref_valid: jnp.ndarray,
              prev_scales: Sequence[jnp.ndarray], prev_labels: jnp.ndarray,
              current: FrameEmbedding, obj_valid: jnp.ndarray,
              training: bool = False, memory: Any = ()
              ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """One frame against the state's references, previous frame and
    memory -> (`[B, h4, w4, K + 1]` stride-4 logits, named intermediates)."""

  def start_memory(self, emb: FrameEmbedding, labels: jnp.ndarray,
                   memory_slots: int) -> Any:
    """The memory after the first frame (`labels` `[B, H, W]`)."""

  def advance_memory(self, state: 'PropagationState', emb: FrameEmbedding,
                     labels: jnp.ndarray, update: Any,
                     training: bool = False) -> Any:
    """The memory after a frame with final `labels` `[B, H, W]`; `update`
    is the frame's `aux['memory_update']` (None where no frame was
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


def start(emb: FrameEmbedding, labels: jnp.ndarray,
          num_ref_slots: int, memory: Any = ()) -> PropagationState:
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
      [x[:, None], jnp.zeros((x.shape[0], num_ref_slots - 1) + x.shape[1:],
                             x.dtype)], axis=1)
  labels = labels.astype(jnp.int32)
  valid = jnp.zeros((labels.shape[0], num_ref_slots), bool).at[:, 0].set(True)
  return PropagationState(
      ref_scales=tuple(pad(s) for s in emb.scales), ref_labels=pad(labels),
      ref_valid=valid, prev_scales=tuple(emb.scales), prev_labels=labels,
      memory=memory)


def advance(state: PropagationState, emb: FrameEmbedding,
            labels: jnp.ndarray, add_reference: jnp.ndarray,
            memory: Any = None) -> PropagationState:
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
      prev_scales=tuple(emb.scales), prev_labels=labels,
      memory=state.memory if memory is None else memory)


def start_state(model: VOSModel, emb: FrameEmbedding, labels: jnp.ndarray,
                num_ref_slots: int, memory_slots: int) -> PropagationState:
  """`start` with the model's first memory (`memory_slots` object slots)."""
  return start(emb, labels, num_ref_slots,
               model.start_memory(emb, labels.astype(jnp.int32),
                                  memory_slots))


def advance_state(model: VOSModel, state: PropagationState,
                  emb: FrameEmbedding, labels: jnp.ndarray,
                  add_reference: jnp.ndarray, update: Any,
                  training: bool = False) -> PropagationState:
  """`advance` with the model's memory moved too (`update` as returned by
  `frame_logits`, None for a frame that was not segmented)."""
  labels = labels.astype(jnp.int32)
  memory = model.advance_memory(state, emb, labels, update, training)
  return advance(state, emb, labels, add_reference, memory)


def grow_references(state: PropagationState,
                    num_ref_slots: int) -> PropagationState:
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
    raise ValueError(f'cannot shrink {state.ref_valid.shape[1]} reference '
                     f'slots to {num_ref_slots}')
  pad = lambda x: jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
  return state.replace(ref_scales=tuple(pad(x) for x in state.ref_scales),
                       ref_labels=pad(state.ref_labels),
                       ref_valid=pad(state.ref_valid))


def merge_annotation(labels: jnp.ndarray,
                     annotation: jnp.ndarray) -> jnp.ndarray:
  """Pastes an annotation's objects (ids > 0) over predicted labels (notes
  §17); void pixels (255) keep the prediction."""
  objects = (annotation > 0) & (annotation != VOID_ID)
  return jnp.where(objects, annotation.astype(labels.dtype), labels)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The static part of one compiled step (hashable: a `jax.jit` static).

  Attributes:
    input_sizes: per augmentation, the network input `(height, width)`
      (`preprocessing.input_size` of the frame's size and the scale).
    flips: per augmentation, whether the frame is mirrored horizontally.
    bgr: feed the official BGR channel order.
    num_ref_slots: R, reference slots of the carried state.
    with_probs: also return the averaged probabilities.
    memory_slots: object slots of the model's memory (the most objects a
      stream may hold, plus the background).
  """
  input_sizes: Tuple[Tuple[int, int], ...]
  flips: Tuple[bool, ...]
  bgr: bool = True
  num_ref_slots: int = 1
  with_probs: bool = False
  memory_slots: int = 11


def network_input(frame: jnp.ndarray, size: Tuple[int, int], flip: bool,
                  bgr: bool) -> jnp.ndarray:
  """One augmentation's network input from a uint8 frame, on the device.

  Args:
    frame: `[H, W, 3]` uint8 RGB frame at its original size.
    size: network input `(height, width)`.
    flip: mirror horizontally (after resizing, as the official loader).
    bgr: the official channel order.

  Returns:
    `[1, height, width, 3]` float32 normalised image.
  """
  image = preprocessing.resize_cubic_cv2(frame.astype(jnp.float32), size)
  if flip:
    image = image[:, ::-1]
  return preprocess_images(image[None], bgr=bgr)


def _flip_labels(labels: jnp.ndarray, flip: bool) -> jnp.ndarray:
  return labels[..., ::-1] if flip else labels


def frame_logits(model: VOSModel, state: PropagationState,
                 emb: FrameEmbedding, obj_valid: jnp.ndarray,
                 out_size: Tuple[int, int], training: bool = False
                 ) -> Tuple[jnp.ndarray, Any]:
  """One frame's logits at `out_size`: the core that training (its
  `lax.scan` body, `train_step.clip_loss`) and inference (`next_frame`)
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
    `(logits, update)`: `[B, H, W, K + 1]` float32 logits (stride-4 logits
    resized with align-corners bilinear; invalid slots hold
    `INVALID_LOGIT`), and the model's `aux['memory_update']` (None if it
    has none) for `advance_state`.
  """
  with jax.named_scope('segment'):
    logits, aux = model.segment(state.ref_scales, state.ref_labels,
                                state.ref_valid, state.prev_scales,
                                state.prev_labels, emb, obj_valid,
                                training=training, memory=state.memory)
  with jax.named_scope('postprocess'):
    up = resize.resize_bilinear_ac(logits.astype(jnp.float32), out_size)
  return up, aux.get('memory_update')


def first_frame(params: Any, frame: jnp.ndarray, labels: jnp.ndarray, *,
                graphdef: Any, spec: StepSpec
                ) -> Tuple[PropagationState, ...]:
  """The states after the annotated first frame, one per augmentation.

  Args:
    params: the model state (`nnx.split(model)[1]`).
    frame: `[H, W, 3]` uint8 RGB frame.
    labels: `[H, W]` integer annotation (object ids).
    graphdef: the model structure (`nnx.split(model)[0]`, static).
    spec: the static shapes and switches.

  Returns:
    One `PropagationState` (batch 1) per augmentation.
  """
  model = nnx.merge(graphdef, params)
  states = []
  for size, flip in zip(spec.input_sizes, spec.flips):
    emb, _ = model.embed(network_input(frame, size, flip, spec.bgr))
    states.append(start_state(model, emb, _flip_labels(labels, flip)[None],
                              spec.num_ref_slots, spec.memory_slots))
  return tuple(states)


def next_frame(params: Any, states: Tuple[PropagationState, ...],
               frame: jnp.ndarray, annotation: jnp.ndarray,
               has_annotation: jnp.ndarray, obj_valid: jnp.ndarray, *,
               graphdef: Any, spec: StepSpec
               ) -> Tuple[Tuple[PropagationState, ...], Dict[str, jnp.ndarray]]:
  """One propagated frame of the official evaluation loop, every TTA.

  Args:
    params: the model state (`nnx.split(model)[1]`).
    states: per augmentation, the carried `PropagationState` (batch 1).
    frame: `[H, W, 3]` uint8 RGB frame at its original size.
    annotation: `[H, W]` integer labels given for this frame (objects that
      appear here), zeros when there are none.
    has_annotation: scalar bool; True makes the merged frame a reference.
    obj_valid: `[K + 1]` bool, the object slots known before this frame.
    graphdef: the model structure (static).
    spec: the static shapes and switches.

  Returns:
    `(states, outputs)`: the next states, and `{'labels': [H, W] uint8}`
    plus, with `spec.with_probs`, `'probs': [H, W, K + 1]` float32 (the
    average over augmentations; exactly 0 on invalid slots).
  """
  model = nnx.merge(graphdef, params)
  out_size = frame.shape[:2]
  valid = obj_valid[None]
  probs, embs, updates = 0.0, [], []
  for size, flip, state in zip(spec.input_sizes, spec.flips, states):
    with jax.named_scope('preprocess'):
      image = network_input(frame, size, flip, spec.bgr)
    with jax.named_scope('embed'):
      emb, _ = model.embed(image)
    up, update = frame_logits(model, state, emb, valid, out_size)
    updates.append(update)
    with jax.named_scope('postprocess'):
      up = jnp.where(valid[:, None, None, :], up, -jnp.inf)
      p = jax.nn.softmax(up, axis=-1)
      probs = probs + (p[:, :, ::-1] if flip else p)
    embs.append(emb)
  with jax.named_scope('postprocess'):
    probs = probs / len(states)
    labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)     # [1, H, W]
    pasted = jnp.where(has_annotation, annotation[None].astype(jnp.int32), 0)
    labels = merge_annotation(labels, pasted)
  with jax.named_scope('advance'):
    add = jnp.reshape(has_annotation, (1,))
    new_states = tuple(
        advance_state(model, state, emb, _flip_labels(labels, flip), add,
                      update)
        for state, emb, flip, update in zip(states, embs, spec.flips,
                                            updates))
  outputs = {'labels': labels[0].astype(jnp.uint8)}
  if spec.with_probs:
    outputs['probs'] = probs[0]
  return new_states, outputs


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """`first_frame` and `next_frame` jitted for one model structure.

  Attributes:
    first: `(params, frame, labels, spec=...) -> states`.
    next: `(params, states, frame, annotation, has_annotation, obj_valid,
      spec=...) -> (states, outputs)`, with `states` donated.
  """
  first: Any
  next: Any

  def num_compiled(self) -> int:
    """Distinct compiled signatures so far (both functions)."""
    return self.first._cache_size() + self.next._cache_size()  # pylint: disable=protected-access


def compile_steps(graphdef: Any) -> CompiledSteps:
  """Plain `jax.jit` of both steps for `graphdef` (`spec` static; the
  carried states of `next` donated, so their buffers are reused)."""
  return CompiledSteps(
      first=jax.jit(functools.partial(first_frame, graphdef=graphdef),
                    static_argnames=('spec',)),
      next=jax.jit(functools.partial(next_frame, graphdef=graphdef),
                   static_argnames=('spec',), donate_argnames=('states',)))
