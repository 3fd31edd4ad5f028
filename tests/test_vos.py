"""Tests for `cfbi_jax.vos`, the per-frame contract: how the carried state
moves from frame to frame and how annotations are merged.

Independent references: hand-written expected slot contents and label maps.
"""

import jax.numpy as jnp
import numpy as np

from cfbi_jax import vos


def test_advance_fills_reference_slots_in_order():
  emb = lambda v: vos.FrameEmbedding(
      features_s4=jnp.zeros((1, 2, 2, 1)), scales=(jnp.full((1, 2, 2, 1), v),)
  )
  labels = lambda v: jnp.full((1, 3, 3), v, jnp.int32)
  state = vos.start(emb(1.0), labels(1), num_ref_slots=3)
  state = vos.advance(state, emb(2.0), labels(2), jnp.asarray([False]))
  state = vos.advance(state, emb(3.0), labels(3), jnp.asarray([True]))
  np.testing.assert_array_equal(state.ref_valid, [[True, True, False]])
  np.testing.assert_array_equal(
      state.ref_scales[0][0, :, 0, 0, 0], [1.0, 3.0, 0.0]
  )
  np.testing.assert_array_equal(state.ref_labels[0, :, 0, 0], [1, 3, 0])
  np.testing.assert_array_equal(state.prev_labels, labels(3))
  assert float(state.prev_scales[0][0, 0, 0, 0]) == 3.0


def test_merge_annotation_pastes_objects_and_keeps_void():
  predicted = np.array([[1, 1, 2], [0, 2, 2]], np.uint8)
  annotation = np.array([[0, 3, 255], [255, 0, 1]], np.uint8)
  merged = vos.merge_annotation(predicted, annotation)
  np.testing.assert_array_equal(merged, [[1, 3, 2], [0, 2, 1]])
