"""The inference device step: one frame of the official evaluation loop.

`Session`, the evaluation loop over videos (`videos.VideoPropagator`) and
`export` all run the step made here, on a model split by
`split_for_inference` (frozen BatchNorms folded into their convolutions):

* `make_spec(frame_size, ...)`: the static settings of the step for frames
  of one size: the network input size of every test-time augmentation
  (`input_size`: the official loader's sizing, notes §3; `augmentations`:
  scales x flip in the official order), the input channel order, the
  reference and memory slots;
* `first_frame(params, frame, labels, *, graphdef, spec)` and
  `next_frame(params, states, frame, annotation, has_annotation, obj_valid,
  *, graphdef, spec)`: the whole device side of one frame of the official
  evaluation loop (notes §17) for every test-time augmentation at once:
  uint8 RGB frame at its original size in; on-device resize (OpenCV cubic
  rule, `resize.resize_cubic_cv2`), flip, BGR and normalisation;
  embedding; the model's segmentation (`vos.frame_segmentation`); logits
  upsampled to the original size, softmax, the average over
  augmentations, argmax, new-object annotations pasted over the
  prediction; every augmentation's state advanced with the merged labels.
  Out come the new states, `uint8` labels and, only if `spec.with_probs`,
  the averaged probabilities;
* `compile_steps(graphdef)`: both jitted once for a model structure.

Both steps are pure in `(params, state, frame)`, with the model structure
(`graphdef`, from `nnx.split`) and the shapes (`StepSpec`) static, so the
caller jits them once per (input sizes, object slots, reference slots) with
plain `jax.jit` (no NNX graph traversal per call) and donates the state.
Annotations arrive every frame as data (zeros and `has_annotation=False` on
ordinary frames), so a video compiles one step per object count, not one
per annotated frame. Stages run under `jax.named_scope`s (`preprocess`,
`embed`, `segment`, `postprocess`, `advance`).
"""

import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfbi_jax import layers
from cfbi_jax import masks
from cfbi_jax import resize
from cfbi_jax import vos
from cfbi_jax.vos import PropagationState


def input_size(
    height: int, width: int, scale: float = 1.0, max_long_edge: float = 1040
) -> Tuple[int, int]:
  """The network input size the official loader gives a frame.

  Args:
    height, width: original frame size.
    scale: test scale (1.0 single-scale; 1.15/1.3/1.5 in multi-scale).
    max_long_edge: long-edge cap before scaling.

  Returns:
    `(new_height, new_width)`, both of the form 16k + 1.
  """
  long_edge = max(height, width)
  base = max_long_edge / long_edge if long_edge > max_long_edge else 1.0
  out = []
  for side in (height, width):
    new = int(side * base * scale)
    if (new - 1) % 16 != 0:
      new = int(np.around((new - 1) / 16.0)) * 16 + 1
    out.append(new)
  return out[0], out[1]


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """One test-time augmentation: a scale and an optional horizontal flip."""

  scale: float
  flip: bool


def augmentations(
    scales: Sequence[float], flip: bool
) -> Tuple[Augmentation, ...]:
  """The official order: [s1, flip(s1), s2, flip(s2), ...]."""
  out = []
  for s in scales:
    out.append(Augmentation(float(s), False))
    if flip:
      out.append(Augmentation(float(s), True))
  return tuple(out)


def object_valid(
    num_objects: int, max_objects: int = masks.MAX_OBJECTS
) -> np.ndarray:
  """The `obj_valid` mask of a frame with objects 1..K known before it.

  The official number of slots, K + 1 (background included; at least 2):
  no slot is computed for nothing. A stream compiles one step per object
  count it meets (the persistent compilation cache keeps them across
  runs); rounding up to buckets would save compilations but run up to
  twice the ensembler on every frame.

  Returns:
    `[max(K + 1, 2)]` bool, True for slots 0..K.
  """
  num_slots = max(min(num_objects, max_objects) + 1, 2)
  return np.arange(num_slots) <= num_objects


def split_for_inference(model: nnx.Module) -> Tuple[Any, Any]:
  """`nnx.split` of a copy of `model` made for inference.

  The copy has its frozen BatchNorms folded into their convolutions
  (`layers.fold_frozen_batchnorm`); `model` itself is not changed. Every
  inference entry (`Session`, `videos.VideoPropagator`, `export`) runs
  the step on this.

  Returns:
    `(graphdef, params)`.
  """
  model = nnx.clone(model)
  layers.fold_frozen_batchnorm(model)
  return nnx.split(model)


