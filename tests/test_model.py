"""Tests for `cfbi_jax.models.cfbi` on the tiny presets (fast, no fixtures).

Full-size behaviour is covered by `test_parity.py`; here: shapes on odd
sizes, invariance to padded object slots, unused reference slots and batch
composition, the input normalisation against its definition, the
attention-label switch and config validation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import attention
from cfbi_jax import matching
from cfbi_jax import models
from cfbi_jax import resize
from cfbi_jax import vos

H, W = 65, 81


def _model(variant, **overrides):
  config = models.model_config(variant)
  config.update(overrides)
  module = models.build(config, rngs=nnx.Rngs(0))
  # Non-zero biases so that background and foreground are told apart.
  module.bg_bias[...] = jnp.full_like(module.bg_bias[...], -0.3)
  module.fg_bias[...] = jnp.full_like(module.fg_bias[...], 0.2)
  return module


def _labels(rng, num_objects, size=(H, W)):
  """Blobs with ids 1..num_objects."""
  yy, xx = np.mgrid[: size[0], : size[1]]
  labels = np.zeros(size, np.int32)
  for k in range(1, num_objects + 1):
    cy, cx = rng.uniform(10, size[0] - 10), rng.uniform(10, size[1] - 10)
    labels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(40, 120)] = k
  return labels


@nnx.jit
def _embed(module, images):
  return module.embed(images)[0]


@nnx.jit(static_argnames='training')
def _segment(
    module,
    ref,
    ref_labels,
    ref_valid,
    prev,
    prev_labels,
    cur,
    obj_valid,
    training=False,
):
  state = vos.PropagationState(
      ref_scales=ref,
      ref_labels=ref_labels,
      ref_valid=ref_valid,
      prev_scales=prev,
      prev_labels=prev_labels,
  )
  out = module.segment(state, cur, obj_valid, training=training)
  return out.logits, out.aux


def _inputs(module, rng, batch=1, num_objects=2, num_slots=None, refs=1):
  num_slots = num_slots or num_objects + 1
  images = jnp.asarray(rng.normal(size=(batch * 2, H, W, 3)), jnp.float32)
  emb = _embed(module, images)
  ref = vos.FrameEmbedding(
      features_s4=emb.features_s4[:batch],
      scales=tuple(s[:batch] for s in emb.scales),
  )
  cur = vos.FrameEmbedding(
      features_s4=emb.features_s4[batch:],
      scales=tuple(s[batch:] for s in emb.scales),
  )
  ref_scales = tuple(jnp.repeat(s[:, None], refs, axis=1) for s in ref.scales)
  labels = np.stack([_labels(rng, num_objects) for _ in range(batch)])
  ref_labels = jnp.asarray(np.repeat(labels[:, None], refs, axis=1))
  ref_valid = jnp.asarray(np.arange(refs)[None].repeat(batch, 0) == 0)
  obj_valid = jnp.asarray(
      np.arange(num_slots)[None].repeat(batch, 0) <= num_objects
  )
  return dict(
      ref=ref_scales,
      ref_labels=ref_labels,
      ref_valid=ref_valid,
      prev=ref.scales,
      prev_labels=jnp.asarray(labels),
      cur=cur,
      obj_valid=obj_valid,
  )


@pytest.mark.parametrize('variant', ['tiny_cfbi', 'tiny_cfbip'])
def test_shapes_and_padded_slots(variant):
  module = _model(variant)
  rng = np.random.default_rng(0)
  x = _inputs(module, rng, num_objects=2, num_slots=3)
  logits, aux = _segment(module, **x)
  h4, w4 = resize.stride_size(H, 4), resize.stride_size(W, 4)
  assert logits.shape == (1, h4, w4, 3)
  assert aux['global_fg_s4'].shape == (1, 3, h4, w4)
  # Two extra padded slots leave the valid logits unchanged and never win.
  padded = dict(x, obj_valid=jnp.asarray([[True] * 3 + [False] * 2]))
  logits_p, _ = _segment(module, **padded)
  np.testing.assert_allclose(logits_p[..., :3], logits, atol=1e-5)
  assert np.all(np.asarray(logits_p[..., 3:]) == vos.INVALID_LOGIT)


def test_unused_reference_slots_are_ignored():
  module = _model('tiny_cfbi')
  rng = np.random.default_rng(1)
  one = _inputs(module, rng, refs=1)
  three = dict(one)
  # Two more slots holding unrelated embeddings and labels, marked unused.
  noise = jnp.asarray(rng.normal(size=one['ref'][0].shape), jnp.float32)
  three['ref'] = (jnp.concatenate([one['ref'][0], noise, noise * 2], 1),)
  three['ref_labels'] = jnp.concatenate(
      [
          one['ref_labels'],
          jnp.ones_like(one['ref_labels']),
          jnp.zeros_like(one['ref_labels']),
      ],
      1,
  )
  three['ref_valid'] = jnp.asarray([[True, False, False]])
  a, _ = _segment(module, **one)
  b, _ = _segment(module, **three)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_batch_elements_are_independent():
  module = _model('tiny_cfbip')
  rng = np.random.default_rng(2)
  both = _inputs(module, rng, batch=2, num_objects=2)
  logits, _ = _segment(module, **both)
  for b in range(2):
    single = jax.tree.map(lambda v, b=b: v[b : b + 1], both)
    alone, _ = _segment(module, **single)
    np.testing.assert_allclose(logits[b : b + 1], alone, atol=1e-4)


def test_attention_label_switch():
  """The official in-place lattice mask reaches the /4 attention vector."""
  rng = np.random.default_rng(3)
  for switch in (True, False):
    module = _model('tiny_cfbip', attention_uses_atrous_labels=switch)
    x = _inputs(module, rng)
    _, aux = _segment(module, **x, training=True)
    grid = x['cur'].scales[0].shape[1:3]
    ref_lab = resize.resize_labels_nearest(x['ref_labels'][0], grid)
    if switch:
      ref_lab = matching.atrous_reference_labels(
          ref_lab, x['obj_valid'][0], atrous=2, min_pixels=0
      )
    prev_lab = resize.resize_labels_nearest(x['prev_labels'][0], grid)
    expected = attention.attention_head(
        x['ref'][0][0], ref_lab, x['ref_valid'][0], x['prev'][0][0], prev_lab, 3
    )
    np.testing.assert_allclose(aux['attention_s4'][0], expected, atol=1e-5)


def test_preprocess_images_is_official_bgr_normalisation():
  rng = np.random.default_rng(4)
  rgb = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
  bgr = rgb[..., ::-1].astype(np.float64)
  expected = (bgr / 255 - np.array([0.485, 0.456, 0.406])) / np.array(
      [0.229, 0.224, 0.225]
  )
  np.testing.assert_allclose(vos.preprocess_images(rgb), expected, atol=1e-6)
  rgb_expected = (rgb / 255 - np.array([0.485, 0.456, 0.406])) / np.array(
      [0.229, 0.224, 0.225]
  )
  np.testing.assert_allclose(
      vos.preprocess_images(rgb, bgr=False), rgb_expected, atol=1e-6
  )


def test_config_validation():
  config = models.model_config('tiny_cfbi')
  bad = dict(config, not_a_field=1)
  with pytest.raises(ValueError, match='not_a_field'):
    models.build(bad)
  with pytest.raises(ValueError, match='local_windows'):
    models.build(dict(config, local_windows=((2,), (4,))))
  with pytest.raises(ValueError, match='ResNet'):
    models.build(
        models.model_config('tiny_cfbip').to_dict()
        | {'backbone': 'mobilenetv2'}
    )
  with pytest.raises(ValueError, match='unknown variant'):
    models.model_config('cfbi_resnet50')


def test_tiny_is_small():
  module = nnx.eval_shape(
      lambda: models.build(models.model_config('tiny_cfbi'))
  )
  count = sum(
      np.prod(v.shape) for v in jax.tree.leaves(nnx.state(module, nnx.Param))
  )
  assert count < 1_200_000, count


# ------------------------------------------------------- ablation switches
def _logits(module, x):
  return np.asarray(_segment(module, **x)[0])


def _assert_switch_is(ablated, equivalent, x, atol):
  """`ablated` gives the logits of `equivalent` (a full model edited by
  hand) and, so that the switch is seen to act, not those of the full
  model."""
  np.testing.assert_allclose(
      _logits(ablated, x), _logits(equivalent, x), atol=atol
  )
  assert not np.allclose(
      _logits(_model('tiny_cfbi'), x), _logits(ablated, x), atol=1e-3
  )


def test_matching_bias_switch():
  """use_matching_bias=False equals the full model with both offsets 0."""
  rng = np.random.default_rng(5)
  ablated = _model('tiny_cfbi', use_matching_bias=False)  # biases -0.3 / 0.2
  x = _inputs(ablated, rng)
  zero_bias = _model('tiny_cfbi')
  zero_bias.bg_bias[...] = jnp.zeros_like(zero_bias.bg_bias[...])
  zero_bias.fg_bias[...] = jnp.zeros_like(zero_bias.fg_bias[...])
  _assert_switch_is(ablated, zero_bias, x, atol=1e-5)


def test_background_switch():
  """use_background=False zeros every background-integration input (the
  per-object background matching maps and the background halves of the
  attention vector) and changes the output; the default keeps them.
  Slot 0, the background treated as one more object (as in FEELVOS),
  keeps its own matching in both."""
  rng = np.random.default_rng(6)
  full = _model('tiny_cfbi')
  x = _inputs(full, rng)
  ablated = _model('tiny_cfbi', use_background=False)
  for module, zero in ((full, False), (ablated, True)):
    _, aux = _segment(module, **x)
    bg_maps = np.concatenate(
        [np.ravel(aux['global_bg_s4']), np.ravel(aux['local_bg_s4'])]
    )
    c = aux['attention_s4'].shape[-1] // 4
    heads = np.asarray(aux['attention_s4'])
    bg_heads = np.concatenate([heads[..., c : 2 * c], heads[..., 3 * c :]], -1)
    assert np.all(bg_maps == 0) == zero and np.all(bg_heads == 0) == zero
    assert np.any(heads[..., :c] != 0)
    assert np.any(np.asarray(aux['global_fg_s4']) != 0)
  assert not np.allclose(_logits(full, x), _logits(ablated, x), atol=1e-3)


def test_attention_switch():
  """use_attention=False equals the full model whose instance-level gates
  ignore the attention vector (every gate and final-head kernel zeroed)."""
  rng = np.random.default_rng(7)
  ablated = _model('tiny_cfbi', use_attention=False)
  x = _inputs(ablated, rng)
  blind = _model('tiny_cfbi')
  seghead = blind.dynamic_seghead
  linears = [g.IA for g in seghead.gates] + [
      seghead.IA10.IA,
      seghead.IA11.IA,
      seghead.IA_final_fg,
      seghead.IA_final_bg,
  ]
  for linear in linears:
    linear.kernel[...] = jnp.zeros_like(linear.kernel[...])
  _assert_switch_is(ablated, blind, x, atol=1e-4)


def test_feelvos_head_switch():
  """The FEELVOS head treats every slot alike: swapping the two objects'
  labels swaps their logits (the ensembler's slot-0 rule aside)."""
  rng = np.random.default_rng(8)
  module = _model('tiny_cfbi', head='feelvos')
  x = _inputs(module, rng, num_objects=2)
  swap = lambda lab: jnp.where(lab == 1, 2, jnp.where(lab == 2, 1, lab))
  swapped = dict(
      x, ref_labels=swap(x['ref_labels']), prev_labels=swap(x['prev_labels'])
  )
  a, b = _logits(module, x), _logits(module, swapped)
  np.testing.assert_allclose(a[..., [0, 2, 1]], b, atol=1e-4)
  assert not np.allclose(a[..., 1], a[..., 2], atol=1e-3)
  with pytest.raises(ValueError, match='feelvos'):
    _model('tiny_cfbip', head='feelvos')
  with pytest.raises(ValueError, match='head'):
    _model('tiny_cfbi', head='deeplab')
