"""Frame-by-frame segmentation of a stream: a camera, a long video, late
objects.

    from cfbi_jax import Session
    session = Session('models/tiny_cfbi_synthetic')
    for frame, mask in stream:          # HxWx3 uint8 RGB; None or HxW ids
      labels = session.push(frame, mask)  # HxW uint8 labels

A `Session` holds one stream's carried state on the device and feeds each
frame to the pure per-frame step (`step.next_frame`), so its memory
is flat in the number of frames. The first frame needs a mask; a mask given
later adds the objects it holds from that frame on (YouTube-VOS style), and
that frame becomes a reference. Test-time augmentation (scales x flip) is
inside the session, as in the official loop. `videos.VideoPropagator`,
which `evaluate.py` runs, is a loop over sessions, so at the same settings a
session's labels are what `evaluate.py` writes.

`push` returns labels on the host (it waits for the device); `push_async`
returns at once with a `Pending` frame whose `labels()` / `probs()` wait,
so a caller can dispatch frame t + 1 before reading frame t.
"""

import dataclasses
from typing import Any, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from flax import nnx

from cfbi_jax import masks
from cfbi_jax import vos
from cfbi_jax.inference import step as step_lib


def bucket(n: int) -> int:
  """Rounds up to a power of two, at least 1 (bounds the number of
  compiled shapes)."""
  return 1 << (max(n, 1) - 1).bit_length()


def check_mask(
    mask: np.ndarray, frame_size: Tuple[int, int], index: int, max_objects: int
) -> np.ndarray:
  """Frame `index`'s mask as a stream takes it: its size checked, a 0/255
  binary mask as object 1 (`masks.with_binary_object`), ids up to
  `max_objects` (`LanePool` checks its masks with this too)."""
  mask = np.asarray(mask)
  if mask.shape != tuple(frame_size):
    raise ValueError(
        f'mask of frame {index} is {mask.shape}, the frame is '
        f'{tuple(frame_size)}'
    )
  mask = masks.with_binary_object(mask)
  masks.ids_above(mask, max_objects, f'mask of frame {index}')
  return mask


@dataclasses.dataclass
class Pending:
  """One dispatched frame; its outputs are fetched on first use.

  Attributes:
    index: the frame's index in the stream.
    known: K, the objects known before this frame (its probabilities cover
      slots 0..K).
  """

  index: int
  known: int
  _outputs: Any

  def labels(self) -> np.ndarray:
    """`[H, W]` uint8 labels (waits for the device)."""
    if isinstance(self._outputs, np.ndarray):
      return self._outputs
    return np.asarray(self._outputs['labels'])

  def probs(self) -> Optional[np.ndarray]:
    """`[H, W, K + 1]` float32 probabilities, or None (first frame, or not
    asked for)."""
    if isinstance(self._outputs, np.ndarray) or 'probs' not in self._outputs:
      return None
    return np.asarray(self._outputs['probs'])[..., : self.known + 1]


