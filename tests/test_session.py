"""Tests for `cfbi_jax.inference.session.Session` (tiny model).

Independent references: the evaluation loop's outputs for the same frames
(`inference.videos.VideoPropagator`, which sizes its reference slots from all
annotations up front), against a session that learns of late objects only
when their masks arrive and grows its reference slots; the labels
`evaluate.py` writes are compared in `test_evaluation.py`; every model
family's session against the loop is `test_families.py`'s.
"""

import numpy as np
import pytest

from cfbi_jax import Session
from cfbi_jax.inference import step as step_lib
from cfbi_jax.inference import videos
from tests import random_weights
from tests import synthetic_clips

_tiny = random_weights.tiny_cfbi


def test_late_objects_grow_the_references_and_match_the_eval_loop():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=6, late_object=True)
  # Object 2 arrives at frame 2, a re-annotation of it at frame 4: three
  # references, while the session starts with one slot.
  only = lambda t, k: np.where(labels[t] == k, k, 0).astype(np.uint8)
  masks = {0: only(0, 1), 2: only(2, 2), 4: only(4, 2)}
  expected = [
      l
      for _, l, _ in videos.VideoPropagator(module).run(
          frames, masks, len(frames)
      )
  ]
  stream = Session(module)
  got = [stream.push(f, masks.get(t)) for t, f in enumerate(frames)]
  assert stream.num_objects == 2
  assert stream._ref_slots == 4  # pylint: disable=protected-access
  for t, (a, b) in enumerate(zip(got, expected)):
    np.testing.assert_array_equal(a, b, err_msg=f'frame {t}')
  # The late object is predicted after its mask.
  assert np.any(got[5] == 2) and np.all(got[2][masks[2] == 2] == 2)


def test_reset_starts_a_new_stream_and_pending_frames_fetch_later():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=3)
  stream = Session(module, with_probs=True)
  first = [
      stream.push(f, labels[0] if t == 0 else None)
      for t, f in enumerate(frames)
  ]
  stream.reset()
  pending = [
      stream.push_async(f, labels[0] if t == 0 else None)
      for t, f in enumerate(frames)
  ]
  assert [p.index for p in pending] == [0, 1, 2]
  for a, p in zip(first, pending):
    np.testing.assert_array_equal(a, p.labels())
  assert pending[0].probs() is None
  assert pending[1].probs().shape == labels[0].shape + (3,)
  np.testing.assert_allclose(pending[1].probs().sum(-1), 1.0, rtol=1e-5)


def test_bad_pushes_are_clear_errors():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=2)
  stream = Session(module, max_objects=2)
  with pytest.raises(ValueError, match='first frame of a stream needs a mask'):
    stream.push(frames[0])
  with pytest.raises(ValueError, match='mask of frame 0 is'):
    stream.push(frames[0], labels[0][:-1])
  with pytest.raises(ValueError, match='above max_objects=2'):
    stream.push(frames[0], labels[0] * 3)
  stream.push(frames[0], labels[0])
  with pytest.raises(ValueError, match='call reset'):
    stream.push(frames[1][:-1])


def test_the_step_runs_the_official_object_slots():
  """K + 1 slots (background included), as the official code runs: no
  slot is rounded up; a frame with no object yet still has two."""
  for k in range(1, 11):
    valid = step_lib.object_valid(k)
    assert valid.shape == (k + 1,) and valid.all()
  np.testing.assert_array_equal(step_lib.object_valid(0), [True, False])
