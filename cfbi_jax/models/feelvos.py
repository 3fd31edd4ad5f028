"""FEELVOS (Voigtlaender et al., CVPR 2019): everything the project knows
about this model family.

FEELVOS is the system CFBI grew out of (`../shared/reference/papers/`,
file 004). Per frame, for every object (the background is an object like
any other):

* a pixel embedding of 100 dimensions at stride 4: one depthwise separable
  convolution (3x3 depthwise, 1x1 pointwise) on the DeepLabV3+ decoder
  output (`FEELVOS.embedding_*`);
* the embedding distance d(p, q) = 1 - 2 / (1 + exp(|e_p - e_q|^2))
  (`embedding_distance`, eq. 1);
* global matching to the first frame, G_o(p) = min over the first frame's
  pixels q of object o of d(p, q) (`global_distance_maps`, eq. 2), and
  local matching to the previous frame inside a window of k = 15 pixels at
  stride 4, 1 where the window holds no pixel of o
  (`local_distance_maps`, eq. 4);
* the previous frame's prediction (soft probabilities at inference, the
  one-hot ground truth in training; carried as the model's `memory`);
* the dynamic segmentation head, run once per object with shared weights
  on [backbone features | G_o | L_o | previous probability of o]: 4 layers
  of 7x7 depthwise + 1x1 pointwise convolutions of 256 channels with ReLU,
  then a 1x1 convolution to one logit (`FeelvosHead`); the
  logits of all objects meet in a softmax.

Training (`RECIPE`, the default of every training config with
`model=feelvos`; `recipe=cfbi` trains with CFBI's shared recipe instead) is
the paper's §4: a reference frame plus two adjacent frames, the previous
and the current, with the loss on the current frame only; the previous
frame's ground truth for local matching and as the previous prediction
(`train.own_predictions=False`); the bootstrapped cross-entropy of the 15%
hardest pixels from the first step; SGD with momentum 0.9 at lr 0.0007 for
200k steps of 48 clips (3 per GPU on 16 GPUs); flips, scaling and 465x465
crops. Where the paper is silent, [ours]: a constant lr, no warm-up, no
weight decay, no gradient clipping, no clip reversal, and the shared
recipe's scale range 1.0-1.3 (the paper gives none).

Differences from the paper, all deliberate:

* The backbone is any of ours (DeepLabV3+ on ResNet-101 or MobileNetV2, or
  the tiny ResNet of the tests), not the paper's Xception-65.
* GroupNorm, not BatchNorm, inside the head (as CFBI's ablation head;
  batch statistics over object slots would mix objects).
* Global matching in training uses every reference pixel; the paper
  subsamples at most 1024 per object to save time. Ours is exact, and its
  memory is bounded by query chunks (`matching.global_matching`).
* The soft previous prediction is the model's own softmax at stride 4; at
  pixels where the final label differs from the model's own choice (a
  pasted annotation, the average over test-time augmentations) it is the
  one-hot of the final label.

The module follows `vos.VOSModel`: objects in `K + 1` slots with an
`obj_valid` mask, never a Python loop over objects. `FAMILY` is the record
`models` registers.
"""

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from cfbi_jax import backbone as backbone_lib
from cfbi_jax import layers
from cfbi_jax import matching
from cfbi_jax import resize
from cfbi_jax.vos import FrameEmbedding
from cfbi_jax.vos import INVALID_LOGIT
from cfbi_jax.vos import PropagationState
from cfbi_jax.vos import Segmentation
from cfbi_jax.models import family as family_lib

_DTYPES = family_lib.DTYPES


def embedding_distance(squared_distance: jnp.ndarray) -> jnp.ndarray:
  """FEELVOS eq. 1: 1 - 2 / (1 + exp(|e_p - e_q|^2)), in [0, 1).

  The same number as CFBI's distance transform with a bias of 0
  (`matching.distance_to_similarity`), which the matching functions use.

  Args:
    squared_distance: `[...]` squared embedding distances.

  Returns:
    `[...]` float32 distances.
  """
  return matching.distance_to_similarity(squared_distance, 0.0)