class Session:
  """Segments one stream of frames, one `push` at a time.

  Args:
    model: a model directory (written by `python -m cfbi_jax.convert` or
      `train.py`), or an NNX model.
    scales: test scales (1.0 is the official single-scale setting).
    flip: add horizontally flipped copies of every scale.
    max_long_edge: the long-edge cap before scaling; None for the official
      rule (1040 single-scale, 800 with several scales).
    bgr: the input channel order; None: the model directory's
      (`config.model.bgr`), or the official BGR for an NNX model.
    max_objects: the largest object id a mask may hold.
    reference_slots: reference frames to allocate up front (first frame
      plus frames with new objects); more are added when needed, at the cost
      of one compilation each time the count passes a power of two.
    with_probs: keep each frame's probabilities (`Pending.probs`).
    steps, params: compiled steps (`step.compile_steps`) and the
      model state (`nnx.split(model)[1]`) to share, e.g. across the videos
      of an evaluation; made from `model` if None.
    device: the device the stream runs on (None: JAX's default); the
      weights are placed there (shared `params` should already be).
  """

  def __init__(
      self,
      model: Union[str, nnx.Module, None],
      *,
      scales: Sequence[float] = (1.0,),
      flip: bool = False,
      max_long_edge: Optional[float] = None,
      bgr: Optional[bool] = None,
      max_objects: int = masks.MAX_OBJECTS,
      reference_slots: int = 1,
      with_probs: bool = False,
      steps: Optional[step_lib.CompiledSteps] = None,
      params: Any = None,
      device: Optional[jax.Device] = None,
  ):
    if isinstance(model, str):
      from cfbi_jax import checkpoint  # pylint: disable=g-import-not-at-top
      from cfbi_jax.models import family  # pylint: disable=g-import-not-at-top

      model, model_config = checkpoint.load_model(model)
      if bgr is None:
        bgr = family.bgr(model_config)
    if steps is None or params is None:
      if model is None:
        raise ValueError('Session needs a model, or both steps and params')
      graphdef, params = step_lib.split_for_inference(model)
      steps = steps or step_lib.compile_steps(graphdef)
    if device is not None:
      params = jax.device_put(params, device)
    self.steps, self.params, self.device = steps, params, device
    self.augs = step_lib.augmentations(scales, flip)
    self.max_long_edge = max_long_edge
    self.bgr = True if bgr is None else bool(bgr)
    self.max_objects = max_objects
    self.with_probs = with_probs
    self._ref_slots = bucket(reference_slots)
    self.reset()

  def _put(self, value: np.ndarray) -> jax.Array:
    """A host array on the stream's device."""
    return jax.device_put(value, self.device)

  def reset(self) -> None:
    """Forgets the stream (the next push starts a new one)."""
    self._states = None
    self._index = 0
    self._known = 0
    self._used_refs = 0
    self._size = None
    self._no_annotation = None

  @property
  def num_objects(self) -> int:
    """K, the largest object id seen so far."""
    return self._known

  def spec(
      self, frame_size: Tuple[int, int], num_ref_slots: int
  ) -> step_lib.StepSpec:
    """The static step settings for frames of `frame_size` `(H, W)`."""
    return step_lib.make_spec(
        frame_size,
        augs=self.augs,
        max_long_edge=self.max_long_edge,
        bgr=self.bgr,
        num_ref_slots=num_ref_slots,
        with_probs=self.with_probs,
        max_objects=self.max_objects,
    )

  def _check(self, frame: np.ndarray, mask: Optional[np.ndarray]):
    if frame.ndim != 3 or frame.shape[-1] != 3:
      raise ValueError(
          f'frame {self._index}: expected an HxWx3 RGB frame, '
          f'got shape {frame.shape}'
      )
    if self._size is not None and frame.shape[:2] != self._size:
      raise ValueError(
          f'frame {self._index} is {frame.shape[:2]}, but the '
          f'stream started at {self._size}; call reset() for a '
          'new stream'
      )
    if mask is None:
      return None
    return check_mask(mask, frame.shape[:2], self._index, self.max_objects)

  def push_async(
      self, frame: np.ndarray, mask: Optional[np.ndarray] = None
  ) -> Pending:
    """Dispatches one frame; returns before the device is done.

    Args:
      frame: `[H, W, 3]` uint8 RGB.
      mask: None, or `[H, W]` object ids (0 background) of objects given in
        this frame; required for the first frame.

    Returns:
      The frame's `Pending` outputs (the first frame's labels are its mask).
    """
    frame = np.asarray(frame, np.uint8)
    mask = self._check(frame, mask)
    index = self._index
    if self._states is None:
      if mask is None:
        raise ValueError('the first frame of a stream needs a mask')
      self._size = frame.shape[:2]
      self._no_annotation = self._put(np.zeros(self._size, np.uint8))
      self._states = self.steps.first(
          self.params,
          self._put(frame),
          self._put(mask.astype(np.int32)),
          spec=self.spec(self._size, self._ref_slots),
      )
      self._known = masks.largest_object_id(mask)
      self._used_refs, self._index = 1, 1
      return Pending(index, self._known, mask)
    if mask is not None and self._used_refs == self._ref_slots:
      self._ref_slots *= 2
      self._states = tuple(
          vos.grow_references(s, self._ref_slots) for s in self._states
      )
    known = self._known
    # Every argument has the same kind (device array) on every frame, so
    # the jit's signature cache holds one entry per compiled shape.
    self._states, outputs = self.steps.next(
        self.params,
        self._states,
        self._put(frame),
        self._put(mask) if mask is not None else self._no_annotation,
        self._put(np.asarray(mask is not None)),
        self._put(step_lib.object_valid(known, self.max_objects)),
        spec=self.spec(self._size, self._ref_slots),
    )
    for value in outputs.values():
      value.copy_to_host_async()
    if mask is not None:
      self._known = max(known, masks.largest_object_id(mask))
      self._used_refs += 1
    self._index += 1
    return Pending(index, known, outputs)

  def push(
      self, frame: np.ndarray, mask: Optional[np.ndarray] = None
  ) -> np.ndarray:
    """Segments one frame; returns its `[H, W]` uint8 labels (see
    `push_async` for the arguments)."""
    return self.push_async(frame, mask).labels()
