"""Tests for `cfbi_jax.session.Session` (tiny model).

Independent references: the evaluation loop's outputs for the same frames
(`inference.VideoPropagator`, which sizes its reference slots from all
annotations up front), against a session that learns of late objects only
when their masks arrive and grows its reference slots; the labels
`evaluate.py` writes are compared in `test_evaluation.py`.
"""

import numpy as np
import pytest

from cfbi_jax import inference
from cfbi_jax import session
from cfbi_jax import Session
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
  expected = [l for _, l, _ in inference.VideoPropagator(module).run(
      frames, masks, len(frames))]
  stream = Session(module)
  got = [stream.push(f, masks.get(t)) for t, f in enumerate(frames)]
  assert stream.num_objects == 2
  assert stream._ref_slots == 4  # pylint: disable=protected-access
  for t, (a, b) in enumerate(zip(got, expected)):
    np.testing.assert_array_equal(a, b, err_msg=f'frame {t}')
  # The late object is predicted after its mask.
  assert np.any(got[5] == 2) and np.all(got[2][masks[2] == 2] == 2)


@pytest.mark.parametrize('variant', ['tiny_feelvos', 'tiny_videomatch'])
def test_models_with_memory_stream_like_the_eval_loop(variant):
  """FEELVOS (previous probabilities) and VideoMatch (online-update sets)
  carry memory of their own; a session that meets a late object (a new
  slot bucket, a new reference) gives the evaluation loop's labels."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top
  config = models.model_config(variant)
  if variant == 'tiny_videomatch':
    # A d_c smaller than these small frames, so outliers are removed (and
    # join the background sets).
    config.outlier_distance = 4.0
  module = models.build(config, rngs=nnx.Rngs(1))
  frames, labels = synthetic_clips.two_squares(num_frames=5, late_object=True)
  only = lambda t, k: np.where(labels[t] == k, k, 0).astype(np.uint8)
  masks = {0: only(0, 1), 2: only(2, 2)}
  expected = [l for _, l, _ in inference.VideoPropagator(module).run(
      frames, masks, len(frames))]
  stream = Session(module)
  got = [stream.push(f, masks.get(t)) for t, f in enumerate(frames)]
  for t, (a, b) in enumerate(zip(got, expected)):
    np.testing.assert_array_equal(a, b, err_msg=f'frame {t}')
  memory = stream._states[0].memory  # pylint: disable=protected-access
  if variant == 'tiny_videomatch':
    assert int(memory['count'][0]) > 0    # The online update wrote pixels.
  else:
    # Previous probabilities over max_objects + 1 slots, a distribution.
    assert memory.shape[-1] == stream.max_objects + 1
    np.testing.assert_allclose(np.asarray(memory).sum(-1), 1.0, rtol=1e-5)


def test_reset_starts_a_new_stream_and_pending_frames_fetch_later():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=3)
  stream = Session(module, with_probs=True)
  first = [stream.push(f, labels[0] if t == 0 else None)
           for t, f in enumerate(frames)]
  stream.reset()
  pending = [stream.push_async(f, labels[0] if t == 0 else None)
             for t, f in enumerate(frames)]
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
    valid = session.object_valid(k)
    assert valid.shape == (k + 1,) and valid.all()
  np.testing.assert_array_equal(session.object_valid(0), [True, False])
