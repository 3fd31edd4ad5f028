"""DeepLabV3+ feature extractors of the official CFBI code.

Reproduces `networks/deeplab/*` (`cfbi-official-notes.md` §4): a dilated
ResNet (output stride 16, stride in the 3x3 conv, layer4 multigrid 2/4/8) or
MobileNetV2 (with the official pad-before-expansion quirk), the DeepLab ASPP
(rates 1/6/12/18 plus image pooling, dropout 0.1 in training) and the
decoder to 256 channels at stride 4. Every BatchNorm is frozen (or, for
training from scratch, a GroupNorm: `DeepLab(norm='group_norm')`).

`DeepLab.__call__` returns the features named by stride:

* `low_s4`: ResNet layer1 / MobileNetV2 `features[0:4]` (low-level feature),
* `mid_s8`: ResNet layer2 (CFBI+'s FPN input; absent for MobileNetV2),
* `backbone_s16`: the last backbone stage,
* `aspp_s16`: the ASPP output,
* `decoder_s4`: the decoder output.

Attribute names follow the PyTorch module names so that `convert.py` maps the
official state dict with a short table, `CHECKPOINT_RULES` (every model
family builds on it: a DeepLab checkpoint loads into any of them). Used by
the model families (`cfbi_jax/models/`).
"""

import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from flax import nnx

from cfbi_jax import layers
from cfbi_jax import resize

# A normalisation layer factory: channels -> module (`layers.norm_factory`).
Norm = Callable[[int], nnx.Module]


class Bottleneck(nnx.Module):
  """ResNet v1.5 bottleneck with frozen BN (stride in the 3x3 conv)."""

  # (conv, norm) pairs: the norm reads only that conv's output.
  NORM_AFTER_CONV = (
      ('conv1', 'bn1'),
      ('conv2', 'bn2'),
      ('conv3', 'bn3'),
      ('downsample_conv', 'downsample_bn'),
  )

  def __init__(
      self,
      inplanes: int,
      planes: int,
      stride: int,
      dilation: int,
      *,
      rngs: nnx.Rngs,
      norm: Norm = layers.FrozenBatchNorm,
  ):
    out = planes * 4
    self.conv1 = layers.conv(inplanes, planes, 1, rngs=rngs)
    self.bn1 = norm(planes)
    self.conv2 = layers.conv(
        planes, planes, 3, stride=stride, dilation=dilation, rngs=rngs
    )
    self.bn2 = norm(planes)
    self.conv3 = layers.conv(planes, out, 1, rngs=rngs)
    self.bn3 = norm(out)
    if stride != 1 or inplanes != out:
      self.downsample_conv = layers.conv(
          inplanes, out, 1, stride=stride, rngs=rngs
      )
      self.downsample_bn = norm(out)
    else:
      self.downsample_conv = None
      self.downsample_bn = None

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.downsample_conv is not None:
      x = self.downsample_bn(self.downsample_conv(x))
    return jax.nn.relu(y + x)


class ResNet(nnx.Module):
  """Dilated ResNet at output stride 16 (`backbone/resnet.py`).

  Attributes:
    out_channels: channels of `(low_s4, mid_s8, backbone_s16)`.
  """

  # (conv, norm) pairs: the norm reads only that conv's output.
  NORM_AFTER_CONV = (('conv1', 'bn1'),)

  def __init__(
      self,
      blocks: Sequence[int] = (3, 4, 23, 3),
      width: int = 64,
      *,
      rngs: nnx.Rngs,
      norm: Norm = layers.FrozenBatchNorm,
  ):
    self.conv1 = layers.conv(3, width, 7, stride=2, padding=3, rngs=rngs)
    self.bn1 = norm(width)
    # (planes, stride, dilations per block): layer4 uses multigrid 1,2,4 x 2.
    specs = [
        (width, 1, [1] * blocks[0]),
        (width * 2, 2, [1] * blocks[1]),
        (width * 4, 2, [1] * blocks[2]),
        (width * 8, 1, [2 * (2 ** min(i, 2)) for i in range(blocks[3])]),
    ]
    inplanes = width
    stages = []
    for planes, stride, dilations in specs:
      stage = []
      for i, d in enumerate(dilations):
        stage.append(
            Bottleneck(
                inplanes,
                planes,
                stride if i == 0 else 1,
                d,
                rngs=rngs,
                norm=norm,
            )
        )
        inplanes = planes * 4
      stages.append(nnx.List(stage))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.out_channels = (width * 4, width * 8, width * 32)

  def __call__(self, x: jnp.ndarray) -> Dict[str, jnp.ndarray]:
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    # PyTorch pads max pooling with -inf, as flax does.
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = {}
    for name, stage in (
        ('low_s4', self.layer1),
        ('mid_s8', self.layer2),
        ('s16a', self.layer3),
        ('backbone_s16', self.layer4),
    ):
      for block in stage:
        x = block(x)
      feats[name] = x
    del feats['s16a']
    return feats


