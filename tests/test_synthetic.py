"""Tests for `cfbi_jax.synthetic`, the synthetic VOS benchmark generator.

* the same seed draws the same video, another seed another one;
* what the module docstring promises appears over a handful of seeds:
  objects that leave the frame and come back, objects first seen mid-video
  (only with `late_objects`), several objects per video;
* a written dataset reads back through the project's DAVIS readers equal to
  what was drawn (masks exactly; JPEG frames closely), and sets written
  with different seeds share no sequence name.
"""

import os

import numpy as np
import pytest

from cfbi_jax import datasets
from cfbi_jax import synthetic

SPEC = synthetic.VideoSpec(size=(48, 64), num_frames=16)


def test_seeded():
  a_frames, a_labels = synthetic.render_video(7, SPEC)
  b_frames, b_labels = synthetic.render_video(7, SPEC)
  c_frames, _ = synthetic.render_video(8, SPEC)
  for x, y in zip(a_frames + a_labels, b_frames + b_labels):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a_frames[0], c_frames[0])
  assert a_frames[0].shape == (48, 64, 3) and a_frames[0].dtype == np.uint8
  assert a_labels[0].shape == (48, 64) and a_labels[0].dtype == np.uint8


def test_promised_cases_occur():
  stats = [
      synthetic.sequence_statistics(synthetic.render_video(s, SPEC)[1])
      for s in range(30)
  ]
  assert any(s['absent_then_back'] for s in stats)
  assert any(len(s['objects']) >= 2 for s in stats)
  # Without late objects every object is in the first frame.
  assert all(s['objects'] == s['first_frame_objects'] for s in stats)
  late = synthetic.VideoSpec(size=(48, 64), num_frames=16, late_objects=True)
  late_stats = [
      synthetic.sequence_statistics(synthetic.render_video(s, late)[1])
      for s in range(30)
  ]
  assert any(s['objects'] != s['first_frame_objects'] for s in late_stats)
  assert all(
      1 in s['first_frame_objects'] or 1 not in s['objects'] for s in late_stats
  )


def test_sequence_statistics_hand_case():
  blank = np.zeros((2, 2), np.uint8)
  one = np.array([[1, 0], [0, 2]], np.uint8)
  two = np.array([[0, 0], [0, 2]], np.uint8)
  stats = synthetic.sequence_statistics([one, two, blank, one])
  assert stats == {
      'objects': [1, 2],
      'first_frame_objects': [1, 2],
      'absent_then_back': [1, 2],
  }


def test_written_dataset_reads_back(tmp_path):
  root = str(tmp_path)
  names = synthetic.write_davis_dataset(root, 2, seed=5, spec=SPEC)
  other = synthetic.write_davis_dataset(root, 1, seed=6, spec=SPEC)
  assert not set(names) & set(other)
  seqs = {s.name: s for s in datasets.davis_sequences(root, split='val')}
  assert sorted(seqs) == sorted(names + other)
  frames, labels = synthetic.render_video(5 * 100_003 + 1, SPEC)
  seq = seqs[names[1]]
  assert len(seq) == SPEC.num_frames
  np.testing.assert_array_equal(seq.load_annotation(0), labels[0])
  for t in (0, 9):
    mask = datasets.read_mask(
        os.path.join(root, 'Annotations', '480p', names[1], f'{t:05d}.png')
    )
    np.testing.assert_array_equal(mask, labels[t])
    frame = np.asarray(seq.load_frame(t), np.float32)
    assert np.mean(np.abs(frame - frames[t])) < 10.0  # JPEG, q 95.


def test_ensure_dataset_draws_once_and_refuses_another_set(tmp_path):
  root = str(tmp_path)
  names = synthetic.ensure_davis_dataset(
      root, 2, seed=7, spec=SPEC, split='train'
  )
  frame = os.path.join(root, 'JPEGImages', '480p', names[0], '00000.jpg')
  stamp = os.stat(frame).st_mtime_ns
  assert (
      synthetic.ensure_davis_dataset(root, 2, seed=7, spec=SPEC, split='train')
      == names
  )
  assert os.stat(frame).st_mtime_ns == stamp  # Not redrawn.
  with pytest.raises(ValueError, match='other videos'):
    synthetic.ensure_davis_dataset(root, 3, seed=7, spec=SPEC, split='train')
