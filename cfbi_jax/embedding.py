"""Pixel-embedding heads on top of the DeepLab features.

* `EmbeddingHead` (CFBI, `networks/cfbi/cfbi.py`): depthwise 3x3 conv (with
  bias) -> GN(32) -> ReLU -> 1x1 conv to 100 channels (with bias) -> GN(25)
  -> ReLU, at stride 4 (`cfbi-official-notes.md` §5).
* `FPN` (CFBI+, `networks/layers/fpn.py`): embeddings at strides 4/8/16 from
  the decoder output, ResNet layer2 and the ASPP output (notes §6). The
  PyTorch names do not follow the scale order: `toplayer` is /16,
  `latlayer1` the /8 lateral, `latlayer2` the /4 lateral, `smooth1` /8 and
  `smooth2` /4. The /4 top-down input is the unsmoothed /8 sum and /16 is
  not smoothed.

Used by the model families (`cfbi_jax/models/`).
"""

from typing import Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from cfbi_jax import layers
from cfbi_jax import resize


class EmbeddingHead(nnx.Module):
  """CFBI's separable embedding head."""

  def __init__(
      self,
      in_channels: int = 256,
      embedding_dim: int = 100,
      gn_groups: int = 32,
      gn_embedding_groups: int = 25,
      *,
      rngs: nnx.Rngs,
  ):
    self.seperate_conv = layers.conv(
        in_channels,
        in_channels,
        3,
        groups=in_channels,
        use_bias=True,
        rngs=rngs,
    )
    self.bn1 = layers.group_norm(in_channels, gn_groups, rngs=rngs)
    self.embedding_conv = layers.conv(
        in_channels, embedding_dim, 1, use_bias=True, rngs=rngs
    )
    self.bn2 = layers.group_norm(embedding_dim, gn_embedding_groups, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> Tuple[jnp.ndarray]:
    """`[B, h4, w4, in]` decoder output -> (`[B, h4, w4, dim]`,)."""
    x = jax.nn.relu(self.bn1(self.seperate_conv(x)))
    return (jax.nn.relu(self.bn2(self.embedding_conv(x))),)


class ConvGN(nnx.Module):
  """conv (no bias) + GroupNorm, no activation (one FPN unit)."""

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      kernel_size: int,
      gn_groups: int,
      *,
      rngs: nnx.Rngs,
  ):
    self.conv = layers.conv(in_channels, out_channels, kernel_size, rngs=rngs)
    self.gn = layers.group_norm(out_channels, gn_groups, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return self.gn(self.conv(x))


class FPN(nnx.Module):
  """CFBI+'s feature pyramid: 256-channel embeddings at strides 4, 8, 16."""

  def __init__(
      self,
      in_s4: int = 256,
      in_s8: int = 512,
      in_s16: int = 256,
      dim: int = 256,
      gn_groups: int = 32,
      *,
      rngs: nnx.Rngs,
  ):
    self.toplayer = ConvGN(in_s16, dim, 1, gn_groups, rngs=rngs)
    self.latlayer1 = ConvGN(in_s8, dim, 1, gn_groups, rngs=rngs)
    self.latlayer2 = ConvGN(in_s4, dim, 1, gn_groups, rngs=rngs)
    self.smooth1 = ConvGN(dim, dim, 3, gn_groups, rngs=rngs)
    self.smooth2 = ConvGN(dim, dim, 3, gn_groups, rngs=rngs)

  def __call__(
      self, x_s4: jnp.ndarray, x_s8: jnp.ndarray, x_s16: jnp.ndarray
  ) -> Tuple[jnp.ndarray, ...]:
    """Builds the pyramid.

    Args:
      x_s4: `[B, h4, w4, in_s4]` decoder output.
      x_s8: `[B, h8, w8, in_s8]` ResNet layer2 output.
      x_s16: `[B, h16, w16, in_s16]` ASPP output.

    Returns:
      `(e_s4, e_s8, e_s16)`, each `[B, h_s, w_s, dim]` after ReLU.
    """
    t16 = self.toplayer(x_s16)
    p8 = self.latlayer1(x_s8) + resize.resize_bilinear_ac(t16, x_s8.shape[1:3])
    p4 = self.latlayer2(x_s4) + resize.resize_bilinear_ac(p8, x_s4.shape[1:3])
    return (
        jax.nn.relu(self.smooth2(p4)),
        jax.nn.relu(self.smooth1(p8)),
        jax.nn.relu(t16),
    )
