"""Tests for `cfbi_jax.backbone`: feature strides, MobileNetV2 padding, size.

* Feature shapes of a tiny ResNet DeepLab and the full MobileNetV2 on odd
  input sizes follow (n - 1) // s + 1 at stride s
  (`../shared/reference/cfbi-official-notes.md` §2, §4).
* `InvertedResidual` is compared with a NumPy block written from §4.3 that
  zero-pads the block input *before* the 1x1 expansion, and is shown to
  differ on the border from the usual pad-before-depthwise block.
* `norm='group_norm'` puts a GroupNorm wherever the official model has a
  frozen BN (same names), and it normalises: at initialisation the
  frozen-BN DeepLab is positively homogeneous (f(7x) = 7 f(x): bias-free
  convs, identity BN, ReLU, pooling, bilinear resizing), the GroupNorm one
  scale-invariant (f(7x) = f(x)).
* The default ResNet-101 DeepLab has as many parameters and frozen-BN
  buffer values as the `feature_extracter.*` entries of the official state
  dict listed in the parity fixture manifest
  (`$CFBI_PARITY_DIR/cfbi_resnet101/manifest.json`).
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import backbone
from cfbi_jax import resize
from tests import parity_fixtures as pf
from tests.random_weights import randn, random_model

PARITY_DIR = pathlib.Path(pf.PARITY_DIR)
MANIFEST = PARITY_DIR / 'cfbi_resnet101' / 'manifest.json'

TINY_RESNET = dict(
    aspp_channels=32,
    decoder_channels=32,
    resnet_blocks=(1, 1, 1, 1),
    resnet_width=8,
)


def abstract_features(make, image_hw):
  """`out_channels` and output shapes of `make()(images)`, nothing run."""
  channels = nnx.eval_shape(make).out_channels  # plain Python attribute
  feats = nnx.eval_shape(lambda: make()(jnp.zeros((2,) + image_hw + (3,))))
  return channels, feats


# ---------------------------------------------------------------- references
def relu6(x):
  return np.clip(x, 0.0, 6.0)


def np_frozen_bn(x, bn):
  weight, bias = np.asarray(bn.weight[...]), np.asarray(bn.bias[...])
  mean, var = np.asarray(bn.running_mean[...]), np.asarray(bn.running_var[...])
  return (x - mean) / np.sqrt(var.astype(np.float64) + 1e-5) * weight + bias


def np_pointwise(x, conv):
  return np.einsum('nhwc,co->nhwo', x, np.asarray(conv.kernel[...])[0, 0])


def np_depthwise_valid(x, conv, stride, dilation):
  """3x3 depthwise conv without padding; kernel `[3, 3, 1, C]`."""
  kernel = np.asarray(conv.kernel[...], np.float64)[:, :, 0, :]
  n, h, w, c = x.shape
  out_h = (h - 2 * dilation - 1) // stride + 1
  out_w = (w - 2 * dilation - 1) // stride + 1
  out = np.zeros((n, out_h, out_w, c))
  for i in range(out_h):
    for j in range(out_w):
      for a in range(3):
        for b in range(3):
          out[:, i, j] += (
              x[:, i * stride + a * dilation, j * stride + b * dilation]
              * kernel[a, b]
          )
  return out


def np_inverted_residual(x, block, stride, dilation, pad_before_expansion):
  """MobileNetV2 block (t != 1); where the zero padding goes is selectable.

  `pad_before_expansion=True` is the official code (the block input is
  padded, so the depthwise conv sees ReLU6(BN shift) on the border);
  False is the textbook block (the expanded map is zero-padded).
  """
  x = x.astype(np.float64)
  pad = ((0, 0), (dilation, dilation), (dilation, dilation), (0, 0))
  y = np.pad(x, pad) if pad_before_expansion else x
  y = relu6(np_frozen_bn(np_pointwise(y, block.expand_conv), block.expand_bn))
  if not pad_before_expansion:
    y = np.pad(y, pad)
  y = relu6(
      np_frozen_bn(
          np_depthwise_valid(y, block.dw_conv, stride, dilation), block.dw_bn
      )
  )
  y = np_frozen_bn(np_pointwise(y, block.project_conv), block.project_bn)
  return x + y if block.use_res_connect else y


# ------------------------------------------------------------ feature shapes
@pytest.mark.parametrize('image_hw', [(65, 97), (33, 49)])
def test_tiny_resnet_deeplab_feature_shapes(image_hw):
  channels, feats = abstract_features(
      lambda: backbone.DeepLab('resnet', rngs=nnx.Rngs(0), **TINY_RESNET),
      image_hw,
  )
  h, w = image_hw
  width = TINY_RESNET['resnet_width']
  assert channels == {
      'low_s4': 4 * width,
      'mid_s8': 8 * width,
      'aspp_s16': 32,
      'decoder_s4': 32,
  }
  stride_and_channels = {
      'low_s4': (4, channels['low_s4']),
      'decoder_s4': (4, channels['decoder_s4']),
      'mid_s8': (8, channels['mid_s8']),
      'backbone_s16': (16, 32 * width),
      'aspp_s16': (16, channels['aspp_s16']),
  }
  assert set(feats) == set(stride_and_channels)
  for name, (stride, c) in stride_and_channels.items():
    want = (2, resize.stride_size(h, stride), resize.stride_size(w, stride), c)
    assert feats[name].shape == want, name
  # Spelled out for 65 x 97: /4 17 x 25, /8 9 x 13, /16 5 x 7.
  if image_hw == (65, 97):
    assert feats['low_s4'].shape[1:3] == (17, 25)
    assert feats['mid_s8'].shape[1:3] == (9, 13)
    assert feats['aspp_s16'].shape[1:3] == (5, 7)


def test_tiny_resnet_deeplab_runs_finite_and_dropout_only_with_rng():
  model = random_model(
      lambda: backbone.DeepLab('resnet', rngs=nnx.Rngs(0), **TINY_RESNET), 0
  )
  images = jnp.asarray(randn(np.random.default_rng(1), 1, 33, 49, 3))
  run = nnx.jit(lambda m, x, key: m(x, key))
  plain = nnx.jit(lambda m, x: m(x))
  feats = plain(model, images)
  again = plain(model, images)
  dropped = run(model, images, jax.random.key(0))
  for name, value in feats.items():
    assert np.all(np.isfinite(np.asarray(value))), name
  np.testing.assert_array_equal(
      np.asarray(feats['aspp_s16']), np.asarray(again['aspp_s16'])
  )
  np.testing.assert_array_equal(
      np.asarray(feats['low_s4']), np.asarray(dropped['low_s4'])
  )
  aspp, aspp_drop = np.asarray(feats['aspp_s16']), np.asarray(
      dropped['aspp_s16']
  )
  kept = aspp_drop != 0
  np.testing.assert_allclose(aspp_drop[kept], aspp[kept] / 0.9, rtol=1e-5)
  assert np.any(aspp_drop[aspp > 0] == 0)


def test_group_norm_backbone_normalises():
  make = lambda norm: backbone.DeepLab(
      'resnet', norm=norm, norm_groups=4, rngs=nnx.Rngs(0), **TINY_RESNET
  )
  frozen, grouped = make('frozen_bn'), make('group_norm')
  norm_paths = lambda m, kind: sorted(
      path for path, sub in nnx.iter_modules(m) if isinstance(sub, kind)
  )
  assert norm_paths(frozen, backbone.layers.FrozenBatchNorm) == norm_paths(
      grouped, nnx.GroupNorm
  )
  assert not norm_paths(grouped, backbone.layers.FrozenBatchNorm)
  images = jnp.asarray(randn(np.random.default_rng(2), 2, 33, 49, 3))
  run = nnx.jit(lambda m, x: m(x)['decoder_s4'])
  base, scaled = run(frozen, images), run(frozen, 7.0 * images)
  np.testing.assert_allclose(scaled, 7.0 * base, rtol=1e-4, atol=1e-3)
  base, scaled = run(grouped, images), run(grouped, 7.0 * images)
  np.testing.assert_allclose(scaled, base, rtol=1e-3, atol=1e-4)
  assert np.std(np.asarray(base)) > 0.1
  with pytest.raises(ValueError, match='backbone_norm'):
    make('batch_norm')


def test_mobilenetv2_feature_shapes():
  channels, feats = abstract_features(
      lambda: backbone.MobileNetV2(rngs=nnx.Rngs(0)), (65, 65)
  )
  assert channels == (24, None, 320)
  assert set(feats) == {'low_s4', 'backbone_s16'}
  assert feats['low_s4'].shape == (2, 17, 17, 24)
  assert feats['backbone_s16'].shape == (2, 5, 5, 320)


def test_mobilenet_deeplab_feature_shapes():
  channels, feats = abstract_features(
      lambda: backbone.DeepLab('mobilenetv2', rngs=nnx.Rngs(0)), (65, 65)
  )
  assert channels == {
      'low_s4': 24,
      'mid_s8': None,
      'aspp_s16': 256,
      'decoder_s4': 256,
  }
  assert feats['decoder_s4'].shape == (2, 17, 17, 256)
  assert feats['aspp_s16'].shape == (2, 5, 5, 256)
  assert 'mid_s8' not in feats


def test_deeplab_rejects_unknown_backbone():
  with pytest.raises(ValueError):
    backbone.DeepLab('vgg', rngs=nnx.Rngs(0))


# --------------------------------------------------- MobileNetV2 padding quirk
@pytest.mark.parametrize(
    'inp,oup,stride,dilation',
    [
        pytest.param(4, 4, 1, 1, id='residual_d1'),
        pytest.param(4, 6, 2, 1, id='stride2_d1'),
        pytest.param(4, 4, 1, 2, id='residual_d2'),
    ],
)
def test_inverted_residual_pads_before_expansion(inp, oup, stride, dilation):
  block = random_model(
      lambda: backbone.InvertedResidual(
          inp, oup, stride, dilation, 6, rngs=nnx.Rngs(0)
      ),
      2,
  )
  x = randn(np.random.default_rng(3), 2, 9, 8, inp)
  got = np.asarray(block(jnp.asarray(x)))
  official = np_inverted_residual(x, block, stride, dilation, True)
  textbook = np_inverted_residual(x, block, stride, dilation, False)
  assert got.shape == official.shape
  np.testing.assert_allclose(got, official, rtol=1e-5, atol=1e-5)
  # The two paddings agree away from the border and differ on it, because
  # the expansion BN shift is nonzero.
  border = max(1, dilation // stride)
  inner = (slice(None), slice(border, -border), slice(border, -border))
  np.testing.assert_allclose(official[inner], textbook[inner], atol=1e-9)
  assert np.abs(official - textbook).max() > 1e-2


def test_inverted_residual_shift_reaches_border():
  # Hand case: zero input and zero expansion kernel; the expanded map is
  # ReLU6(BN shift) everywhere, including the padded border, so the
  # depthwise output is the same at every pixel, corners included.
  block = random_model(
      lambda: backbone.InvertedResidual(2, 2, 1, 1, 6, rngs=nnx.Rngs(0)), 4
  )
  block.expand_conv.kernel[...] = jnp.zeros_like(block.expand_conv.kernel[...])
  out = np.asarray(block(jnp.zeros((1, 5, 5, 2))))
  np.testing.assert_allclose(
      out, np.broadcast_to(out[:, 2:3, 2:3], out.shape), atol=1e-6
  )
  textbook = np_inverted_residual(np.zeros((1, 5, 5, 2)), block, 1, 1, False)
  assert np.abs(textbook[0, 0, 0] - textbook[0, 2, 2]).max() > 1e-3


# ----------------------------------------------------------- parameter count
def _manifest_counts():
  with open(MANIFEST) as f:
    entries = json.load(f)['entries']
  entries = [
      e
      for e in entries
      if e['key'].startswith('feature_extracter.')
      and e['init']['dist'] != 'alias'
  ]
  total = sum(math.prod(e['shape']) for e in entries)
  conv_weights = sum(1 for e in entries if len(e['shape']) == 4)
  return total, conv_weights, len(entries) - conv_weights


@pytest.mark.skipif(
    not MANIFEST.is_file(), reason=f'no parity manifest at {MANIFEST}'
)
def test_resnet101_deeplab_parameter_count_matches_official():
  model = nnx.eval_shape(lambda: backbone.DeepLab('resnet', rngs=nnx.Rngs(0)))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  both = jax.tree.leaves(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  every = jax.tree.leaves(nnx.state(model))
  assert len(both) == len(every)  # no other variable kinds
  total, conv_weights, bn_buffers = _manifest_counts()
  assert sum(math.prod(leaf.shape) for leaf in both) == total
  assert total == 59_448_448
  # Params are exactly the (bias-free) conv kernels, the rest BN buffers.
  assert len(params) == conv_weights
  assert len(stats) == bn_buffers