# (expansion t, output channels, stride, dilation) of MobileNetV2 blocks 1-17
# at output stride 16, as the official backbone builds them (notes §4.3).
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 24, 1, 1),
    (6, 32, 2, 1),
    (6, 32, 1, 1),
    (6, 32, 1, 1),
    (6, 64, 2, 1),
    (6, 64, 1, 1),
    (6, 64, 1, 1),
    (6, 64, 1, 1),
    (6, 96, 1, 1),
    (6, 96, 1, 1),
    (6, 96, 1, 1),
    (6, 160, 1, 1),
    (6, 160, 1, 2),
    (6, 160, 1, 2),
    (6, 320, 1, 2),
)


class InvertedResidual(nnx.Module):
  """MobileNetV2 block with the official padding quirk.

  The block zero-pads its *input* by the dilation before the whole body, so
  the 1x1 expansion, BN and ReLU6 run on the zero border and the depthwise
  conv (padding 0) sees ReLU6(BN shift) there, not zero (notes §4.3).
  """

  # (conv, norm) pairs: the norm reads only that conv's output.
  NORM_AFTER_CONV = (
      ('expand_conv', 'expand_bn'),
      ('dw_conv', 'dw_bn'),
      ('project_conv', 'project_bn'),
  )

  def __init__(
      self,
      inp: int,
      oup: int,
      stride: int,
      dilation: int,
      expand_ratio: int,
      *,
      rngs: nnx.Rngs,
      norm: Norm = layers.FrozenBatchNorm,
  ):
    hidden = inp * expand_ratio
    self.dilation = dilation
    self.use_res_connect = stride == 1 and inp == oup
    if expand_ratio != 1:
      self.expand_conv = layers.conv(inp, hidden, 1, rngs=rngs)
      self.expand_bn = norm(hidden)
    else:
      self.expand_conv = None
      self.expand_bn = None
    self.dw_conv = layers.conv(
        hidden,
        hidden,
        3,
        stride=stride,
        dilation=dilation,
        padding=0,
        groups=hidden,
        rngs=rngs,
    )
    self.dw_bn = norm(hidden)
    self.project_conv = layers.conv(hidden, oup, 1, rngs=rngs)
    self.project_bn = norm(oup)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = self.dilation
    y = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
    if self.expand_conv is not None:
      y = jax.nn.relu6(self.expand_bn(self.expand_conv(y)))
    y = jax.nn.relu6(self.dw_bn(self.dw_conv(y)))
    y = self.project_bn(self.project_conv(y))
    return x + y if self.use_res_connect else y


class MobileNetV2(nnx.Module):
  """MobileNetV2 (width 1.0) at output stride 16 (`backbone/mobilenet.py`).

  Attributes:
    out_channels: channels of `(low_s4, None, backbone_s16)`.
  """

  # (conv, norm) pairs: the norm reads only that conv's output.
  NORM_AFTER_CONV = (('first_conv', 'first_bn'),)

  def __init__(self, *, rngs: nnx.Rngs, norm: Norm = layers.FrozenBatchNorm):
    self.first_conv = layers.conv(3, 32, 3, stride=2, padding=1, rngs=rngs)
    self.first_bn = norm(32)
    blocks, inp = [], 32
    for t, c, s, d in MOBILENET_V2_BLOCKS:
      blocks.append(InvertedResidual(inp, c, s, d, t, rngs=rngs, norm=norm))
      inp = c
    self.features = nnx.List(blocks)
    self.out_channels = (24, None, 320)

  def __call__(self, x: jnp.ndarray) -> Dict[str, jnp.ndarray]:
    x = jax.nn.relu6(self.first_bn(self.first_conv(x)))
    feats = {}
    for i, block in enumerate(self.features):
      x = block(x)
      if i == 2:  # features[0:4] = first conv + blocks 1-3.
        feats['low_s4'] = x
    feats['backbone_s16'] = x
    return feats