def global_distance_maps(
    query: jnp.ndarray,
    ref: jnp.ndarray,
    ref_labels: jnp.ndarray,
    obj_valid: jnp.ndarray,
    *,
    num_chunks: int = 1,
    max_chunk_bytes: Optional[int] = None,
) -> jnp.ndarray:
  """FEELVOS eq. 2: per object, the distance to its nearest reference pixel.

  Args:
    query: `[h, w, C]` current-frame embedding.
    ref: `[R, h, w, C]` reference embeddings (the first frame, and frames
      that introduced objects).
    ref_labels: `[R, h, w]` int labels at the embedding grid, -1 ignored.
    obj_valid: `[K + 1]` bool slots (slot 0, the background, is matched
      like any object).
    num_chunks, max_chunk_bytes: query chunking (memory only).

  Returns:
    `[K + 1, h, w]` float32 distances; 1 for an object with no reference
    pixel.
  """
  zero = jnp.zeros((), jnp.float32)
  return matching.global_matching(
      query,
      ref,
      ref_labels,
      obj_valid,
      bg_bias=zero,
      fg_bias=zero,
      num_chunks=num_chunks,
      max_chunk_bytes=max_chunk_bytes,
  )


def local_distance_maps(
    query: jnp.ndarray,
    prev: jnp.ndarray,
    prev_labels: jnp.ndarray,
    obj_valid: jnp.ndarray,
    *,
    window: int,
) -> jnp.ndarray:
  """FEELVOS eq. 4: per object, the distance to its nearest previous-frame
  pixel at most `window` pixels away in both x and y; 1 where there is
  none.

  Args:
    query: `[h, w, C]` current-frame embedding.
    prev: `[h, w, C]` previous-frame embedding.
    prev_labels: `[h, w]` int previous labels at that grid, -1 ignored.
    obj_valid: `[K + 1]` bool slots.
    window: k of the paper (15 at stride 4).

  Returns:
    `[K + 1, h, w]` float32 distances.
  """
  zero = jnp.zeros((), jnp.float32)
  return matching.local_matching(
      query,
      prev,
      prev_labels,
      obj_valid,
      bg_bias=zero,
      fg_bias=zero,
      windows=(window,),
  )[..., 0]


def one_hot_labels(
    labels: jnp.ndarray, grid: Tuple[int, int], num_slots: int
) -> jnp.ndarray:
  """`[B, H, W]` labels -> `[B, h, w, num_slots]` float32 one-hot at `grid`
  (legacy nearest); ids outside the slots (void) are all zeros."""
  small = resize.resize_labels_nearest(labels, grid)
  return jax.nn.one_hot(small, num_slots, dtype=jnp.float32)


def previous_probabilities(
    own_probs: jnp.ndarray, labels: jnp.ndarray, memory_slots: int
) -> jnp.ndarray:
  """The previous prediction carried to the next frame.

  The model's own probabilities where the final label is its own argmax,
  the one-hot of the final label elsewhere (annotations pasted over the
  prediction, or a label chosen by the average of several augmentations).

  Args:
    own_probs: `[B, h, w, K + 1]` softmax of the frame's stride-4 logits.
    labels: `[B, H, W]` int final labels (any size; resized to the grid).
    memory_slots: slots of the carried map (>= K + 1).

  Returns:
    `[B, h, w, memory_slots]` float32.
  """
  grid = own_probs.shape[1:3]
  hard = one_hot_labels(labels, grid, memory_slots)
  pad = memory_slots - own_probs.shape[-1]
  probs = jnp.pad(own_probs, ((0, 0),) * 3 + ((0, pad),))
  small = resize.resize_labels_nearest(labels, grid)
  agree = small == jnp.argmax(own_probs, axis=-1)
  return jnp.where(agree[..., None], probs, hard)


