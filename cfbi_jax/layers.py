"""Shared building blocks: convolutions with explicit padding, frozen BN,
GroupNorm with PyTorch's epsilon, GCT gating and ASPP-style dropout.

Every block here is NHWC. Convolutions always get explicit symmetric padding
(`dilation * (kernel - 1) // 2` unless told otherwise), because XLA's "SAME"
padding is asymmetric for stride-2 convolutions and would not match the
official PyTorch code (`cfbi-official-notes.md` §2).

Used by `backbone.py`, `embedding.py` and `ensembler.py`.
"""

import functools
import math
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from cfbi_jax import backend

# PyTorch's default init for the official training code is Kaiming-normal
# with fan_out and the ReLU gain (`cfbi-official-notes.md` §5, §6).
kaiming_fan_out = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')

BN_EPSILON = 1e-5
GN_EPSILON = 1e-5  # PyTorch's default; Flax's default is 1e-6.
GCT_EPSILON = 1e-5


def broadcast_to_like(p: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """`p` (a bias, a per-channel gate) broadcast to `x`'s shape and dtype,
  its gradient summed in float32.

  Adding or multiplying a small array into a large one sums the large
  one's gradient over the broadcast axes in the backward pass. Under
  `call_in_dtype(..., bfloat16)` that sum would run in bfloat16, whose 8
  significant bits stop growing once the partial sum is 256 times the terms
  (measured on XLA:CPU: a bias gradient over 4 x 65 x 65 pixels came out
  73% short), and training then lost 16.7 J&F points on the synthetic
  benchmark (`docs/precision_training.md`). Here the forward is the plain
  broadcast and the backward casts the gradient to float32 before summing.
  When `x` is float32 the result is `p` itself (NumPy broadcasting then
  does the rest), so the float32 path is unchanged.

  Args:
    p: an array broadcastable to `x.shape` (trailing axes aligned).
    x: the array `p` is combined with.

  Returns:
    `p` itself if `x` is float32, else `p` broadcast to `x.shape` in
    `x.dtype`.
  """
  if x.dtype == jnp.float32:
    return p
  shape, dtype, out_shape, out_dtype = p.shape, p.dtype, x.shape, x.dtype
  lead = len(out_shape) - len(shape)
  axes = tuple(range(lead)) + tuple(
      lead + i
      for i, n in enumerate(shape)
      if n == 1 and out_shape[lead + i] != 1
  )

  @jax.custom_vjp
  def broadcast(q):
    return jnp.broadcast_to(q.astype(out_dtype), out_shape)

  def forward(q):
    return broadcast(q), None

  def backward(_, g):
    total = jnp.sum(g.astype(jnp.float32), axis=axes)
    return (total.reshape(shape).astype(dtype),)

  broadcast.defvjp(forward, backward)
  return broadcast(p)


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    padding: Optional[int] = None,
    groups: int = 1,
    use_bias: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Conv:
  """A square `nnx.Conv` with explicit symmetric padding.

  Args:
    in_features: input channels.
    out_features: output channels.
    kernel_size: side of the square kernel.
    stride: spatial stride.
    dilation: kernel dilation.
    padding: symmetric padding; `dilation * (kernel_size - 1) // 2` if None.
    groups: feature groups (`in_features` for a depthwise conv).
    use_bias: whether the conv has a bias.
    rngs: NNX random streams for initialisation.

  Returns:
    The convolution module, kernel `[k, k, in / groups, out]`.
  """
  if padding is None:
    padding = dilation * (kernel_size - 1) // 2
  if kernel_size == 1 and padding == 0 and groups == 1:
    cls = PointwiseConv
  elif groups == 1 or groups == in_features == out_features:
    cls = SpatialConv
  else:
    cls = nnx.Conv
  return cls(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      strides=stride,
      padding=((padding, padding), (padding, padding)),
      kernel_dilation=dilation,
      feature_group_count=groups,
      use_bias=use_bias,
      kernel_init=kaiming_fan_out,
      rngs=rngs,
  )


class PointwiseConv(nnx.Conv):
  """A 1x1 `nnx.Conv` evaluated as a matrix product.

  Same parameters and result as the convolution (a strided 1x1 conv samples
  every `stride`-th pixel from the first), but XLA:CPU runs 1x1
  convolutions two to four times slower than the equivalent dot, and the
  ensembler is full of them.
  """

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    sy, sx = (
        (self.strides, self.strides)
        if isinstance(self.strides, int)
        else tuple(self.strides)
    )
    x = x[:, ::sy, ::sx]
    y = jnp.einsum(
        'nhwc,cd->nhwd', x, self.kernel[...][0, 0], precision=self.precision
    )
    if self.bias is not None:
      y = y + broadcast_to_like(self.bias[...], y)
    return y


def _conv_forward(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    stride: int,
    dilation: int,
    padding: int,
    depthwise: bool,
) -> jnp.ndarray:
  return jax.lax.conv_general_dilated(
      x,
      kernel,
      (stride, stride),
      ((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1] if depthwise else 1,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_tap_backward(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    stride: int,
    dilation: int,
    padding: int,
    depthwise: bool = False,
) -> jnp.ndarray:
  """A 2-D convolution whose gradient is taken tap by tap.

  The forward pass is XLA's convolution (NHWC input, HWIO kernel, zero
  padding `padding` on every side). The backward pass treats the k x k
  kernel as k^2 matrix products, one per tap (i, j), over the input pixels
  that tap reads, `xp[:, i*d :: s, j*d :: s]` of the padded input xp:

      dW[i, j] = sum_{n,y,x} xp_tap[n, y, x, :]^T g[n, y, x, :]
      dxp[tap pixels] += g @ W[i, j]^T

  (for a depthwise kernel, channel by channel: dW[i, j, 0] = sum xp_tap * g
  and dxp[tap pixels] += g * W[i, j, 0]). This is the same gradient as
  XLA's (up to float rounding). Inside a loop (the `lax.scan` over frames
  of the train step) XLA:CPU lowers convolution gradients to a generic
  loop emitter, 4x (tiny ensembler) to 50x (full ensembler) slower than
  these matrix products; outside loops its gradients take 0.6-1.3x the
  time of this form (`bench/bench_conv_grad.py`). `SpatialConv` uses it on
  CPU only: the per-frame step, run in the scan, is where training spends
  its time.

  Args:
    x: `[N, H, W, C]` input.
    kernel: `[k, k, C, O]` weights, or `[k, k, 1, C]` if `depthwise`.
    stride, dilation, padding: as in `conv`.
    depthwise: one filter per channel (`groups` = C = O in `conv`).

  Returns:
    `[N, H', W', O]`, H' = (H + 2 padding - dilation (k - 1) - 1) // stride + 1.
  """
  return _conv_forward(x, kernel, stride, dilation, padding, depthwise)


def _conv_tap_fwd(x, kernel, stride, dilation, padding, depthwise):
  return (
      _conv_forward(x, kernel, stride, dilation, padding, depthwise),
      (x, kernel),
  )


def _conv_tap_bwd(
    stride: int,
    dilation: int,
    padding: int,
    depthwise: bool,
    residuals: Tuple[jnp.ndarray, jnp.ndarray],
    g: jnp.ndarray,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  x, kernel = residuals
  _, h, w, _ = x.shape
  kh, kw = kernel.shape[:2]
  ho, wo = g.shape[1:3]
  p = padding
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  hp, wp = xp.shape[1:3]
  span_y, span_x = (ho - 1) * stride + 1, (wo - 1) * stride + 1
  dxp = jnp.zeros(xp.shape, jnp.result_type(x, g))
  zero = jnp.zeros((), dxp.dtype)
  dkernel = []
  for i in range(kh):
    row = []
    y0 = i * dilation
    for j in range(kw):
      x0 = j * dilation
      tap = xp[:, y0 : y0 + span_y : stride, x0 : x0 + span_x : stride, :]
      if depthwise:
        row.append(jnp.einsum('nhwc,nhwc->c', tap, g)[None])
        dtap = (g * kernel[i, j, 0]).astype(dxp.dtype)
      else:
        row.append(jnp.einsum('nhwc,nhwo->co', tap, g))
        dtap = jnp.einsum('nhwo,co->nhwc', g, kernel[i, j]).astype(dxp.dtype)
      # Scatter back to the pixels the tap read: interior padding spreads
      # the stride, edge padding places the window.
      dxp = dxp + jax.lax.pad(
          dtap,
          zero,
          (
              (0, 0, 0),
              (y0, hp - y0 - span_y, stride - 1),
              (x0, wp - x0 - span_x, stride - 1),
              (0, 0, 0),
          ),
      )
    dkernel.append(jnp.stack(row))
  dx = dxp[:, p : p + h, p : p + w, :]
  return dx.astype(x.dtype), jnp.stack(dkernel).astype(kernel.dtype)


conv_tap_backward.defvjp(_conv_tap_fwd, _conv_tap_bwd)


class SpatialConv(nnx.Conv):
  """A dense or depthwise k x k `nnx.Conv` (symmetric padding) with a
  CPU-friendly gradient.

  Same parameters and forward result as the convolution. On the CPU
  backend the gradient comes from `conv_tap_backward` (the synthetic
  recipe's train step: 1.4x faster, although the backbone, outside the
  scan, pays a little); on GPU/TPU, where XLA's convolution gradients are
  fast and the per-tap form would only cost memory, it is XLA's own.
  """

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if not backend.is_cpu() and (self.bias is None or x.dtype == jnp.float32):
      return super().__call__(x)
    (stride,) = set(
        (self.strides,) * 2 if isinstance(self.strides, int) else self.strides
    )
    (dilation,) = set(
        (self.kernel_dilation,) * 2
        if isinstance(self.kernel_dilation, int)
        else self.kernel_dilation
    )
    (padding,) = set(p for pair in self.padding for p in pair)
    depthwise = self.feature_group_count > 1
    if backend.is_cpu():
      y = conv_tap_backward(
          x, self.kernel[...], stride, dilation, padding, depthwise
      )
    else:  # Reduced precision with a bias (see `broadcast_to_like`).
      y = _conv_forward(
          x, self.kernel[...], stride, dilation, padding, depthwise
      )
    if self.bias is not None:
      y = y + broadcast_to_like(self.bias[...], y)
    return y


def group_norm(
    num_features: int, num_groups: int, *, rngs: nnx.Rngs
) -> nnx.GroupNorm:
  """GroupNorm with PyTorch's epsilon and two-pass variance."""
  return nnx.GroupNorm(
      num_features,
      num_groups=num_groups,
      epsilon=GN_EPSILON,
      use_fast_variance=False,
      rngs=rngs,
  )


class FrozenBatchNorm(nnx.Module):
  """The official `FrozenBatchNorm2d`: a fixed per-channel affine map.

  All four buffers are `nnx.BatchStat`, not `nnx.Param`, so an optimizer
  built with `wrt=nnx.Param` never updates them (they are buffers in the
  official code too). Names match the PyTorch state dict.
  """

  def __init__(self, num_features: int):
    self.weight = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """y = x * scale + shift, `x` of shape `[..., channels]`."""
    scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + BN_EPSILON)
    shift = self.bias[...] - self.running_mean[...] * scale
    return x * scale + shift


class Identity(nnx.Module):
  """y = x: what a `FrozenBatchNorm` becomes once folded into its conv."""

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return x


def fold_frozen_batchnorm(model: nnx.Module) -> int:
  """Folds every frozen BatchNorm into the convolution before it, in place.

  A module lists its `(conv, norm)` pairs in `NORM_AFTER_CONV` (the norm
  reads only that conv's output). For each pair whose norm is a
  `FrozenBatchNorm` with scale s and shift t (`FrozenBatchNorm.__call__`),
  conv(x) * s + t = conv'(x) with kernel W s (per output channel) and bias
  b s + t, so the conv absorbs the norm and the norm becomes `Identity`.
  On a GPU the conv, its bias and the ReLU after it then run as one fused
  kernel instead of a conv and a separate pass over its output. The
  results differ from the unfolded model only by float rounding (the
  parity tests run the folded model). For inference only: the folded
  model has other parameters and no BatchNorm buffers.

  Args:
    model: the module tree to fold (GroupNorm backbones are left as they
      are).

  Returns:
    The number of norms folded.
  """
  pairs = []
  for _, module in nnx.iter_modules(model):
    for conv_name, norm_name in getattr(module, 'NORM_AFTER_CONV', ()):
      conv, norm = getattr(module, conv_name), getattr(module, norm_name)
      if conv is not None and isinstance(norm, FrozenBatchNorm):
        pairs.append((module, conv, norm_name, norm))
  for module, conv, norm_name, norm in pairs:
    scale = norm.weight[...] * jax.lax.rsqrt(norm.running_var[...] + BN_EPSILON)
    shift = norm.bias[...] - norm.running_mean[...] * scale
    bias = shift if conv.bias is None else conv.bias[...] * scale + shift
    conv.kernel = nnx.Param(conv.kernel[...] * scale)
    conv.bias = nnx.Param(bias)
    conv.use_bias = True
    setattr(module, norm_name, Identity())
  return len(pairs)


def norm_factory(
    kind: str, groups: int, *, rngs: nnx.Rngs
) -> Callable[[int], nnx.Module]:
  """`channels -> normalisation module` for the DeepLab feature extractor.

  Args:
    kind: 'frozen_bn' (`FrozenBatchNorm`, the official layer) or
      'group_norm' (`group_norm` with gcd(groups, channels) groups).
    groups: GroupNorm groups (at most; 'group_norm' only).
    rngs: initialisation streams (GroupNorm's scale and bias).
  """
  if kind == 'frozen_bn':
    return FrozenBatchNorm
  if kind == 'group_norm':
    return lambda channels: group_norm(
        channels, math.gcd(groups, channels), rngs=rngs
    )
  raise ValueError(
      f"backbone_norm must be 'frozen_bn' or 'group_norm', " f'got {kind!r}'
  )


class GCT(nnx.Module):
  """Gated Channel Transformation, l2 mode (`networks/layers/gct.py`).

  out = x * (1 + tanh(s * gamma / sqrt(mean_c(s^2) + eps) + beta)), with
  s = alpha * sqrt(sum_hw x^2 + eps), statistics per sample.
  """

  def __init__(self, num_channels: int):
    self.alpha = nnx.Param(jnp.ones((num_channels,), jnp.float32))
    self.gamma = nnx.Param(jnp.zeros((num_channels,), jnp.float32))
    self.beta = nnx.Param(jnp.zeros((num_channels,), jnp.float32))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Gates `x` of shape `[batch, height, width, channels]`."""
    # Statistics in float32 whatever the compute dtype (`call_in_dtype`):
    # a sum of squares over every pixel overflows or rounds away in half.
    x32 = x.astype(jnp.float32)
    embedding = jnp.sqrt(
        jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True) + GCT_EPSILON
    ) * self.alpha[...].astype(jnp.float32)
    norm = self.gamma[...].astype(jnp.float32) * jax.lax.rsqrt(
        jnp.mean(jnp.square(embedding), axis=-1, keepdims=True) + GCT_EPSILON
    )
    gate = 1.0 + jnp.tanh(embedding * norm + self.beta[...].astype(jnp.float32))
    return x * broadcast_to_like(gate, x)


def call_in_dtype(module: nnx.Module, dtype, *args: Any) -> Any:
  """`module(*args)` computed in `dtype` (a mixed-precision switch).

  With `dtype` float32 this is `module(*args)`. Otherwise every floating
  array of the module's state and of `args` (nested lists and tuples
  included) is cast to `dtype` for the call; the module's own state is not
  changed, and gradients reach the float32 weights through the cast.

  Args:
    module: an NNX module.
    dtype: the compute dtype.
    *args: the call's arguments (arrays, None, or pytrees of arrays).

  Returns:
    The module's output, in `dtype` where it is floating.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return module(*args)
  cast = lambda x: (
      x.astype(dtype)
      if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)
      else x
  )
  graphdef, state = nnx.split(module)
  low = nnx.merge(graphdef, jax.tree.map(cast, state))
  return low(*jax.tree.map(cast, args))


def dropout(
    x: jnp.ndarray, rate: float, rng: Optional[jax.Array]
) -> jnp.ndarray:
  """Inverted dropout; the identity when `rng` is None (evaluation).

  `rng` is one key, or a `[N]` array of keys, one per sample of `x`'s
  leading axis: then sample i's mask depends on key i alone, so a batch
  embedded whole or frame by frame (`train_step`'s backbone remat) drops
  the same units.
  """
  if rng is None or rate == 0.0:
    return x
  if rng.ndim == 1:
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, x.shape[1:]))(
        rng
    )
  else:
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
