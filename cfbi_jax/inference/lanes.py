"""Several videos through one step: lanes over devices and within a device.

`LanePool` runs up to L = devices x `video_batch` videos of one frame size
side by side. Their carried states are stacked along a leading lane axis,
sharded over a one-axis mesh of the devices (`NamedSharding(mesh,
P('lanes'))`), and every frame of every lane is one call of the pure
per-frame step (`step.next_frame`) vmapped over lanes, compiled once per
shape for all devices together. Each lane is its own video:

* its first frame runs `step.first_frame` alone, and its state is written
  into the lane (`put_lane`);
* its annotations arrive at its own frames (new objects, new references);
  object slots are padded to the most any lane knows, with its own
  `obj_valid`, and reference slots grow for all lanes when one needs more;
* a lane whose video ends takes the next video (longest first); an idle
  lane runs on zeros and its outputs are dropped.

Lanes do not interact, so a video's labels are those of running it alone
through `Session` (tests check it label for label). The pool is driven by
`run(sequences, consume)`: for each video `consume(stream, seq)` runs on a
host thread of its own, with `stream.run(frames, annotations, num_frames,
with_probs)` yielding `(index, labels, probs)` exactly as
`VideoPropagator.run` does; `evaluation.segment_sequence` is such a
consumer, so outputs are written as they are for one video at a time.
"""

import dataclasses
import queue
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cfbi_jax import host_threads
from cfbi_jax import masks
from cfbi_jax import vos
from cfbi_jax.inference import session as session_lib
from cfbi_jax.inference import step as step_lib

_DONE = object()


class _Stream:
  """A consumer's view of one lane: `run` yields the lane's outputs."""

  def __init__(self):
    self.request = queue.Queue(maxsize=1)
    self.outputs = queue.Queue()

  def run(
      self,
      frames,
      annotations: Dict[int, np.ndarray],
      num_frames: int,
      with_probs: bool = False,
  ) -> Iterator[Any]:
    """As `VideoPropagator.run`: `(index, labels, probs)` per frame."""
    if 0 not in annotations:
      raise ValueError('the first frame must be annotated')
    self.request.put((frames, annotations, num_frames, with_probs))
    while True:
      item = self.outputs.get()
      if item is _DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item


@dataclasses.dataclass
class _Lane:
  """One running video: its frames, annotations and what the host knows."""

  stream: _Stream
  frames: Any
  annotations: Dict[int, np.ndarray]
  num_frames: int
  with_probs: bool
  t: int = 1
  known: int = 0
  refs: int = 1