class ASPPBranch(nnx.Module):
  """conv (no bias) + frozen BN + ReLU."""

  # (conv, norm) pairs: the norm reads only that conv's output.
  NORM_AFTER_CONV = (('atrous_conv', 'bn'),)

  def __init__(
      self,
      inplanes: int,
      planes: int,
      kernel_size: int,
      dilation: int,
      *,
      rngs: nnx.Rngs,
      norm: Norm = layers.FrozenBatchNorm,
  ):
    self.atrous_conv = layers.conv(
        inplanes, planes, kernel_size, dilation=dilation, rngs=rngs
    )
    self.bn = norm(planes)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return jax.nn.relu(self.bn(self.atrous_conv(x)))


class ASPP(nnx.Module):
  """DeepLab ASPP at output stride 16 (`deeplab/aspp.py`)."""

  # (conv, norm) pairs: the norm reads only that conv's output.
  NORM_AFTER_CONV = (('pool_conv', 'pool_bn'), ('conv1', 'bn1'))

  def __init__(
      self,
      inplanes: int,
      planes: int = 256,
      rates: Tuple[int, ...] = (1, 6, 12, 18),
      *,
      rngs: nnx.Rngs,
      norm: Norm = layers.FrozenBatchNorm,
  ):
    self.branches = nnx.List(
        [
            ASPPBranch(
                inplanes, planes, 1 if r == 1 else 3, r, rngs=rngs, norm=norm
            )
            for r in rates
        ]
    )
    self.pool_conv = layers.conv(inplanes, planes, 1, rngs=rngs)
    self.pool_bn = norm(planes)
    self.conv1 = layers.conv(planes * (len(rates) + 1), planes, 1, rngs=rngs)
    self.bn1 = norm(planes)

  def __call__(
      self, x: jnp.ndarray, dropout_rng: Optional[jax.Array] = None
  ) -> jnp.ndarray:
    outs = [branch(x) for branch in self.branches]
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = jax.nn.relu(self.pool_bn(self.pool_conv(pooled)))
    outs.append(
        jnp.broadcast_to(
            layers.broadcast_to_like(pooled, outs[0]),
            outs[0].shape[:3] + pooled.shape[3:],
        )
    )
    y = jax.nn.relu(self.bn1(self.conv1(jnp.concatenate(outs, axis=-1))))
    # The only dropout of the model; active in training only.
    return layers.dropout(y, 0.1, dropout_rng)


class Decoder(nnx.Module):
  """DeepLabV3+ decoder to `planes` channels at stride 4 (`deeplab/decoder.py`)."""

  # (conv, norm) pairs: the norm reads only that conv's output.
  NORM_AFTER_CONV = (
      ('conv1', 'bn1'),
      ('last_conv1', 'last_bn1'),
      ('last_conv2', 'last_bn2'),
  )

  def __init__(
      self,
      low_level_channels: int,
      aspp_channels: int = 256,
      planes: int = 256,
      *,
      rngs: nnx.Rngs,
      norm: Norm = layers.FrozenBatchNorm,
  ):
    self.conv1 = layers.conv(low_level_channels, 48, 1, rngs=rngs)
    self.bn1 = norm(48)
    self.last_conv1 = layers.conv(aspp_channels + 48, planes, 3, rngs=rngs)
    self.last_bn1 = norm(planes)
    self.last_conv2 = layers.conv(planes, planes, 3, rngs=rngs)
    self.last_bn2 = norm(planes)

  def __call__(self, x: jnp.ndarray, low: jnp.ndarray) -> jnp.ndarray:
    low = jax.nn.relu(self.bn1(self.conv1(low)))
    x = resize.resize_bilinear_ac(x, low.shape[1:3])
    x = jnp.concatenate([x, low], axis=-1)
    x = jax.nn.relu(self.last_bn1(self.last_conv1(x)))
    return jax.nn.relu(self.last_bn2(self.last_conv2(x)))


