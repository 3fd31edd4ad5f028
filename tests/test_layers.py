"""Tests for `cfbi_jax.layers` against NumPy references.

Each block is compared with a float64 NumPy version written from
`../shared/reference/cfbi-official-notes.md`: FrozenBatchNorm (§4.1,
eps 1e-5, buffers not trainable), GCT in l2 mode (§13, eps 1e-5 in both
square roots, statistics per sample), convolutions with explicit symmetric
zero padding (§2; XLA "SAME" pads stride-2 convs asymmetrically on even
sizes) and two-pass GroupNorm with PyTorch's eps 1e-5 (§2).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import backend
from cfbi_jax import layers


def randn(rng, *shape, scale=1.0, loc=0.0):
  return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------- references
def np_conv2d(x, kernel, stride, padding, dilation=1, groups=1):
  """Direct NHWC convolution with symmetric zero padding; kernel HWIO."""
  x = np.pad(
      x.astype(np.float64),
      ((0, 0), (padding, padding), (padding, padding), (0, 0)),
  )
  n, h, w, _ = x.shape
  kh, kw, cin_g, cout = kernel.shape
  eff_h, eff_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
  out_h, out_w = (h - eff_h) // stride + 1, (w - eff_w) // stride + 1
  cout_g = cout // groups
  out = np.zeros((n, out_h, out_w, cout))
  for i in range(out_h):
    for j in range(out_w):
      for o in range(cout):
        g = o // cout_g
        for a in range(kh):
          for b in range(kw):
            pix = x[
                :,
                i * stride + a * dilation,
                j * stride + b * dilation,
                g * cin_g : (g + 1) * cin_g,
            ]
            out[:, i, j, o] += pix @ kernel[a, b, :, o].astype(np.float64)
  return out


def np_group_norm(x, groups, scale, bias, eps):
  """Two-pass GroupNorm over (H, W, channels of the group), per sample."""
  x = x.astype(np.float64)
  n, c = x.shape[0], x.shape[-1]
  out = np.empty_like(x)
  size = c // groups
  for s in range(n):
    for g in range(groups):
      part = x[s, :, :, g * size : (g + 1) * size]
      mean = part.mean()
      var = ((part - mean) ** 2).mean()
      out[s, :, :, g * size : (g + 1) * size] = (part - mean) / np.sqrt(
          var + eps
      )
  return out * scale + bias


def np_gct(x, alpha, gamma, beta, eps=1e-5):
  x = x.astype(np.float64)
  out = np.empty_like(x)
  for s in range(x.shape[0]):
    emb = np.sqrt((x[s] ** 2).sum(axis=(0, 1)) + eps) * alpha  # [C]
    norm = gamma / np.sqrt((emb**2).mean() + eps)
    out[s] = x[s] * (1.0 + np.tanh(emb * norm + beta))
  return out


# ------------------------------------------------------------ FrozenBatchNorm
def test_frozen_batch_norm_matches_numpy():
  rng = np.random.default_rng(0)
  bn = layers.FrozenBatchNorm(5)
  weight = 1 + randn(rng, 5, scale=0.3)
  bias = randn(rng, 5, scale=0.5)
  mean = randn(rng, 5, scale=0.5)
  var = rng.uniform(1e-4, 2.0, 5).astype(np.float32)
  var[0] = 1e-6  # eps 1e-5 dominates here: catches a wrong epsilon.
  bn.weight[...] = jnp.asarray(weight)
  bn.bias.set_value(jnp.asarray(bias))
  bn.running_mean[...] = jnp.asarray(mean)
  bn.running_var.set_value(jnp.asarray(var))
  x = randn(rng, 2, 3, 4, 5)
  got = np.asarray(bn(jnp.asarray(x)))
  want = (x.astype(np.float64) - mean) / np.sqrt(
      var.astype(np.float64) + 1e-5
  ) * weight + bias
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_frozen_batch_norm_buffers_are_batch_stats():
  bn = layers.FrozenBatchNorm(4)
  for name in ('weight', 'bias', 'running_mean', 'running_var'):
    var = getattr(bn, name)
    assert isinstance(var, nnx.BatchStat), name
    assert not isinstance(var, nnx.Param), name
  assert not jax.tree.leaves(nnx.state(bn, nnx.Param))
  stats = nnx.state(bn, nnx.BatchStat)
  assert len(jax.tree.leaves(stats)) == 4
  # Init is the identity map (weight 1, bias 0, mean 0, var 1) up to eps.
  x = jnp.arange(8.0).reshape(2, 4)
  np.testing.assert_allclose(
      np.asarray(bn(x)), np.asarray(x) / np.sqrt(1 + 1e-5), rtol=1e-6
  )


def test_frozen_batch_norm_has_no_gradient_through_optimizer_filter():
  # Gradients taken w.r.t. nnx.Param see no BN buffers at all.
  bn = layers.FrozenBatchNorm(3)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3)))))(bn)
  assert not jax.tree.leaves(grads)


# ----------------------------------------------------------------------- GCT
@pytest.mark.parametrize('shape', [(2, 5, 7, 6), (3, 1, 1, 4), (1, 9, 4, 16)])
def test_gct_matches_numpy(shape):
  rng = np.random.default_rng(1)
  c = shape[-1]
  gct = layers.GCT(c)
  alpha = 1 + randn(rng, c, scale=0.3)
  gamma = randn(rng, c, scale=1.0)
  beta = randn(rng, c, scale=0.3)
  gct.alpha[...] = jnp.asarray(alpha)
  gct.gamma[...] = jnp.asarray(gamma)
  gct.beta[...] = jnp.asarray(beta)
  x = randn(rng, *shape)
  # One sample with tiny activations makes eps matter inside the sqrt.
  x[0] *= 1e-3
  got = np.asarray(gct(jnp.asarray(x)))
  want = np_gct(
      x,
      alpha.astype(np.float64),
      gamma.astype(np.float64),
      beta.astype(np.float64),
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gct_statistics_are_per_sample():
  rng = np.random.default_rng(2)
  gct = layers.GCT(4)
  gct.gamma[...] = jnp.asarray(randn(rng, 4))
  x = randn(rng, 3, 5, 5, 4)
  together = np.asarray(gct(jnp.asarray(x)))
  for s in range(3):
    alone = np.asarray(gct(jnp.asarray(x[s : s + 1])))
    np.testing.assert_allclose(together[s : s + 1], alone, rtol=1e-6, atol=1e-6)


def test_gct_init_is_identity_and_params_trainable():
  gct = layers.GCT(3)
  x = randn(np.random.default_rng(3), 1, 4, 4, 3)
  np.testing.assert_allclose(np.asarray(gct(jnp.asarray(x))), x, rtol=1e-6)
  assert len(jax.tree.leaves(nnx.state(gct, nnx.Param))) == 3


# ---------------------------------------------------------------------- conv
@pytest.mark.parametrize('size,out_size', [(9, 5), (10, 5)])
def test_stride2_conv_symmetric_padding(size, out_size):
  rng = np.random.default_rng(4)
  conv = layers.conv(3, 4, 3, stride=2, rngs=nnx.Rngs(0))
  assert conv.padding == ((1, 1), (1, 1))
  x = randn(rng, 2, size, size, 3)
  got = np.asarray(conv(jnp.asarray(x)))
  assert got.shape == (2, out_size, out_size, 4)
  kernel = np.asarray(conv.kernel[...])
  assert kernel.shape == (3, 3, 3, 4)
  want = np_conv2d(x, kernel, stride=2, padding=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_stride2_conv_even_input_differs_from_xla_same():
  # On an even input XLA "SAME" pads (0, 1); the official code pads (1, 1).
  rng = np.random.default_rng(5)
  conv = layers.conv(2, 3, 3, stride=2, rngs=nnx.Rngs(0))
  x = randn(rng, 1, 8, 8, 2)
  got = np.asarray(conv(jnp.asarray(x)))
  same = np.asarray(
      jax.lax.conv_general_dilated(
          jnp.asarray(x),
          conv.kernel[...],
          (2, 2),
          'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )
  )
  assert got.shape == same.shape
  assert np.abs(got - same).max() > 1e-2


@pytest.mark.parametrize(
    'kernel_size,dilation,groups,use_bias',
    [
        (3, 2, 1, False),
        (3, 1, 4, True),  # depthwise, as the CFBI embedding head
        (1, 1, 1, True),
        (7, 1, 1, False),
    ],
)
def test_conv_default_padding_keeps_size(
    kernel_size, dilation, groups, use_bias
):
  rng = np.random.default_rng(6)
  conv = layers.conv(
      4,
      4,
      kernel_size,
      dilation=dilation,
      groups=groups,
      use_bias=use_bias,
      rngs=nnx.Rngs(0),
  )
  pad = dilation * (kernel_size - 1) // 2
  assert conv.padding == ((pad, pad), (pad, pad))
  assert (conv.bias is not None) == use_bias
  if use_bias:
    conv.bias[...] = jnp.asarray(randn(rng, 4))
  x = randn(rng, 1, 9, 8, 4)
  got = np.asarray(conv(jnp.asarray(x)))
  want = np_conv2d(x, np.asarray(conv.kernel[...]), 1, pad, dilation, groups)
  if use_bias:
    want += np.asarray(conv.bias[...])
  assert got.shape == (1, 9, 8, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def np_conv2d_grads(
    x, kernel, cotangent, stride, padding, dilation, depthwise=False
):
  """d/dx and d/dkernel of sum(conv(x) * cotangent), float64, by the
  definition: every output pixel adds its tap products back (channel by
  channel for a depthwise kernel `[k, k, 1, C]`)."""
  x = x.astype(np.float64)
  xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  dxp, dk = np.zeros_like(xp), np.zeros(kernel.shape)
  kernel = kernel.astype(np.float64)
  for i in range(cotangent.shape[1]):
    for j in range(cotangent.shape[2]):
      g = cotangent[:, i, j].astype(np.float64)  # [n, out]
      for a in range(kernel.shape[0]):
        for b in range(kernel.shape[1]):
          y, z = i * stride + a * dilation, j * stride + b * dilation
          if depthwise:
            dk[a, b, 0] += (xp[:, y, z] * g).sum(axis=0)
            dxp[:, y, z] += g * kernel[a, b, 0]
          else:
            dk[a, b] += xp[:, y, z].T @ g
            dxp[:, y, z] += g @ kernel[a, b].T
  h, w = x.shape[1:3]
  return dxp[:, padding : padding + h, padding : padding + w], dk


@pytest.mark.parametrize(
    'size,kernel_size,stride,dilation,padding,depthwise',
    [
        ((9, 8), 3, 1, 1, 1, False),
        ((10, 9), 3, 2, 1, 1, False),  # stride 2: the last row / column unread
        ((11, 11), 3, 1, 2, 2, False),
        ((9, 12), 3, 1, 4, 4, False),  # dilation wider than half the input
        ((13, 10), 7, 2, 1, 3, False),  # the ResNet stem
        ((8, 8), 3, 2, 2, 0, False),  # no padding
        ((12, 9), 7, 1, 1, 3, True),  # FEELVOS head's depthwise 7x7
        ((11, 10), 3, 2, 2, 0, True),  # MobileNetV2's depthwise (own padding)
    ],
)
def test_conv_tap_backward_gradients_match_numpy(
    size, kernel_size, stride, dilation, padding, depthwise
):
  rng = np.random.default_rng(11)
  channels = 4
  x = randn(rng, 2, *size, channels)
  kernel = randn(
      rng,
      kernel_size,
      kernel_size,
      1 if depthwise else channels,
      channels if depthwise else 5,
  )
  fn = functools.partial(
      layers.conv_tap_backward,
      stride=stride,
      dilation=dilation,
      padding=padding,
      depthwise=depthwise,
  )
  y, vjp = jax.vjp(lambda a, k: fn(a, k), jnp.asarray(x), jnp.asarray(kernel))
  np.testing.assert_allclose(
      np.asarray(y),
      np_conv2d(
          x, kernel, stride, padding, dilation, channels if depthwise else 1
      ),
      rtol=1e-5,
      atol=1e-4,
  )
  cotangent = randn(rng, *y.shape)
  dx, dk = vjp(jnp.asarray(cotangent))
  want_dx, want_dk = np_conv2d_grads(
      x, kernel, cotangent, stride, padding, dilation, depthwise
  )
  np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=1e-4, atol=1e-4)


def test_spatial_conv_gradient_with_bias_matches_xla():
  # The layer `conv` builds for k > 1 on CPU takes its gradient tap by tap;
  # XLA's own convolution gradient is the reference.
  rng = np.random.default_rng(12)
  conv = layers.conv(
      4, 6, 3, stride=2, dilation=1, use_bias=True, rngs=nnx.Rngs(0)
  )
  assert isinstance(conv, layers.SpatialConv)
  conv.bias[...] = jnp.asarray(randn(rng, 6))
  x = jnp.asarray(randn(rng, 2, 11, 10, 4))
  weight = jnp.asarray(randn(rng, 2, 6, 5, 6))

  def xla(kernel, bias, x):
    y = (
        jax.lax.conv_general_dilated(
            x,
            kernel,
            (2, 2),
            ((1, 1), (1, 1)),
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        )
        + bias
    )
    return jnp.sum(jnp.tanh(y) * weight)

  def ours(module, x):
    return jnp.sum(jnp.tanh(module(x)) * weight)

  want = jax.grad(xla, argnums=(0, 1, 2))(conv.kernel[...], conv.bias[...], x)
  grads, dx = nnx.grad(ours, argnums=(0, 1))(conv, x)
  got = (grads['kernel'][...], grads['bias'][...], dx)
  for g, w in zip(got, want):
    np.testing.assert_allclose(
        np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5
    )


# --------------------------------------------------------- broadcast_to_like
@pytest.mark.parametrize('p_shape', [(8,), (4, 1, 1, 8)])
def test_broadcast_to_like_sums_bfloat16_gradients_in_float32(p_shape):
  rng = np.random.default_rng(13)
  x = jnp.asarray(1 + np.abs(randn(rng, 4, 40, 40, 8))).astype(jnp.bfloat16)
  p = jnp.asarray(1 + np.abs(randn(rng, *p_shape)))
  weight = jnp.asarray(np.abs(randn(rng, 4, 40, 40, 8)))
  assert layers.broadcast_to_like(p, x.astype(jnp.float32)) is p
  np.testing.assert_array_equal(
      np.asarray(layers.broadcast_to_like(p, x), np.float32),
      np.broadcast_to(np.asarray(p.astype(jnp.bfloat16), np.float32), x.shape),
  )

  def loss(p, wide):
    q = layers.broadcast_to_like(p, x) if wide else p.astype(jnp.bfloat16)
    return jnp.sum((x * q).astype(jnp.float32) * weight)

  # d loss / d p = sum over the broadcast axes of x * weight, in float64.
  terms = np.asarray(x, np.float64) * np.asarray(weight, np.float64)
  axes = (0, 1, 2) if len(p_shape) == 1 else (1, 2)
  want = terms.sum(axis=axes).reshape(p_shape)
  got = np.asarray(jax.jit(jax.grad(loss), static_argnums=1)(p, True))
  np.testing.assert_allclose(got, want, rtol=1e-2)
  # Plain broadcasting in bfloat16 is what this avoids: its sum stalls
  # (7% short over 1,600 pixels, 73% over 4 x 65 x 65).
  plain = np.asarray(jax.jit(jax.grad(loss), static_argnums=1)(p, False))
  assert np.max(np.abs(plain - want) / want) > 0.03


def test_spatial_conv_bias_in_bfloat16_on_the_gpu_path():
  # The GPU/TPU form of a biased k x k conv in bfloat16 adds its bias
  # through broadcast_to_like: same forward, float32-summed bias gradient.
  rng = np.random.default_rng(14)
  conv = layers.conv(4, 6, 3, use_bias=True, rngs=nnx.Rngs(0))
  conv.bias[...] = jnp.asarray(randn(rng, 6))
  x = jnp.asarray(randn(rng, 2, 48, 48, 4))

  def loss(module, x):
    y = layers.call_in_dtype(module, jnp.bfloat16, x)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  want = np.asarray(
      jax.grad(
          lambda b: jnp.sum(
              (
                  jax.lax.conv_general_dilated(
                      x,
                      conv.kernel[...],
                      (1, 1),
                      ((1, 1), (1, 1)),
                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                  )
                  + b
              )
              ** 2
          )
      )(conv.bias[...])
  )
  with backend.tracing_for('cuda'):
    grads = nnx.grad(loss)(conv, x)
    y = layers.call_in_dtype(conv, jnp.bfloat16, x)
  assert conv.bias is not None and y.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(grads['bias'][...], np.float32), want, rtol=0.03, atol=0.5
  )


# ---------------------------------------------------------------- group_norm
def test_group_norm_eps_and_affine():
  rng = np.random.default_rng(7)
  gn = layers.group_norm(8, 4, rngs=nnx.Rngs(0))
  assert gn.epsilon == 1e-5
  scale = 1 + randn(rng, 8, scale=0.2)
  bias = randn(rng, 8, scale=0.2)
  gn.scale[...] = jnp.asarray(scale)
  gn.bias[...] = jnp.asarray(bias)
  # Variance ~1e-5, comparable to eps: 1e-6 (Flax's default) would be off
  # by tens of percent.
  x = randn(rng, 2, 5, 6, 8, scale=3e-3)
  got = np.asarray(gn(jnp.asarray(x)))
  want = np_group_norm(x, 4, scale, bias, 1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  wrong_eps = np_group_norm(x, 4, scale, bias, 1e-6)
  assert np.abs(wrong_eps - want).max() > 0.1


def test_group_norm_two_pass_variance_with_large_mean():
  # mean 300, std 0.05: E[x^2] - E[x]^2 in float32 loses the variance.
  rng = np.random.default_rng(8)
  gn = layers.group_norm(6, 3, rngs=nnx.Rngs(0))
  x = randn(rng, 2, 7, 7, 6, scale=0.05, loc=300.0)
  got = np.asarray(gn(jnp.asarray(x)))
  want = np_group_norm(x, 3, 1.0, 0.0, 1e-5)
  np.testing.assert_allclose(got, want, atol=5e-3)


# ------------------------------------------------------------------- dropout
def test_dropout_identity_without_rng():
  x = jnp.asarray(randn(np.random.default_rng(9), 3, 4, 5))
  np.testing.assert_array_equal(
      np.asarray(layers.dropout(x, 0.1, None)), np.asarray(x)
  )
  np.testing.assert_array_equal(
      np.asarray(layers.dropout(x, 0.0, jax.random.key(0))), np.asarray(x)
  )


def test_dropout_deterministic_per_key_and_scaled():
  x = jnp.asarray(1 + np.abs(randn(np.random.default_rng(10), 64, 64)))
  a = np.asarray(layers.dropout(x, 0.25, jax.random.key(1)))
  b = np.asarray(layers.dropout(x, 0.25, jax.random.key(1)))
  c = np.asarray(layers.dropout(x, 0.25, jax.random.key(2)))
  np.testing.assert_array_equal(a, b)
  assert np.any(a != c)
  kept = a != 0
  # Inverted dropout: kept values are x / (1 - rate), the rest are 0.
  np.testing.assert_allclose(a[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert abs(1 - kept.mean() - 0.25) < 0.03


def test_dropout_with_one_key_per_sample():
  # A [N] key array keys sample i by key i alone: the batch's masks are the
  # samples' masks taken one by one (what lets the training step embed a
  # clip whole or frame by frame with the same dropout).
  x = jnp.asarray(1 + np.abs(randn(np.random.default_rng(11), 4, 8, 8, 3)))
  keys = jax.random.split(jax.random.key(3), 4)
  whole = np.asarray(layers.dropout(x, 0.25, keys))
  for i in range(4):
    np.testing.assert_array_equal(
        whole[i], np.asarray(layers.dropout(x[i], 0.25, keys[i]))
    )
  assert np.any(whole[0] != whole[1])
  assert abs(1 - (whole != 0).mean() - 0.25) < 0.05


def _randomise_batch_norms(model, seed=0):
  rng = np.random.default_rng(seed)
  for _, module in nnx.iter_modules(model):
    if isinstance(module, layers.FrozenBatchNorm):
      n = module.weight.shape[0]
      module.weight[...] = randn(rng, n, scale=0.3, loc=1.0)
      module.bias[...] = randn(rng, n)
      module.running_mean[...] = randn(rng, n)
      module.running_var[...] = rng.uniform(0.3, 3.0, n).astype(np.float32)


@pytest.mark.parametrize('backbone', ['resnet', 'mobilenetv2'])
def test_folded_batch_norms_give_the_same_features(backbone):
  """Every frozen BatchNorm folds into its conv (none is left), and the
  folded DeepLab computes the unfolded one's features up to rounding."""
  from cfbi_jax import backbone as backbone_lib  # pylint: disable=g-import-not-at-top

  model = backbone_lib.DeepLab(
      backbone, 16, 16, (1, 1, 1, 1), 8, rngs=nnx.Rngs(0)
  )
  _randomise_batch_norms(model)
  norms = sum(
      isinstance(m, layers.FrozenBatchNorm) for _, m in nnx.iter_modules(model)
  )
  x = randn(np.random.default_rng(1), 1, 33, 49, 3)

  def features(m):
    graphdef, state = nnx.split(m)
    return jax.jit(lambda s: nnx.merge(graphdef, s)(x))(state)

  want = features(model)
  folded = nnx.clone(model)
  assert layers.fold_frozen_batchnorm(folded) == norms > 0
  assert not any(
      isinstance(m, layers.FrozenBatchNorm) for _, m in nnx.iter_modules(folded)
  )
  got = features(folded)
  for name, value in want.items():
    if value is not None:
      scale = float(np.abs(value).max())
      np.testing.assert_allclose(
          got[name], value, atol=2e-6 * scale, err_msg=name
      )
  assert layers.fold_frozen_batchnorm(folded) == 0  # nothing left to fold


def test_group_norm_backbones_are_not_folded():
  from cfbi_jax import backbone as backbone_lib  # pylint: disable=g-import-not-at-top

  model = backbone_lib.DeepLab(
      'resnet',
      16,
      16,
      (1, 1, 1, 1),
      8,
      norm='group_norm',
      norm_groups=4,
      rngs=nnx.Rngs(0),
  )
  assert layers.fold_frozen_batchnorm(model) == 0