class LanePool:
  """Videos of one frame size through one lane-batched step (module
  docstring).

  Args:
    model: the network.
    devices: the devices the lanes are spread over.
    video_batch: lanes per device.
    Other keyword arguments: `Session`'s (scales, flip, max_long_edge, bgr,
      max_objects).
  """

  def __init__(
      self,
      model: nnx.Module,
      devices: Sequence[jax.Device],
      video_batch: int = 1,
      *,
      scales: Sequence[float] = (1.0,),
      flip: bool = False,
      max_long_edge: Optional[float] = None,
      bgr: bool = True,
      max_objects: int = masks.MAX_OBJECTS,
  ):
    graphdef, params = step_lib.split_for_inference(model)
    self.num_lanes = len(devices) * int(video_batch)
    if self.num_lanes < 1:
      raise ValueError(f'video_batch must be at least 1, got {video_batch}')
    mesh = Mesh(np.asarray(devices), ('lanes',))
    self._lanes = NamedSharding(mesh, P('lanes'))
    self._replicated = NamedSharding(mesh, P())
    self.params = jax.device_put(params, self._replicated)
    self.augs = step_lib.augmentations(scales, flip)
    self.options = dict(
        max_long_edge=max_long_edge, bgr=bgr, max_objects=max_objects
    )
    self.max_objects = max_objects
    next_frame = lambda params, states, *per_lane, spec: jax.vmap(
        lambda st, *xs: step_lib.next_frame(
            params, st, *xs, graphdef=graphdef, spec=spec
        )
    )(states, *per_lane)
    self._first = jax.jit(
        lambda params, frame, labels, spec: step_lib.first_frame(
            params, frame, labels, graphdef=graphdef, spec=spec
        ),
        static_argnames=('spec',),
        out_shardings=self._replicated,
    )
    self._next = jax.jit(
        next_frame,
        static_argnames=('spec',),
        donate_argnums=(1,),
        out_shardings=self._lanes,
    )
    self._put_lane = jax.jit(
        lambda batched, lane, one: jax.tree.map(
            lambda b, x: b.at[lane].set(x), batched, one
        ),
        donate_argnums=(0,),
        out_shardings=self._lanes,
    )
    self._grow = jax.jit(
        lambda batched, slots: jax.vmap(
            lambda st: tuple(vos.grow_references(s, slots) for s in st)
        )(batched),
        static_argnums=(1,),
        out_shardings=self._lanes,
    )

  @property
  def compilations(self) -> int:
    """Distinct step signatures compiled so far."""
    return sum(f._cache_size() for f in (self._first, self._next))  # pylint: disable=protected-access

  def _spec(self, size, ref_slots, with_probs) -> step_lib.StepSpec:
    return step_lib.make_spec(
        size,
        augs=self.augs,
        num_ref_slots=ref_slots,
        with_probs=with_probs,
        **self.options,
    )

  def _lanes_put(self, value: np.ndarray) -> jax.Array:
    return jax.device_put(value, self._lanes)

  def run(
      self,
      sequences: Sequence[Any],
      consume: Callable[[_Stream, Any], Any],
      frame_size: Callable[[Any], Any],
  ) -> List[Any]:
    """Runs `consume(stream, seq)` for every sequence, videos of one size
    side by side in the lanes (module docstring).

    Args:
      sequences: the videos, in the order they are taken (longest first
        is the caller's choice).
      consume: runs on its own host thread per video; it calls
        `stream.run(...)` once and returns a result.
      frame_size: `(height, width)` of a sequence.

    Returns:
      The results of `consume`, in the order the videos finished.
    """
    groups: Dict[Any, List[Any]] = {}
    for seq in sequences:
      groups.setdefault(tuple(frame_size(seq)), []).append(seq)
    results, errors, threads = [], [], []

    def start(seq):
      stream = _Stream()

      def work():
        try:
          results.append(consume(stream, seq))
        except BaseException as error:  # pylint: disable=broad-except
          errors.append(error)
          with_request = stream.request.empty()
          if with_request:  # Unblocks the pool waiting for the request.
            stream.request.put(error)

      thread = threading.Thread(target=work, daemon=True)
      thread.start()
      threads.append(thread)
      return stream

    for size, group in groups.items():
      self._run_group(size, group, start, errors)
    for thread in threads:
      thread.join()
    if errors:
      raise errors[0]
    return results

  def _run_group(self, size, group, start, errors) -> None:
    """The lanes over the videos of one frame size; if any video fails,
    the others end with an error too (none is left waiting)."""
    lanes: List[Optional[_Lane]] = [None] * self.num_lanes
    try:
      self._drive(size, list(group), start, errors, lanes)
    except BaseException as error:  # pylint: disable=broad-except
      errors.append(error)
    for lane in lanes:
      if lane is not None:
        lane.frames.close()
        lane.stream.outputs.put(
            RuntimeError('stopped: another video of the run failed')
        )

  def _drive(self, size, left, start, errors, lanes) -> None:
    """`_run_group`'s loop: fill free lanes, step every lane."""
    ref_slots, states, with_probs = 1, None, False
    h, w = size
    while (left or any(lanes)) and not errors:
      for i in range(self.num_lanes):
        while lanes[i] is None and left and not errors:
          stream = start(left.pop(0))
          request = stream.request.get()
          if isinstance(request, BaseException):
            break
          frames, annotations, num_frames, with_probs = request
          frames = host_threads.prefetch(frames, depth=2)
          mask = self._check(annotations[0], size, 0)
          first = self._first(
              self.params,
              next(iter(frames)),
              mask.astype(np.int32),
              spec=self._spec(size, ref_slots, with_probs),
          )
          if states is None:
            states = jax.tree.map(
                lambda x: jnp.zeros((self.num_lanes,) + x.shape, x.dtype),
                first,
            )
            states = jax.device_put(states, self._lanes)
          states = self._put_lane(states, i, first)
          stream.outputs.put((0, mask, None))
          lane = _Lane(
              stream,
              frames,
              annotations,
              num_frames,
              with_probs,
              known=masks.largest_object_id(mask),
          )
          if num_frames <= 1:
            self._finish(lane)
          else:
            lanes[i] = lane
      active = [lane for lane in lanes if lane is not None]
      if not active:
        continue
      annotated = {
          i: self._check(lane.annotations[lane.t], size, lane.t)
          for i, lane in enumerate(lanes)
          if lane is not None and lane.t in lane.annotations
      }
      if any(lanes[i].refs == ref_slots for i in annotated):
        ref_slots *= 2
        states = self._grow(states, ref_slots)
      frame = np.zeros((self.num_lanes, h, w, 3), np.uint8)
      annotation = np.zeros((self.num_lanes, h, w), np.uint8)
      has = np.zeros((self.num_lanes,), bool)
      slots = max(
          len(step_lib.object_valid(l.known, self.max_objects)) for l in active
      )
      valid = np.zeros((self.num_lanes, slots), bool)
      valid[:, 0] = True
      for i, lane in enumerate(lanes):
        if lane is None:
          continue
        frame[i] = next(lane.frames)
        own = step_lib.object_valid(lane.known, self.max_objects)
        valid[i, : len(own)] = own
        if i in annotated:
          annotation[i], has[i] = annotated[i], True
      states, outputs = self._next(
          self.params,
          states,
          self._lanes_put(frame),
          self._lanes_put(annotation),
          self._lanes_put(has),
          self._lanes_put(valid),
          spec=self._spec(size, ref_slots, with_probs),
      )
      labels = np.asarray(outputs['labels'])
      probs = np.asarray(outputs['probs']) if 'probs' in outputs else None
      for i, lane in enumerate(lanes):
        if lane is None:
          continue
        lane.stream.outputs.put(
            (
                lane.t,
                labels[i],
                None if probs is None else probs[i][..., : lane.known + 1],
            )
        )
        if i in annotated:
          lane.known = max(lane.known, masks.largest_object_id(annotated[i]))
          lane.refs += 1
        lane.t += 1
        if lane.t >= lane.num_frames:
          self._finish(lane)
          lanes[i] = None

  def _check(self, mask: np.ndarray, size, index: int) -> np.ndarray:
    """A mask as `Session` takes it (`session.check_mask`), as uint8."""
    return session_lib.check_mask(mask, size, index, self.max_objects).astype(
        np.uint8
    )

  @staticmethod
  def _finish(lane: _Lane) -> None:
    lane.frames.close()
    lane.stream.outputs.put(_DONE)