class FeelvosHead(nnx.Module):
  """FEELVOS's dynamic segmentation head (FEELVOS §3.4; CFBI Table 4).

  Four layers of [depthwise 7x7 conv, pointwise conv, GroupNorm, ReLU] at
  width `dim`, then a 1x1 conv (with bias) to one logit per object slot.
  The same weights run on every slot; the logits of all slots (background
  included) meet in the softmax, as in FEELVOS. FEELVOS normalises with
  BatchNorm; GroupNorm is used here like everywhere else in this project
  (batch statistics over object slots would mix objects).
  """

  def __init__(
      self,
      in_dim: int,
      dim: int = 256,
      gn_groups: int = 32,
      num_layers: int = 4,
      kernel_size: int = 7,
      *,
      rngs: nnx.Rngs,
  ):
    depthwise, pointwise, norms, c = [], [], [], in_dim
    for _ in range(num_layers):
      depthwise.append(layers.conv(c, c, kernel_size, groups=c, rngs=rngs))
      pointwise.append(layers.conv(c, dim, 1, rngs=rngs))
      norms.append(layers.group_norm(dim, gn_groups, rngs=rngs))
      c = dim
    self.depthwise = nnx.List(depthwise)
    self.pointwise = nnx.List(pointwise)
    self.norms = nnx.List(norms)
    self.out = layers.conv(dim, 1, 1, use_bias=True, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`[N, h, w, in_dim]` per-object input -> `[N, h, w]` logits."""
    for dw, pw, norm in zip(self.depthwise, self.pointwise, self.norms):
      x = jax.nn.relu(norm(pw(dw(x))))
    return self.out(x)[..., 0]


class FEELVOS(nnx.Module):
  """FEELVOS on one of our DeepLabV3+ backbones (module docstring).

  Constructor fields are plain values (`models.build` passes them):
    backbone, resnet_blocks, resnet_width, aspp_channels, decoder_channels,
      backbone_norm, gn_groups: the DeepLab, as in `CFBI`.
    embedding_dim: embedding width (100).
    head_dim, head_layers, head_kernel: the dynamic segmentation head (256
      channels, 4 layers, 7x7 depthwise kernels).
    local_window: k of local matching at stride 4 (15).
    global_chunks, global_chunk_mb: query chunking of global matching
      (memory only).
    compute_dtype: dtype of DeepLab and the head ('float32'; 'bfloat16' /
      'float16' for speed on accelerators); the embedding and the
      matching stay float32.
  """

  def __init__(
      self,
      backbone: str = 'resnet',
      resnet_blocks: Tuple[int, ...] = (3, 4, 23, 3),
      resnet_width: int = 64,
      aspp_channels: int = 256,
      decoder_channels: int = 256,
      backbone_norm: str = 'frozen_bn',
      gn_groups: int = 32,
      embedding_dim: int = 100,
      head_dim: int = 256,
      head_layers: int = 4,
      head_kernel: int = 7,
      local_window: int = 15,
      global_chunks: int = 4,
      global_chunk_mb: float = 256.0,
      compute_dtype: str = 'float32',
      *,
      rngs: nnx.Rngs,
  ):
    if compute_dtype not in _DTYPES:
      raise ValueError(
          f'compute_dtype must be one of {sorted(_DTYPES)}, '
          f'got {compute_dtype!r}'
      )
    self.local_window = int(local_window)
    self.global_chunks = int(global_chunks)
    self.global_chunk_mb = float(global_chunk_mb)
    self.compute_dtype = compute_dtype
    self.feature_extracter = backbone_lib.DeepLab(
        backbone,
        aspp_channels,
        decoder_channels,
        resnet_blocks,
        resnet_width,
        backbone_norm,
        gn_groups,
        rngs=rngs,
    )
    self.embedding_depthwise = layers.conv(
        decoder_channels,
        decoder_channels,
        3,
        groups=decoder_channels,
        use_bias=True,
        rngs=rngs,
    )
    self.embedding_pointwise = layers.conv(
        decoder_channels, embedding_dim, 1, use_bias=True, rngs=rngs
    )
    self.dynamic_seghead = FeelvosHead(
        decoder_channels + 3,
        head_dim,
        gn_groups,
        head_layers,
        head_kernel,
        rngs=rngs,
    )

  def embed(
      self, images: jnp.ndarray, dropout_rng: Optional[jax.Array] = None
  ) -> Tuple[FrameEmbedding, Dict[str, jnp.ndarray]]:
    """`[B, H, W, 3]` normalised images -> (embedding, DeepLab features).

    `FrameEmbedding.features_s4` holds the decoder output (the head's shared
    backbone features), `scales` the one stride-4 embedding.
    """
    dtype = _DTYPES[self.compute_dtype]
    feats = layers.call_in_dtype(
        self.feature_extracter, dtype, images, dropout_rng
    )
    feats = {
        k: v.astype(jnp.float32) if v is not None else None
        for k, v in feats.items()
    }
    decoder = feats['decoder_s4']
    emb = self.embedding_pointwise(self.embedding_depthwise(decoder))
    return FrameEmbedding(features_s4=decoder, scales=(emb,)), feats

  def segment(
      self,
      state: PropagationState,
      current: FrameEmbedding,
      obj_valid: jnp.ndarray,
      training: bool = False,
  ) -> Segmentation:
    """One frame: matching, then the dynamic head on every object slot.

    Args:
      state: the carried state: `([B, R, h, w, C],)` reference and
        `([B, h, w, C],)` previous-frame embeddings, `[B, R, H, W]`
        reference and `[B, H, W]` previous labels (mask resolution),
        `[B, R]` filled reference slots, and the memory: `[B, h, w, S]`
        previous probabilities (`S >= K + 1`).
      current: this frame's embedding.
      obj_valid: `[B, K + 1]` bool object slots.
      training: unused (matching is the same in training).

    Returns:
      `[B, h, w, K + 1]` stride-4 logits (invalid slots `INVALID_LOGIT`),
      the softmax `[B, h, w, K + 1]` as `memory_update`, and `aux`
      `{'global': [B, K + 1, h, w], 'local': ..., 'previous': ...}`.
    """
    ref_scales, ref_labels, ref_valid = (
        state.ref_scales,
        state.ref_labels,
        state.ref_valid,
    )
    prev_scales, prev_labels = state.prev_scales, state.prev_labels
    memory = state.memory
    del training
    num_slots = obj_valid.shape[1]
    cur = current.scales[0]
    grid = cur.shape[1:3]
    ref_lab = resize.resize_labels_nearest(ref_labels, grid)
    ref_lab = jnp.where(ref_valid[:, :, None, None], ref_lab, -1)
    prev_lab = resize.resize_labels_nearest(prev_labels, grid)
    with jax.named_scope('global_matching'):
      global_maps = jax.vmap(
          lambda q, r, lab, ov: global_distance_maps(
              q,
              r,
              lab,
              ov,
              num_chunks=self.global_chunks,
              max_chunk_bytes=int(self.global_chunk_mb * 2**20),
          )
      )(
          cur, ref_scales[0], ref_lab, obj_valid
      )  # [B, K+1, h, w]
    with jax.named_scope('local_matching'):
      local_maps = jax.vmap(
          lambda q, p, lab, ov: local_distance_maps(
              q, p, lab, ov, window=self.local_window
          )
      )(
          cur, prev_scales[0], prev_lab, obj_valid
      )  # [B, K+1, h, w]
    previous = jnp.moveaxis(memory[..., :num_slots], -1, 1)  # [B, K+1, h, w]
    batch = obj_valid.shape[0]
    features = jnp.broadcast_to(
        current.features_s4[:, None],
        (batch, num_slots) + current.features_s4.shape[1:],
    )
    x = jnp.concatenate(
        [
            features,
            global_maps[..., None],
            local_maps[..., None],
            previous[..., None],
        ],
        axis=-1,
    )
    x = x.reshape((batch * num_slots,) + x.shape[2:])
    with jax.named_scope('ensembler'):
      logits = layers.call_in_dtype(
          self.dynamic_seghead, _DTYPES[self.compute_dtype], x
      )
    logits = logits.astype(jnp.float32).reshape((batch, num_slots) + grid)
    logits = jnp.where(obj_valid[:, :, None, None], logits, INVALID_LOGIT)
    logits = jnp.moveaxis(logits, 1, -1)  # [B, h, w, K+1]
    own = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
    return Segmentation(
        logits=logits,
        memory_update=own,
        aux={'global': global_maps, 'local': local_maps, 'previous': previous},
    )

  def start_memory(
      self, emb: FrameEmbedding, labels: jnp.ndarray, memory_slots: int
  ) -> jnp.ndarray:
    """The first frame's one-hot labels at the embedding grid."""
    return one_hot_labels(labels, emb.scales[0].shape[1:3], memory_slots)

  def advance_memory(
      self,
      state,
      emb: FrameEmbedding,
      labels: jnp.ndarray,
      update: Any,
      training: bool = False,
  ) -> jnp.ndarray:
    """The next previous prediction: one-hot of the labels in training (the
    paper's ground-truth previous frame) or where no frame was segmented,
    `previous_probabilities` at inference."""
    memory_slots = state.memory.shape[-1]
    if training or update is None:
      return one_hot_labels(labels, emb.scales[0].shape[1:3], memory_slots)
    return previous_probabilities(update, labels, memory_slots)


# What each variant changes from the constructor's defaults (the paper's
# sizes on a ResNet-101 DeepLab).
VARIANTS = {
    'feelvos_resnet101': {},
    'feelvos_mobilenetv2': dict(backbone='mobilenetv2'),
    # The tiny DeepLab of `tiny_cfbi`; a window of 4 at stride 4 is the
    # paper's 15 scaled to the synthetic world's 120-pixel frames (15 is an
    # eighth of a 480-pixel DAVIS frame's stride-4 grid).
    'tiny_feelvos': dict(
        backbone_lib.TINY_DEEPLAB,
        embedding_dim=16,
        head_dim=32,
        head_kernel=7,
        local_window=4,
        global_chunks=1,
    ),
}

# There are no official FEELVOS weights in PyTorch to convert; a DeepLab
# backbone checkpoint (`convert.py --backbone_only`) loads into
# `feature_extracter` under the DeepLab's names.
# The paper's training (§4), as changes to the shared recipe (module
# docstring).
RECIPE = {
    # [paper] gradient descent with momentum 0.9, lr 0.0007.
    'optim.name': 'sgd',
    'optim.lr': 0.0007,
    'optim.momentum': 0.9,
    'optim.nesterov': False,
    # [ours] the paper names no schedule, warm-up, weight decay or
    # clipping: a constant lr (poly power 0) and none of the others.
    'optim.warmup_steps': 0,
    'optim.power': 0.0,
    'optim.weight_decay': 0.0,
    'optim.clip_grad_norm': 0.0,
    # [paper] a reference frame plus two adjacent frames, the previous and
    # the current; the loss on the current frame only.
    'train.num_frames': 1,
    'data.max_gap': 1,
    'data.reverse_prob': 0.0,
    # [paper] bootstrapped cross-entropy of the 15% hardest pixels, from
    # the first step (no ramp).
    'train.top_k_percent': 0.15,
    'train.hard_mining_step': 0,
    # [paper] 200k steps of 3 videos per GPU on 16 GPUs.
    'train.steps': 200_000,
    'train.batch_size': 48,
}

FAMILY = family_lib.Family(
    name='feelvos',
    module=FEELVOS,
    variants=VARIANTS,
    # Fields that change how the model evaluates but not its parameters.
    eval_fields=('global_chunks', 'global_chunk_mb', 'compute_dtype'),
    checkpoint_rules=backbone_lib.CHECKPOINT_RULES,
    checkpoint_aliases=backbone_lib.CHECKPOINT_ALIASES,
    training_overrides=lambda model_config: {'global_chunks': 20},  # [ours]
    # [paper FEELVOS §3] the ground-truth previous mask in training.
    own_predictions=False,
    recipe=RECIPE,
)