def make_spec(
    frame_size: Tuple[int, int],
    *,
    augs: Sequence[Augmentation] = (Augmentation(1.0, False),),
    max_long_edge: Optional[float] = None,
    bgr: bool = True,
    num_ref_slots: int = 1,
    with_probs: bool = False,
    max_objects: int = masks.MAX_OBJECTS,
) -> 'StepSpec':
  """The static step settings for frames of `frame_size` `(H, W)`.

  Args:
    frame_size: the frames' original `(height, width)`.
    augs: the test-time augmentations (`augmentations`).
    max_long_edge: the long-edge cap before scaling; None for the official
      rule (1040 single-scale, 800 with several scales;
      `tools/eval_net.py`).
    bgr: the model's input channel order (`config.model.bgr`).
    num_ref_slots: reference slots of the carried state.
    with_probs: also return the averaged probabilities.
    max_objects: the largest object id a stream may hold (the model's
      memory has one more slot).

  Returns:
    The `StepSpec`.
  """
  if max_long_edge is None:
    max_long_edge = 1040 if {a.scale for a in augs} == {1.0} else 800
  sizes = tuple(
      input_size(*frame_size, aug.scale, max_long_edge) for aug in augs
  )
  return StepSpec(
      input_sizes=sizes,
      flips=tuple(a.flip for a in augs),
      bgr=bgr,
      num_ref_slots=num_ref_slots,
      with_probs=with_probs,
      memory_slots=max_objects + 1,
  )


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The static part of one compiled step (hashable: a `jax.jit` static).

  Attributes:
    input_sizes: per augmentation, the network input `(height, width)`
      (`input_size` of the frame's size and the scale).
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
  memory_slots: int = masks.MAX_OBJECTS + 1


def network_input(
    frame: jnp.ndarray, size: Tuple[int, int], flip: bool, bgr: bool
) -> jnp.ndarray:
  """One augmentation's network input from a uint8 frame, on the device.

  Args:
    frame: `[H, W, 3]` uint8 RGB frame at its original size.
    size: network input `(height, width)`.
    flip: mirror horizontally (after resizing, as the official loader).
    bgr: the official channel order.

  Returns:
    `[1, height, width, 3]` float32 normalised image.
  """
  image = resize.resize_cubic_cv2(frame.astype(jnp.float32), size)
  if flip:
    image = image[:, ::-1]
  return vos.preprocess_images(image[None], bgr=bgr)


def _flip_labels(labels: jnp.ndarray, flip: bool) -> jnp.ndarray:
  return labels[..., ::-1] if flip else labels


def first_frame(
    params: Any,
    frame: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    graphdef: Any,
    spec: StepSpec,
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
    states.append(
        vos.start_state(
            model,
            emb,
            _flip_labels(labels, flip)[None],
            spec.num_ref_slots,
            spec.memory_slots,
        )
    )
  return tuple(states)


def next_frame(
    params: Any,
    states: Tuple[PropagationState, ...],
    frame: jnp.ndarray,
    annotation: jnp.ndarray,
    has_annotation: jnp.ndarray,
    obj_valid: jnp.ndarray,
    *,
    graphdef: Any,
    spec: StepSpec,
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
    out = vos.frame_segmentation(model, state, emb, valid, out_size)
    up = out.logits
    updates.append(out.memory_update)
    with jax.named_scope('postprocess'):
      up = jnp.where(valid[:, None, None, :], up, -jnp.inf)
      p = jax.nn.softmax(up, axis=-1)
      probs = probs + (p[:, :, ::-1] if flip else p)
    embs.append(emb)
  with jax.named_scope('postprocess'):
    probs = probs / len(states)
    labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)  # [1, H, W]
    pasted = jnp.where(has_annotation, annotation[None].astype(jnp.int32), 0)
    labels = vos.merge_annotation(labels, pasted)
  with jax.named_scope('advance'):
    add = jnp.reshape(has_annotation, (1,))
    new_states = tuple(
        vos.advance_state(
            model, state, emb, _flip_labels(labels, flip), add, update
        )
        for state, emb, flip, update in zip(states, embs, spec.flips, updates)
    )
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
      first=jax.jit(
          functools.partial(first_frame, graphdef=graphdef),
          static_argnames=('spec',),
      ),
      next=jax.jit(
          functools.partial(next_frame, graphdef=graphdef),
          static_argnames=('spec',),
          donate_argnames=('states',),
      ),
  )
