"""Collaborative ensemblers of CFBI and CFBI+ (`networks/cfbi/ensembler.py`).

The object axis travels as the batch axis: every array here is
`[N, h, w, channels]` with N = batch x object slots, and `head` is the
matching `[N, head_dim]` attention vector. Blocks (notes §13-16):

* `GNBottleneck`: GCT-gated bottleneck with GroupNorm; GCT acts on the main
  branch only, the shortcut takes the ungated input.
* `EnsemblerASPP`: GCT-gated ASPP (pool branch without norm).
* `DynamicPreHead`: CFBI's 1x1 conv (with bias) + GN(16) + ReLU over the 15
  matching channels.
* `CollaborativeEnsembler` (CFBI) and `CollaborativeEnsemblerMS` (CFBI+)
  share `_decode_and_predict` (bicubic upsampling, shortcut fusion and the
  dynamic per-object 1x1 heads).

FEELVOS's dynamic segmentation head, the ablation baseline of CFBI Table 4
(`CFBI(head='feelvos')`), is `models/feelvos.py::FeelvosHead`.

Widths are explicit constructor fields; `dim` (256 officially) is the width
of the stride-4 stages, 2 * dim that of the deeper ones.
"""

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from cfbi_jax import layers
from cfbi_jax import resize
from cfbi_jax.attention import IAGate


