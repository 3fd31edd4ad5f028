"""Tests for `cfbi_jax.inference.lanes.LanePool` (tiny CFBI, one device).

Independent reference: each video run alone through the official loop
(`videos.VideoPropagator`, one `Session` per video). Videos of mixed
lengths and two frame sizes, objects that arrive mid-video, re-annotated
frames (YouTube-VOS style) and a one-frame video go through three lanes;
every video's labels equal its own run's, label for label, and its
probabilities to float tolerance. Lanes are refilled as videos end, and
each (frame size, object slots, reference slots) compiles once.
"""

import numpy as np
import pytest

from cfbi_jax.inference import lanes
from cfbi_jax.inference import videos
from tests import random_weights
from tests import synthetic_clips


def _videos():
  """`{name: (frames, annotations)}`: mixed lengths, late objects."""
  out = {}
  for seed, length, size, late in (
      (0, 7, (33, 49), True),
      (1, 3, (33, 49), False),
      (2, 1, (33, 49), False),
      (3, 5, (33, 49), True),
      (4, 3, (49, 33), False),
  ):
    frames, labels = synthetic_clips.two_squares(
        num_frames=length, size=size, seed=seed, late_object=late
    )
    only = lambda t, k: np.where(labels[t] == k, k, 0).astype(np.uint8)
    if late:  # Object 2 from frame 2; at frame 4 both are given again.
      annotations = {0: only(0, 1), 2: only(2, 2)}
      if length > 4:
        annotations[4] = labels[4].astype(np.uint8)
    else:
      annotations = {0: labels[0].astype(np.uint8)}
    out[f'video{seed}'] = (frames, annotations)
  return out


@pytest.fixture(scope='module')
def module():
  return random_weights.tiny_cfbi()


def test_lanes_equal_each_video_alone(module):
  clips = _videos()
  loop = videos.VideoPropagator(module)
  alone = {
      name: list(loop.run(frames, annotations, len(frames), with_probs=True))
      for name, (frames, annotations) in clips.items()
  }
  import jax  # pylint: disable=g-import-not-at-top

  pool = lanes.LanePool(module, jax.local_devices()[:1], video_batch=3)

  def consume(stream, name):
    frames, annotations = clips[name]
    return name, list(
        stream.run(iter(frames), annotations, len(frames), with_probs=True)
    )

  order = sorted(clips, key=lambda n: -len(clips[n][0]))
  results = dict(
      pool.run(order, consume, lambda name: clips[name][0][0].shape[:2])
  )
  assert set(results) == set(clips)
  for name, want in alone.items():
    got = results[name]
    assert [t for t, _, _ in got] == list(range(len(clips[name][0])))
    for (t, labels, probs), (_, want_labels, want_probs) in zip(got, want):
      np.testing.assert_array_equal(labels, want_labels, f'{name} frame {t}')
      if want_probs is None:
        assert probs is None
      else:
        assert probs.shape == want_probs.shape, (name, t)
        np.testing.assert_allclose(probs, want_probs, atol=1e-5)
  # Not a trivial answer: the late object is found after its annotation.
  assert np.any(results['video0'][6][1] == 2)
  # Per frame size, one first-frame step per reference-slot count and one
  # lane step per (object slots, reference slots) met: a handful, not one
  # per video or per frame (19 frames).
  assert pool.compilations <= 10


def test_a_failing_consumer_stops_the_pool(module):
  import jax  # pylint: disable=g-import-not-at-top

  pool = lanes.LanePool(module, jax.local_devices()[:1], video_batch=2)
  frames, labels = synthetic_clips.two_squares(num_frames=3)

  def consume(stream, name):
    if name == 'bad':
      raise ValueError('cannot read bad')
    return list(stream.run(iter(frames), {0: labels[0]}, 3))

  with pytest.raises(ValueError, match='cannot read bad'):
    pool.run(['good', 'bad', 'good2'], consume, lambda _: frames[0].shape[:2])
