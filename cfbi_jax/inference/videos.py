"""The official evaluation loop over videos: a loop over `Session`s.

`evaluation.run` (what `evaluate.py` runs) segments every video of a
dataset with one `VideoPropagator`.

`VideoPropagator.run` segments one video the way
`networks/engine/eval_manager.py` does (notes §17): a `session.Session`
(test-time augmentations inside: probabilities averaged at the original
size, hard argmax, new-object annotations pasted over the prediction, every
augmentation's state advanced with the merged labels) is pushed every
frame. Around it, this module keeps the device busy:

* all sessions share one split model and one pair of compiled steps, so
  each (input size, object count, reference-slot bucket) compiles
  once per run (`VideoPropagator.compilations`);
* frames are decoded on a host thread one frame ahead (`host_threads`);
* frame t + 1 is dispatched before frame t's outputs are fetched, so the
  host waits only for the device, and only uint8 labels come back
  (probabilities only when asked for).
"""

import collections
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import nnx

from cfbi_jax import host_threads
from cfbi_jax import masks
from cfbi_jax.inference import session as session_lib
from cfbi_jax.inference import step as step_lib


class VideoPropagator:
  """Runs the official evaluation loop over one video at a time.

  Keyword arguments are `session.Session`'s (scales, flip, max_long_edge,
  bgr, max_objects, device).
  """

  def __init__(
      self,
      model: nnx.Module,
      *,
      scales: Sequence[float] = (1.0,),
      flip: bool = False,
      max_long_edge: Optional[float] = None,
      bgr: bool = True,
      max_objects: int = masks.MAX_OBJECTS,
      device: Optional[jax.Device] = None,
  ):
    graphdef, params = step_lib.split_for_inference(model)
    self.steps = step_lib.compile_steps(graphdef)
    self.device = device
    self.params = params if device is None else jax.device_put(params, device)
    self.options = dict(
        scales=tuple(scales),
        flip=flip,
        max_long_edge=max_long_edge,
        bgr=bgr,
        max_objects=max_objects,
    )

  @property
  def compilations(self) -> int:
    """Distinct step signatures compiled so far (the run summary's count)."""
    return self.steps.num_compiled()

  def session(
      self, reference_slots: int = 1, with_probs: bool = False
  ) -> session_lib.Session:
    """A new stream on this propagator's compiled steps."""
    return session_lib.Session(
        None,
        steps=self.steps,
        params=self.params,
        reference_slots=reference_slots,
        with_probs=with_probs,
        device=self.device,
        **self.options,
    )

  def run(
      self,
      frames: Iterable[np.ndarray],
      annotations: Dict[int, np.ndarray],
      num_frames: int,
      with_probs: bool = False,
  ) -> Iterator[Tuple[int, np.ndarray, Optional[np.ndarray]]]:
    """Segments a video.

    Args:
      frames: iterable of `[H, W, 3]` uint8 RGB frames, in order (read on a
        host thread, one frame ahead).
      annotations: frame index -> `[H, W]` uint8 labels for annotated frames
        (index 0 must be there).
      num_frames: number of frames.
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
    stream = self.session(
        reference_slots=len(annotations), with_probs=with_probs
    )
    pending = collections.deque()
    frames = host_threads.prefetch(frames, depth=2)
    try:
      for t, frame in enumerate(frames):
        if t >= num_frames:
          break
        pending.append(stream.push_async(frame, annotations.get(t)))
        if len(pending) > 1:
          yield _fetch(pending.popleft())
      while pending:
        yield _fetch(pending.popleft())
    finally:
      frames.close()


def _fetch(
    frame: session_lib.Pending,
) -> Tuple[int, np.ndarray, Optional[np.ndarray]]:
  """Brings one frame's outputs to the host (waits for the device)."""
  return frame.index, frame.labels(), frame.probs()