class DeepLab(nnx.Module):
  """DeepLabV3+ feature extractor (the official `feature_extracter`).

  Args of the constructor:
    backbone: 'resnet' (ResNet-101 with the default blocks) or
      'mobilenetv2'.
    aspp_channels: ASPP output channels (256 officially).
    decoder_channels: decoder output channels (256 officially).
    resnet_blocks / resnet_width: ResNet depth and width (tiny presets).
    norm: 'frozen_bn' (the official frozen BatchNorm, which the converted
      weights need) or 'group_norm' (`norm_groups` groups, for training
      from scratch: a frozen BN at its initial values is the identity, so
      a scratch backbone would have no normalisation at all).
  """

  def __init__(
      self,
      backbone: str = 'resnet',
      aspp_channels: int = 256,
      decoder_channels: int = 256,
      resnet_blocks: Sequence[int] = (3, 4, 23, 3),
      resnet_width: int = 64,
      norm: str = 'frozen_bn',
      norm_groups: int = 32,
      *,
      rngs: nnx.Rngs,
  ):
    norm = layers.norm_factory(norm, norm_groups, rngs=rngs)
    if backbone == 'mobilenetv2':
      self.backbone = MobileNetV2(rngs=rngs, norm=norm)
    elif backbone == 'resnet':
      self.backbone = ResNet(resnet_blocks, resnet_width, rngs=rngs, norm=norm)
    else:
      raise ValueError(
          f'unknown backbone {backbone!r}: expected '
          "'resnet' or 'mobilenetv2'"
      )
    low_ch, mid_ch, high_ch = self.backbone.out_channels
    self.out_channels = {
        'low_s4': low_ch,
        'mid_s8': mid_ch,
        'aspp_s16': aspp_channels,
        'decoder_s4': decoder_channels,
    }
    self.aspp = ASPP(high_ch, aspp_channels, rngs=rngs, norm=norm)
    self.decoder = Decoder(
        low_ch, aspp_channels, decoder_channels, rngs=rngs, norm=norm
    )

  def __call__(
      self, images: jnp.ndarray, dropout_rng: Optional[jax.Array] = None
  ) -> Dict[str, jnp.ndarray]:
    """Extracts features.

    Args:
      images: `[batch, height, width, 3]` normalised float images.
      dropout_rng: key for the ASPP dropout in training; None at eval.

    Returns:
      Dict of `[batch, h_s, w_s, channels]` features named by stride
      (see the module docstring).
    """
    feats = self.backbone(images)
    feats['aspp_s16'] = self.aspp(feats['backbone_s16'], dropout_rng)
    feats['decoder_s4'] = self.decoder(feats['aspp_s16'], feats['low_s4'])
    return feats


# The DeepLab of the tiny test models of every family (`tiny_cfbi`, ...):
# a ResNet with one block per stage, width 8, 32-wide ASPP and decoder.
TINY_DEEPLAB = dict(
    resnet_blocks=(1, 1, 1, 1),
    resnet_width=8,
    aspp_channels=32,
    decoder_channels=32,
    gn_groups=4,
)


# ---- The official DeepLab's state-dict names (applied by `convert.py`).
_MNV2_T1 = {'dw_conv': 0, 'dw_bn': 1, 'project_conv': 3, 'project_bn': 4}
_MNV2 = {
    'expand_conv': 0,
    'expand_bn': 1,
    'dw_conv': 3,
    'dw_bn': 4,
    'project_conv': 6,
    'project_bn': 7,
}


def _mnv2_block(m: re.Match) -> str:
  index = int(m[1])
  table = _MNV2_T1 if index == 0 else _MNV2
  return f'.features.{index + 1}.conv.{table[m[2]]}.'


# Regex on the dotted NNX path -> replacement, applied in order; the result
# is the PyTorch key. A family appends its head's rules (`models/cfbi.py`).
CHECKPOINT_RULES: List[Tuple[str, Union[str, Callable[[re.Match], str]]]] = [
    (r'\.downsample_conv\.', '.downsample.0.'),
    (r'\.downsample_(bn|gn)\.', '.downsample.1.'),
    (r'\.features\.(\d+)\.(\w+)\.', _mnv2_block),
    (r'\.backbone\.first_conv\.', '.backbone.features.0.0.'),
    (r'\.backbone\.first_bn\.', '.backbone.features.0.1.'),
    # ASPP branches and pooling (the DeepLab's and CFBI's ensembler's).
    (r'\.branches\.(\d+)\.', lambda m: f'.aspp{int(m[1]) + 1}.'),
    (r'\.pool_conv\.', '.global_avg_pool.1.'),
    (r'\.pool_bn\.', '.global_avg_pool.2.'),
    # Decoder.
    (r'\.last_conv1\.', '.last_conv.0.'),
    (r'\.last_bn1\.', '.last_conv.1.'),
    (r'\.last_conv2\.', '.last_conv.4.'),
    (r'\.last_bn2\.', '.last_conv.5.'),
    # Leaf names.
    (r'\.kernel$', '.weight'),
    (r'\.scale$', '.weight'),
]

# Alias key patterns (same tensor registered twice) -> the canonical name.
CHECKPOINT_ALIASES: List[Tuple[str, str]] = [
    (
        r'^feature_extracter\.backbone\.(low_level_features|high_level_features|'
        r'feautre_8x|feature_16x|feature_32x)\.',
        'feature_extracter.backbone.' 'features.',
    ),
]
