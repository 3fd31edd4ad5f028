"""Tests for `cfbi_jax.inference.videos`, the official input sizing
(`inference.step.input_size`) and `resize.resize_cubic_cv2` (tiny model).

Independent references: the official size table of the notes, the
definition of OpenCV's cubic resize evaluated pixel by pixel, manual calls
of `model.segment` for the object/reference bookkeeping of the eval loop,
and a NumPy average over manually run augmentations for the TTA merge.
Whole-clip parity with the official loop is in `test_parity.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import resize
from cfbi_jax import vos
from cfbi_jax.inference import step as step_lib
from cfbi_jax.inference import videos
from tests import random_weights
from tests import synthetic_clips


@pytest.mark.parametrize(
    'size,scale,max_edge,expected',
    [
        ((480, 854), 1.0, 1040, (481, 849)),
        ((720, 1280), 1.0, 1040, (577, 1041)),
        ((360, 640), 1.0, 1040, (353, 641)),
        ((480, 640), 1.0, 1040, (481, 641)),
        ((1080, 1920), 1.0, 1040, (577, 1041)),
        ((480, 854), 1.15, 800, (513, 913)),
        ((720, 1280), 1.3, 800, (577, 1041)),
        ((360, 640), 1.3, 800, (465, 833)),
        ((480, 640), 1.5, 800, (721, 961)),
    ],
)
def test_input_size_matches_official_table(size, scale, max_edge, expected):
  assert step_lib.input_size(*size, scale, max_edge) == expected


def _naive_cv2_cubic(image, size):
  """OpenCV INTER_CUBIC, one output pixel at a time, float64."""
  h, w = image.shape[:2]
  out = np.zeros(size + image.shape[2:])

  def weights(t):
    a = -0.75
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return [w0, w1, w2, 1 - w0 - w1 - w2]

  for oy in range(size[0]):
    fy = (oy + 0.5) * h / size[0] - 0.5
    sy = int(np.floor(fy))
    wy = weights(fy - sy)
    for ox in range(size[1]):
      fx = (ox + 0.5) * w / size[1] - 0.5
      sx = int(np.floor(fx))
      wx = weights(fx - sx)
      acc = 0.0
      for i in range(4):
        for j in range(4):
          y = min(max(sy - 1 + i, 0), h - 1)
          x = min(max(sx - 1 + j, 0), w - 1)
          acc = acc + wy[i] * wx[j] * image[y, x]
      out[oy, ox] = acc
  return out


@pytest.mark.parametrize(
    'src,dst', [((9, 13), (17, 25)), ((20, 31), (13, 17)), ((7, 7), (7, 11))]
)
def test_cv2_cubic_matches_definition(src, dst):
  rng = np.random.default_rng(0)
  image = (rng.random(src + (2,)) * 255).astype(np.float32)
  np.testing.assert_allclose(
      resize.resize_cubic_cv2(image, dst),
      _naive_cv2_cubic(image.astype(np.float64), dst),
      atol=2e-3,
  )


_tiny = random_weights.tiny_cfbi


@nnx.jit(static_argnames=('num_objects', 'out_size'))
def _segment_jit(
    module,
    ref_frames,
    ref_labels,
    prev_frame,
    prev_labels,
    frame,
    num_objects,
    out_size,
):
  """`model.segment` called directly with explicit reference lists."""
  emb = lambda f: module.embed(vos.preprocess_images(f))[0]
  refs = emb(ref_frames)  # batch = references
  ref_scales = tuple(s[None] for s in refs.scales)
  state = vos.PropagationState(
      ref_scales=ref_scales,
      ref_labels=ref_labels[None],
      ref_valid=jnp.ones((1, ref_frames.shape[0]), bool),
      prev_scales=emb(prev_frame[None]).scales,
      prev_labels=prev_labels[None],
  )
  logits = module.segment(
      state, emb(frame[None]), jnp.ones((1, num_objects + 1), bool)
  ).logits
  return jax.nn.softmax(resize.resize_bilinear_ac(logits, out_size), -1)[0]


def _manual_segment(module, refs, prev, frame, num_objects, out_size):
  f32 = lambda x: jnp.asarray(np.asarray(x), jnp.float32)
  i32 = lambda x: jnp.asarray(np.asarray(x), jnp.int32)
  return np.asarray(
      _segment_jit(
          module,
          f32(np.stack([f for f, _ in refs])),
          i32(np.stack([l for _, l in refs])),
          f32(prev[0]),
          i32(prev[1]),
          f32(frame),
          num_objects,
          tuple(out_size),
      )
  )


def test_new_objects_join_as_references():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(late_object=True)
  prop = videos.VideoPropagator(module)
  outs = list(
      prop.run(
          frames, {0: labels[0], 2: labels[2]}, len(frames), with_probs=True
      )
  )
  # Frame 2 predicts only the objects known before it (K = 1) ...
  assert outs[1][2].shape[-1] == 2 and outs[2][2].shape[-1] == 2
  # ... and its label map carries the pasted new object.
  assert np.all(outs[2][1][labels[2] == 2] == 2)
  # Frame 3 sees K = 2 and two references: frame 0 and merged frame 2.
  assert outs[3][2].shape[-1] == 3
  expected = _manual_segment(
      module,
      [(frames[0], labels[0]), (frames[2], outs[2][1])],
      (frames[2], outs[2][1]),
      frames[3],
      2,
      labels[0].shape,
  )
  np.testing.assert_allclose(outs[3][2], expected, atol=1e-5)
  expected1 = _manual_segment(
      module,
      [(frames[0], labels[0])],
      (frames[0], labels[0]),
      frames[1],
      1,
      labels[0].shape,
  )
  np.testing.assert_allclose(outs[1][2], expected1, atol=1e-5)


def test_tta_average_of_scales_and_flips():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(
      num_frames=2, size=(40, 52), seed=1, late_object=True
  )
  scales = (1.0, 1.3)
  prop = videos.VideoPropagator(
      module, scales=scales, flip=True, max_long_edge=40
  )
  outs = list(prop.run(frames, {0: labels[0]}, 2, with_probs=True))
  per_aug = []
  for scale in scales:
    size = step_lib.input_size(40, 52, scale, 40)
    resized = [
        resize.resize_cubic_cv2(f.astype(np.float32), size) for f in frames
    ]
    for flip in (False, True):
      f = [r[:, ::-1] if flip else r for r in resized]
      lab0 = labels[0][:, ::-1] if flip else labels[0]
      p = _manual_segment(
          module, [(f[0], lab0)], (f[0], lab0), f[1], 1, (40, 52)
      )
      per_aug.append(p[:, ::-1] if flip else p)
  np.testing.assert_allclose(outs[1][2], np.mean(per_aug, axis=0), atol=1e-5)
  assert len(per_aug) == 4


def test_too_many_objects_is_an_error():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=2, late_object=True)
  prop = videos.VideoPropagator(module, max_objects=1)
  with pytest.raises(ValueError, match='max_objects'):
    list(prop.run(frames, {0: labels[1] * 0 + (labels[1] > 0) * 2}, 2))