class GNBottleneck(nnx.Module):
  """Bottleneck with GroupNorm and a GCT gate (`networks/layers/gct.py`)."""

  def __init__(
      self,
      inplanes: int,
      outplanes: int,
      stride: int = 1,
      dilation: int = 1,
      gn_groups: int = 32,
      *,
      rngs: nnx.Rngs,
  ):
    planes = outplanes // 4
    self.GCT1 = layers.GCT(inplanes)
    self.conv1 = layers.conv(inplanes, planes, 1, rngs=rngs)
    self.bn1 = layers.group_norm(planes, gn_groups, rngs=rngs)
    self.conv2 = layers.conv(
        planes, planes, 3, stride=stride, dilation=dilation, rngs=rngs
    )
    self.bn2 = layers.group_norm(planes, gn_groups, rngs=rngs)
    self.conv3 = layers.conv(planes, outplanes, 1, rngs=rngs)
    self.bn3 = layers.group_norm(outplanes, gn_groups, rngs=rngs)
    if stride != 1 or inplanes != outplanes:
      self.downsample_conv = layers.conv(
          inplanes, outplanes, 1, stride=stride, rngs=rngs
      )
      self.downsample_gn = layers.group_norm(outplanes, gn_groups, rngs=rngs)
    else:
      self.downsample_conv = None
      self.downsample_gn = None

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = self.GCT1(x)
    y = jax.nn.relu(self.bn1(self.conv1(y)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.downsample_conv is not None:
      x = self.downsample_gn(self.downsample_conv(x))
    return jax.nn.relu(y + x)


class ASPPBranch(nnx.Module):
  """GCT -> conv (no bias) -> GN -> ReLU."""

  def __init__(
      self,
      inplanes: int,
      planes: int,
      kernel_size: int,
      dilation: int,
      gn_groups: int,
      *,
      rngs: nnx.Rngs,
  ):
    self.GCT = layers.GCT(inplanes)
    self.atrous_conv = layers.conv(
        inplanes, planes, kernel_size, dilation=dilation, rngs=rngs
    )
    self.bn = layers.group_norm(planes, gn_groups, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return jax.nn.relu(self.bn(self.atrous_conv(self.GCT(x))))


class EnsemblerASPP(nnx.Module):
  """The ensembler's ASPP (`networks/layers/aspp.py`), no dropout."""

  def __init__(
      self,
      inplanes: int,
      outplanes: int,
      gn_groups: int,
      rates: Tuple[int, ...] = (1, 6, 12, 18),
      *,
      rngs: nnx.Rngs,
  ):
    planes = outplanes // 2
    self.branches = nnx.List(
        [
            ASPPBranch(
                inplanes, planes, 1 if r == 1 else 3, r, gn_groups, rngs=rngs
            )
            for r in rates
        ]
    )
    self.pool_conv = layers.conv(inplanes, planes, 1, rngs=rngs)
    self.GCT = layers.GCT(planes * (len(rates) + 1))
    self.conv1 = layers.conv(planes * (len(rates) + 1), outplanes, 1, rngs=rngs)
    self.bn1 = layers.group_norm(outplanes, gn_groups, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    outs = [branch(x) for branch in self.branches]
    pooled = jax.nn.relu(
        self.pool_conv(jnp.mean(x, axis=(1, 2), keepdims=True))
    )
    outs.append(
        jnp.broadcast_to(
            layers.broadcast_to_like(pooled, outs[0]),
            outs[0].shape[:3] + pooled.shape[3:],
        )
    )
    y = self.GCT(jnp.concatenate(outs, axis=-1))
    return jax.nn.relu(self.bn1(self.conv1(y)))


class DynamicPreHead(nnx.Module):
  """CFBI's pre-head over the matching maps: 1x1 conv (bias) + GN + ReLU."""

  def __init__(
      self,
      in_dim: int = 15,
      out_dim: int = 64,
      gn_groups: int = 16,
      *,
      rngs: nnx.Rngs,
  ):
    self.conv = layers.conv(in_dim, out_dim, 1, use_bias=True, rngs=rngs)
    self.bn = layers.group_norm(out_dim, gn_groups, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return jax.nn.relu(self.bn(self.conv(x)))


def dynamic_logit(x: jnp.ndarray, params: jnp.ndarray) -> jnp.ndarray:
  """Per-object 1x1 head: logit = sum_c W[c] * x[c] + b (notes §16).

  Args:
    x: `[N, h, w, C]` features.
    params: `[N, C + 1]`; the first C numbers are the weights, the last the
      bias.

  Returns:
    `[N, h, w]` logits.
  """
  c = x.shape[-1]
  logit = jnp.einsum('nhwc,nc->nhw', x, params[:, :c])
  return logit + layers.broadcast_to_like(params[:, None, None, c], logit)


class _EnsemblerDecoder(nnx.Module):
  """Shared tail: bicubic upsampling, shortcut fusion, dynamic heads."""

  def _init_decoder(
      self,
      dim: int,
      shortcut_in: int,
      refine_dim: int,
      head_dim: int,
      gn_groups: int,
      gn_groups_refine: int,
      rngs: nnx.Rngs,
  ):
    self.GCT_sc = layers.GCT(shortcut_in)
    self.conv_sc = layers.conv(shortcut_in, refine_dim, 1, rngs=rngs)
    self.bn_sc = layers.group_norm(refine_dim, gn_groups_refine, rngs=rngs)
    self.IA10 = IAGate(head_dim, dim + refine_dim, rngs=rngs)
    self.conv1 = layers.conv(dim + refine_dim, dim // 2, 3, rngs=rngs)
    self.bn1 = layers.group_norm(dim // 2, gn_groups, rngs=rngs)
    self.IA11 = IAGate(head_dim, dim // 2, rngs=rngs)
    self.conv2 = layers.conv(dim // 2, dim // 2, 3, rngs=rngs)
    self.bn2 = layers.group_norm(dim // 2, gn_groups, rngs=rngs)
    self.IA_final_fg = nnx.Linear(head_dim, dim // 2 + 1, rngs=rngs)
    self.IA_final_bg = nnx.Linear(head_dim, dim // 2 + 1, rngs=rngs)

  def _decode_and_predict(
      self, x: jnp.ndarray, shortcut: jnp.ndarray, head: jnp.ndarray
  ) -> Tuple[jnp.ndarray, jnp.ndarray]:
    x = resize.resize_bicubic_ac(x, shortcut.shape[1:3])
    s = jax.nn.relu(self.bn_sc(self.conv_sc(self.GCT_sc(shortcut))))
    x = self.IA10(jnp.concatenate([x, s], axis=-1), head)
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = self.IA11(x, head)
    x = jax.nn.relu(self.bn2(self.conv2(x)))
    return (
        dynamic_logit(x, self.IA_final_fg(head)),
        dynamic_logit(x, self.IA_final_bg(head)),
    )


class CollaborativeEnsembler(_EnsemblerDecoder):
  """CFBI's ensembler (`CollaborativeEnsembler`, notes §14)."""

  # (stride, dilation) of layer1..layer8 and whether the stage is 2 * dim.
  _STAGES = (
      (1, 1, False),
      (1, 2, False),
      (2, 1, True),
      (1, 2, True),
      (1, 4, True),
      (2, 1, True),
      (1, 2, True),
      (1, 4, True),
  )

  def __init__(
      self,
      in_dim: int,
      low_level_dim: int,
      head_dim: int,
      dim: int = 256,
      refine_dim: int = 64,
      gn_groups: int = 32,
      gn_groups_refine: int = 16,
      *,
      rngs: nnx.Rngs,
  ):
    gates, stages, c = [], [], in_dim
    for stride, dilation, wide in self._STAGES:
      out = 2 * dim if wide else dim
      gates.append(IAGate(head_dim, c, rngs=rngs))
      stages.append(
          GNBottleneck(c, out, stride, dilation, gn_groups, rngs=rngs)
      )
      c = out
    gates.append(IAGate(head_dim, c, rngs=rngs))  # IA9, before the ASPP.
    self.gates = nnx.List(gates)
    self.stages = nnx.List(stages)
    self.ASPP = EnsemblerASPP(2 * dim, dim, gn_groups, rngs=rngs)
    self._init_decoder(
        dim,
        low_level_dim + dim,
        refine_dim,
        head_dim,
        gn_groups,
        gn_groups_refine,
        rngs,
    )

  def __call__(
      self, x: jnp.ndarray, low_level: jnp.ndarray, head: jnp.ndarray
  ) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Runs the ensembler.

    Args:
      x: `[N, h4, w4, in_dim]` per-object input.
      low_level: `[N, h4, w4, low_level_dim]` backbone low-level feature.
      head: `[N, head_dim]` attention vectors.

    Returns:
      `(fg_logit, bg_logit)`, each `[N, h4, w4]`.
    """
    shortcut = None
    for i, (gate, stage) in enumerate(zip(self.gates, self.stages)):
      x = stage(gate(x, head))
      if i == 1:
        shortcut = jnp.concatenate([low_level, x], axis=-1)
    x = self.ASPP(self.gates[8](x, head))
    return self._decode_and_predict(x, shortcut, head)


class CollaborativeEnsemblerMS(_EnsemblerDecoder):
  """CFBI+'s three-scale ensembler (`CollaborativeEnsemblerMS`, notes §15)."""

  def __init__(
      self,
      in_dims: Sequence[int],
      low_level_dim: int,
      head_dim: int,
      dim: int = 256,
      refine_dim: int = 64,
      gn_groups: int = 32,
      gn_groups_refine: int = 16,
      *,
      rngs: nnx.Rngs,
  ):
    d2 = 2 * dim

    def block(cin, cout, stride, dilation):
      return (
          IAGate(head_dim, cin, rngs=rngs),
          GNBottleneck(cin, cout, stride, dilation, gn_groups, rngs=rngs),
      )

    self.S1_IA1, self.S1_layer1 = block(in_dims[0], dim, 1, 1)
    self.S1_IA2, self.S1_layer2 = block(dim, dim, 1, 2)
    self.S2_IA1, self.S2_layer1 = block(dim, d2, 2, 1)
    self.S2_IA2, self.S2_layer2 = block(d2 + in_dims[1], d2, 1, 2)
    self.S2_IA3, self.S2_layer3 = block(d2, d2, 1, 4)
    self.S3_IA1, self.S3_layer1 = block(d2, d2, 2, 1)
    self.S3_IA2, self.S3_layer2 = block(d2 + in_dims[2], d2, 1, 2)
    self.S3_IA3, self.S3_layer3 = block(d2, d2, 1, 4)
    self.ASPP_IA = IAGate(head_dim, d2, rngs=rngs)
    self.ASPP = EnsemblerASPP(d2, dim, gn_groups, rngs=rngs)
    self._init_decoder(
        dim,
        low_level_dim + dim,
        refine_dim,
        head_dim,
        gn_groups,
        gn_groups_refine,
        rngs,
    )

  def __call__(
      self, xs: Sequence[jnp.ndarray], low_level: jnp.ndarray, head: jnp.ndarray
  ) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Runs the ensembler.

    Args:
      xs: per-scale inputs `[N, h_s, w_s, in_dims[s]]` at strides 4, 8, 16.
      low_level: `[N, h4, w4, low_level_dim]`.
      head: `[N, head_dim]` attention vectors (the /4 ones).

    Returns:
      `(fg_logit, bg_logit)`, each `[N, h4, w4]`.
    """
    x = self.S1_layer1(self.S1_IA1(xs[0], head))
    x = self.S1_layer2(self.S1_IA2(x, head))
    shortcut = jnp.concatenate([low_level, x], axis=-1)
    x = self.S2_layer1(self.S2_IA1(x, head))
    x = jnp.concatenate([x, xs[1]], axis=-1)
    x = self.S2_layer2(self.S2_IA2(x, head))
    x = self.S2_layer3(self.S2_IA3(x, head))
    x = self.S3_layer1(self.S3_IA1(x, head))
    x = jnp.concatenate([x, xs[2]], axis=-1)
    x = self.S3_layer2(self.S3_IA2(x, head))
    x = self.S3_layer3(self.S3_IA3(x, head))
    x = self.ASPP(self.ASPP_IA(x, head))
    return self._decode_and_predict(x, shortcut, head)


def augment_background_logit(
    fg_logit: jnp.ndarray, bg_logit: jnp.ndarray, obj_valid: jnp.ndarray
) -> jnp.ndarray:
  """out_0 = fg_0 + min over valid k >= 1 of bg_k; out_k = fg_k (notes §16).

  Args:
    fg_logit: `[B, K+1, h, w]`.
    bg_logit: `[B, K+1, h, w]`.
    obj_valid: `[B, K+1]` bool.

  Returns:
    `[B, K+1, h, w]` logits; with no valid foreground object out_0 = fg_0.
  """
  # Masks and a concatenation, not `.at[].set`: XLA turns those into
  # scatters, which a GPU runs as separate kernels.
  fg_valid = (obj_valid & (jnp.arange(obj_valid.shape[1]) > 0))[
      :, :, None, None
  ]
  bg_min = jnp.min(jnp.where(fg_valid, bg_logit, jnp.inf), axis=1)
  has_fg = jnp.any(fg_valid, axis=1)
  out0 = fg_logit[:, 0] + jnp.where(has_fg, bg_min, 0.0)
  return jnp.concatenate([out0[:, None], fg_logit[:, 1:]], axis=1)
