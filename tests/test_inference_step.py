"""Tests for `cfbi_jax.inference.step` and the device loop of
`inference.videos`.

Independent references: `VideoPropagator`'s outputs against the step's
pieces called one by one with host-side NumPy preprocessing (the official
loader's order: cubic resize, flip, BGR, normalise), the compile counter
against the number of distinct shapes a video needs, donated buffers
against `is_deleted`, and live device memory frame by frame.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from cfbi_jax import backend
from cfbi_jax import resize
from cfbi_jax import vos
from cfbi_jax.inference import step as step_lib
from cfbi_jax.inference import videos
from tests import random_weights
from tests import synthetic_clips

_tiny = random_weights.tiny_cfbi


def test_network_input_is_the_official_loader_order():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (20, 31, 3), dtype=np.uint8)
  ours = np.asarray(
      step_lib.network_input(jnp.asarray(frame), (17, 33), True, True)
  )
  # Host reference: cubic resize of the float frame, flip, BGR, then the
  # RGB-ordered ImageNet constants on the B, G, R channels (notes §3).
  image = (
      np.asarray(resize.resize_cubic_cv2(frame.astype(np.float32), (17, 33)))[
          :, ::-1, ::-1
      ]
      / 255.0
  )
  expected = (image - np.array(vos.IMAGENET_MEAN)) / np.array(vos.IMAGENET_STD)
  np.testing.assert_allclose(ours[0], expected, atol=1e-5)


def test_loop_equals_the_step_pieces_with_host_preprocessing():
  """Frame 1 of the loop at a resizing scale, against embed/segment/resize
  called separately on a frame resized on the host."""
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=3, size=(40, 52))
  prop = videos.VideoPropagator(module, scales=(1.3,), max_long_edge=52)
  outs = list(prop.run(frames, {0: labels[0]}, 3, with_probs=True))
  size = step_lib.input_size(40, 52, 1.3, 52)
  assert size != (40, 52)
  host = lambda f: vos.preprocess_images(
      jnp.asarray(
          np.asarray(resize.resize_cubic_cv2(f.astype(np.float32), size))
      )[None]
  )
  emb0, _ = module.embed(host(frames[0]))
  emb1, _ = module.embed(host(frames[1]))
  state = vos.start(emb0, jnp.asarray(labels[0])[None], 1)
  logits = module.segment(
      state, emb1, jnp.asarray([[True, True, True, False]])
  ).logits
  probs = jax.nn.softmax(
      resize.resize_bilinear_ac(logits, (40, 52))[..., :3], axis=-1
  )[0]
  np.testing.assert_allclose(outs[1][2], probs, atol=1e-5)
  np.testing.assert_array_equal(outs[1][1], np.argmax(probs, axis=-1))
  assert outs[1][1].dtype == np.uint8 and outs[2][1].dtype == np.uint8


def test_probabilities_come_back_only_when_asked():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=3)
  prop = videos.VideoPropagator(module)
  assert all(p is None for _, _, p in prop.run(frames, {0: labels[0]}, 3))
  with_probs = list(prop.run(frames, {0: labels[0]}, 3, with_probs=True))
  assert with_probs[1][2].shape == labels[0].shape + (3,)


def test_one_compilation_per_object_count_and_none_across_frames():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=8, late_object=True)
  prop = videos.VideoPropagator(module)
  # Object 2 appears at frame 2: 2 slots (K=1), then 3 (K=2).
  list(prop.run(frames, {0: labels[0], 2: labels[2]}, len(frames)))
  assert prop.steps.first._cache_size() == 1
  assert prop.steps.next._cache_size() == 2
  assert prop.compilations == 3
  # Another video of the same size and references compiles nothing new,
  # whatever its length.
  frames2, labels2 = synthetic_clips.two_squares(
      num_frames=5, seed=3, late_object=True
  )
  list(prop.run(frames2, {0: labels2[0], 2: labels2[2]}, len(frames2)))
  assert prop.compilations == 3


def test_state_is_donated_and_memory_is_flat_in_video_length():
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=2)
  prop = videos.VideoPropagator(module)
  spec = prop.session().spec(labels[0].shape, 1)
  states = prop.steps.first(
      prop.params, frames[0], labels[0].astype(np.int32), spec=spec
  )
  zeros = jnp.zeros(labels[0].shape, jnp.uint8)
  obj_valid = np.array([True, True, True, False])
  step = lambda s: prop.steps.next(
      prop.params, s, frames[1], zeros, np.asarray(False), obj_valid, spec=spec
  )
  old = states
  states, _ = step(states)
  # Donated: every buffer of the old state was handed to the new one.
  assert all(x.is_deleted() for x in jax.tree.leaves(old))
  live = []
  for _ in range(6):
    states, outs = step(states)
    jax.block_until_ready(outs)
    del outs
    live.append(sum(x.nbytes for x in jax.live_arrays()))
  assert len(set(live[1:])) == 1, live


def _equations(jaxpr):
  """Every equation of `jaxpr`, nested ones (custom_vjp, pjit) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (list, tuple)) else [value]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


def test_bfloat16_compute_runs_in_bfloat16_and_stays_close():
  frames, labels = synthetic_clips.two_squares(num_frames=2)
  images = vos.preprocess_images(jnp.asarray(frames[1][None]))
  probs, embs = {}, {}
  for dtype in ('float32', 'bfloat16'):
    module = _tiny(compute_dtype=dtype)
    prop = videos.VideoPropagator(module)
    probs[dtype] = list(prop.run(frames, {0: labels[0]}, 2, with_probs=True))[
        1
    ][2]
    embs[dtype] = np.asarray(module.embed(images)[0].scales[0])
    convs = collections.Counter(
        str(e.invars[0].aval.dtype)
        for e in _equations(jax.make_jaxpr(module.embed)(images).jaxpr)
        if e.primitive.name == 'conv_general_dilated'
    )
    # DeepLab in the compute dtype; the embedding head always float32.
    assert convs[dtype] >= 5 and convs['float32'] >= 1, convs
  # Embeddings within bfloat16 rounding (8 bits of mantissa, a few layers
  # deep), and the first propagated frame's probabilities close to float32.
  rel = np.max(np.abs(embs['bfloat16'] - embs['float32'])) / np.max(
      np.abs(embs['float32'])
  )
  assert 0 < rel < 0.03, rel
  diff = np.max(np.abs(probs['bfloat16'] - probs['float32']))
  assert 0 < diff < 0.1, diff


def test_the_gpu_form_of_the_step_gives_the_cpu_forms_outputs():
  """The program a GPU runs (every `backend.is_cpu()` branch on its GPU
  side: masked global minima, XLA's convolutions), traced and run here,
  gives the CPU form's probabilities and labels on a late-object clip."""
  module = _tiny()
  frames, labels = synthetic_clips.two_squares(num_frames=4, late_object=True)
  annotations = {0: labels[0], 2: labels[2]}
  cpu = list(
      videos.VideoPropagator(module).run(
          frames, annotations, 4, with_probs=True
      )
  )
  with backend.tracing_for('cuda'):
    gpu = list(
        videos.VideoPropagator(module).run(
            frames, annotations, 4, with_probs=True
        )
    )
  for (_, cpu_labels, cpu_probs), (_, gpu_labels, gpu_probs) in zip(cpu, gpu):
    np.testing.assert_array_equal(gpu_labels, cpu_labels)
    if cpu_probs is not None:
      np.testing.assert_allclose(gpu_probs, cpu_probs, atol=1e-5)
