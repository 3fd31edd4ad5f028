"""The official evaluation loop over videos, on top of `frame_step`.

`VideoPropagator` runs `networks/engine/eval_manager.py`'s loop (notes §17)
over any number of test-time augmentations (scales x flip): probabilities
averaged at the original size, hard argmax, new-object annotations pasted
over the prediction, and every augmentation's state advanced with that
merged label map (flipped for flip augmentations). All of that is one
device step per frame (`frame_step.next_frame`); this module only sizes
it, feeds it and collects its outputs:

* the model is split once (`nnx.split`) and both steps are plain `jax.jit`
  functions, compiled once per (input sizes, object-slot bucket,
  reference-slot bucket) and counted (`VideoPropagator.compilations`);
* frames are decoded on a host thread one frame ahead (`host_threads`);
* frame t + 1 is dispatched before frame t's labels are fetched, so the
  host waits only for the device, and only uint8 labels come back
  (probabilities only when asked for);
* memory is constant in video length: the state holds a fixed number of
  reference slots (first frame plus frames where objects appear) and one
  previous frame, and its buffers are donated to the next step.
"""

import collections
import dataclasses
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfbi_jax import frame_step
from cfbi_jax import host_threads
from cfbi_jax import model as model_lib
from cfbi_jax import preprocessing


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


class VideoPropagator:
  """Runs the official evaluation loop over one video at a time."""

  def __init__(self, model: model_lib.CFBI, *, scales: Sequence[float] = (1.0,),
               flip: bool = False, max_long_edge: Optional[float] = None,
               bgr: bool = True, max_objects: int = 10):
    self.graphdef, self.params = nnx.split(model)
    self.steps = frame_step.compile_steps(self.graphdef)
    self.augs = augmentations(scales, flip)
    if max_long_edge is None:  # The official rule (tools/eval_net.py).
      max_long_edge = 1040 if list(scales) == [1.0] else 800
    self.max_long_edge = max_long_edge
    self.bgr = bgr
    self.max_objects = max_objects

  @property
  def compilations(self) -> int:
    """Distinct step signatures compiled so far (the run summary's count)."""
    return self.steps.num_compiled()

  def spec(self, frame_size: Tuple[int, int], num_ref_slots: int,
           with_probs: bool = False) -> frame_step.StepSpec:
    """The static step settings for frames of `frame_size` `(H, W)`."""
    sizes = tuple(preprocessing.input_size(*frame_size, aug.scale,
                                           self.max_long_edge)
                  for aug in self.augs)
    return frame_step.StepSpec(
        input_sizes=sizes, flips=tuple(a.flip for a in self.augs),
        bgr=self.bgr, num_ref_slots=num_ref_slots, with_probs=with_probs)

  def run(self, frames: Iterable[np.ndarray],
          annotations: Dict[int, np.ndarray], num_frames: int,
          with_probs: bool = False
          ) -> Iterator[Tuple[int, np.ndarray, Optional[np.ndarray]]]:
    """Segments a video.

    Args:
      frames: iterable of `[H, W, 3]` uint8 RGB frames, in order (read on a
        host thread, one frame ahead).
      annotations: frame index -> `[H, W]` uint8 labels for annotated frames
        (index 0 must be there).
      num_frames: number of frames (for sizing).
      with_probs: also bring back each frame's probabilities.

    Yields:
      `(index, labels [H, W] uint8, probs)` per frame, in order; `probs` is
      `[H, W, K+1]` float32 (K the objects known before the frame) with
      `with_probs`, else None, and None for frame 0 (its annotation is
      yielded as its labels). A frame is yielded once the next one has been
      dispatched to the device.
    """
    if 0 not in annotations:
      raise ValueError('the first frame must be annotated')
    ref_slots = bucket(len(annotations))
    states, known, spec, no_annotation = None, 0, None, None
    pending = collections.deque()  # (t, device outputs, known before t)
    frames = host_threads.prefetch(frames, depth=2)
    try:
      for t, frame in enumerate(frames):
        if t >= num_frames:
          break
        frame = np.asarray(frame, np.uint8)
        annotation = annotations.get(t)
        if t == 0:
          spec = self.spec(frame.shape[:2], ref_slots, with_probs)
          no_annotation = jnp.zeros(frame.shape[:2], jnp.uint8)
          states = self.steps.first(self.params, jax.device_put(frame),
                                    jax.device_put(np.asarray(annotation,
                                                              np.int32)),
                                    spec=spec)
          known = int(annotation.max())
          yield t, np.asarray(annotation, np.uint8), None
          continue
        if frame.shape[:2] != no_annotation.shape:
          raise ValueError(f'frame {t} is {frame.shape[:2]}, but frame 0 '
                           f'was {no_annotation.shape}')
        if known > self.max_objects:
          raise ValueError(f'object id {known} exceeds max_objects '
                           f'{self.max_objects}')
        num_slots = min(bucket(known + 1, 2), self.max_objects + 1)
        obj_valid = np.arange(num_slots) <= known
        given = annotation is not None
        # Every argument has the same kind (device array) on every frame, so
        # the jit's signature cache holds one entry per compiled shape.
        states, outs = self.steps.next(
            self.params, states, jax.device_put(frame),
            jax.device_put(np.asarray(annotation, np.uint8)) if given
            else no_annotation, jax.device_put(np.asarray(given)),
            jax.device_put(obj_valid), spec=spec)
        for value in outs.values():
          value.copy_to_host_async()
        pending.append((t, outs, known))
        if given:
          known = max(known, int(annotation.max()))
        if len(pending) > 1:
          yield _fetch(*pending.popleft())
      while pending:
        yield _fetch(*pending.popleft())
    finally:
      frames.close()


def _fetch(t: int, outs: Dict[str, jax.Array], known: int
           ) -> Tuple[int, np.ndarray, Optional[np.ndarray]]:
  """Brings one frame's outputs to the host (blocks until computed)."""
  probs = outs.get('probs')
  if probs is not None:
    probs = np.asarray(probs)[..., :known + 1]
  return t, np.asarray(outs['labels']), probs
