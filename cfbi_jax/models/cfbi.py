"""CFBI and CFBI+: everything the project knows about this model family.

* `CFBI`: one NNX module for both papers (`arch='cfbi'` or `'cfbip'`), the
  composition of the shared blocks (`backbone`, `embedding`, `matching`,
  `attention`, `ensembler`). Its stages, shared by training and inference,
  are the `vos.VOSModel` protocol:
  - `embed(images)` -> `FrameEmbedding`: backbone + embedding head (CFBI) or
    FPN (CFBI+), for a batch of frames (training embeds all frames of a clip
    in one call);
  - `segment(state, current, obj_valid)` -> `vos.Segmentation`: matching
    against the references and the previous frame, attention vectors and
    the collaborative ensembler for one frame. Objects are padded to a
    fixed number of slots (slot 0 is the background) with an `obj_valid`
    mask; the object axis is vmapped in the matching functions and folded
    into the batch axis of the ensembler, never looped over in Python.
  Label maps enter at mask resolution (the original frame size at
  evaluation, the crop size in training) and are resized to every feature
  grid with the official legacy-nearest rule. Logits come out at stride 4,
  NHWC with the object slot last; invalid slots hold `INVALID_LOGIT`.
* `VARIANTS`: the released variants and the tiny test models, as changes to
  the constructor's defaults (which are the official `cfbi_resnet101`).
  The official variants carry the evaluation flags of their official
  scripts (`cfbi-official-notes.md` §20.1): `cfbi_resnet101` and
  `cfbi_mobilenetv2` as `ytb_eval.sh` / `davis_eval.sh` run them (float32
  matching, global atrous 1, 4 global chunks), `cfbip_resnet101` as
  `ytb_eval_cfbip.sh` (global atrous 2 at /4, chunks 4/1/1); the DAVIS
  scripts' flags are the family's dataset overrides (CFBI+:
  `min_matching_pixels=100`).
* `EVAL_FIELDS`: fields that change how the model evaluates, not its
  weights.
* `CHECKPOINT_RULES` / `CHECKPOINT_ALIASES`: the official state-dict names
  (the DeepLab's, `backbone.CHECKPOINT_RULES`, and the heads'; `convert.py`
  applies them).
* `zero_attention_gates`: the `config.init` switch of this family.
* `FAMILY`: the record `models` registers (`models/family.py`).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from cfbi_jax import attention
from cfbi_jax import backbone as backbone_lib
from cfbi_jax import embedding as embedding_lib
from cfbi_jax import ensembler as ensembler_lib
from cfbi_jax import layers
from cfbi_jax import matching
from cfbi_jax import resize
from cfbi_jax.vos import FrameEmbedding
from cfbi_jax.vos import INVALID_LOGIT
from cfbi_jax.vos import PropagationState
from cfbi_jax.vos import Segmentation
from cfbi_jax.models import family as family_lib
from cfbi_jax.models import feelvos

_DTYPES = family_lib.DTYPES


class CFBI(nnx.Module):
  """CFBI (`arch='cfbi'`) or CFBI+ (`arch='cfbip'`).

  Constructor fields are plain values (`models.build` passes them):
    arch: 'cfbi' or 'cfbip'.
    backbone: 'resnet' or 'mobilenetv2'; resnet_blocks / resnet_width size
      the ResNet.
    backbone_norm: 'frozen_bn' (official, needed by converted weights) or
      'group_norm' (`gn_groups` groups; for DeepLab trained from scratch,
      where a frozen BN is the identity).
    aspp_channels, decoder_channels: DeepLab widths (256).
    embedding_dim: CFBI embedding width (100) or CFBI+ FPN width (256).
    matching_dims: channels used for matching per scale (CFBI+: 32/64/128).
    gn_groups, gn_embedding_groups, gn_groups_refine: GroupNorm groups (32,
      25 for the CFBI embedding, 16 for the 64-wide pre-head/shortcut).
    prehead_dim: CFBI pre-head width (64).
    ensembler_dim, refine_dim: ensembler widths (256, 64).
    local_windows: per scale, the ascending local-window sizes.
    local_atrous: per scale, local atrous rate.
    local_downsample: CFBI's half-resolution local matching.
    global_atrous: per scale, global atrous rate.
    global_chunks: per scale, the least number of query chunks of global
      matching (the official `--global_chunks`).
    global_chunk_mb: bound on one chunk's distance matrix in MiB; more
      chunks are taken when the references or the frame need them, so the
      matching's memory does not grow with either.
    min_matching_pixels: the official `TEST_GLOBAL_MATCHING_MIN_PIXEL`.
    matching_dtype: 'float32', 'float16' or 'bfloat16'.
    compute_dtype: dtype of DeepLab and of the ensembler (with CFBI's
      pre-head): 'float32' (official), or 'bfloat16' / 'float16', which run
      them with their weights and inputs cast (the weights stay float32;
      features and logits come out float32). The embedding head / FPN and
      the matching stay float32 (matching follows `matching_dtype`). A
      faster, less exact setting for GPUs and TPUs.
    attention_uses_atrous_labels: reproduce the official in-place label
      mutation that makes the /4 attention vector see lattice-masked
      reference labels (notes §8); False computes it from the full labels.

  Ablation switches (CFBI Tables 3-4; the defaults are the papers' models and
  the only settings of the official weights):
    use_background: False drops background integration: the background
      matching maps, the background half of the per-object embedding and
      the background halves of the attention vector are zeros (the layers
      stay, so shapes and checkpoints do not change).
    use_matching_bias: False fixes the trainable foreground / background
      offsets of the matching distance at 0.
    use_attention: False feeds zeros for the attention vector, so each
      instance-level gate becomes a learned per-channel constant (no
      per-object information).
    head: 'ensembler' (the collaborative ensembler) or 'feelvos' (FEELVOS's
      dynamic segmentation head over the same inputs; CFBI only).
  """

  def __init__(
      self,
      arch: str = 'cfbi',
      backbone: str = 'resnet',
      resnet_blocks: Sequence[int] = (3, 4, 23, 3),
      resnet_width: int = 64,
      aspp_channels: int = 256,
      decoder_channels: int = 256,
      embedding_dim: int = 100,
      matching_dims: Sequence[int] = (100,),
      gn_groups: int = 32,
      gn_embedding_groups: int = 25,
      gn_groups_refine: int = 16,
      prehead_dim: int = 64,
      ensembler_dim: int = 256,
      refine_dim: int = 64,
      local_windows: Sequence[Sequence[int]] = ((2, 4, 6, 8, 10, 12),),
      local_atrous: Sequence[int] = (1,),
      local_downsample: bool = True,
      global_atrous: Sequence[int] = (1,),
      global_chunks: Sequence[int] = (4,),
      global_chunk_mb: float = 256.0,
      min_matching_pixels: int = 0,
      matching_dtype: str = 'float32',
      compute_dtype: str = 'float32',
      attention_uses_atrous_labels: bool = True,
      use_background: bool = True,
      use_matching_bias: bool = True,
      use_attention: bool = True,
      head: str = 'ensembler',
      backbone_norm: str = 'frozen_bn',
      *,
      rngs: nnx.Rngs,
  ):
    if arch not in ('cfbi', 'cfbip'):
      raise ValueError(f"arch must be 'cfbi' or 'cfbip', got {arch!r}")
    num_scales = 1 if arch == 'cfbi' else 3
    for name, value in (
        ('matching_dims', matching_dims),
        ('local_windows', local_windows),
        ('local_atrous', local_atrous),
        ('global_atrous', global_atrous),
        ('global_chunks', global_chunks),
    ):
      if len(value) != num_scales:
        raise ValueError(
            f'{name} needs {num_scales} entries for {arch}, ' f'got {value!r}'
        )
    if head not in ('ensembler', 'feelvos'):
      raise ValueError(f"head must be 'ensembler' or 'feelvos', got {head!r}")
    if head == 'feelvos' and arch != 'cfbi':
      raise ValueError("head='feelvos' is implemented for arch='cfbi' only")
    for name, value in (
        ('matching_dtype', matching_dtype),
        ('compute_dtype', compute_dtype),
    ):
      if value not in _DTYPES:
        raise ValueError(
            f'{name} must be one of {sorted(_DTYPES)}, got ' f'{value!r}'
        )
    self.arch = arch
    self.matching_dims = tuple(matching_dims)
    self.local_windows = tuple(tuple(w) for w in local_windows)
    self.local_atrous = tuple(local_atrous)
    self.local_downsample = local_downsample
    self.global_atrous = tuple(global_atrous)
    self.global_chunks = tuple(global_chunks)
    self.global_chunk_mb = float(global_chunk_mb)
    self.compute_dtype = compute_dtype
    self.min_matching_pixels = min_matching_pixels
    self.matching_dtype = matching_dtype
    self.attention_uses_atrous_labels = attention_uses_atrous_labels
    self.use_background = use_background
    self.use_matching_bias = use_matching_bias
    self.use_attention = use_attention
    self.head = head
    self.bg_bias = nnx.Param(jnp.zeros((num_scales,), jnp.float32))
    self.fg_bias = nnx.Param(jnp.zeros((num_scales,), jnp.float32))
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
    chans = self.feature_extracter.out_channels
    low_dim = chans['low_s4']
    if arch == 'cfbi':
      self.embedding = embedding_lib.EmbeddingHead(
          decoder_channels,
          embedding_dim,
          gn_groups,
          gn_embedding_groups,
          rngs=rngs,
      )
      map_dim = 3 + 2 * len(self.local_windows[0])
      self.dynamic_prehead = ensembler_lib.DynamicPreHead(
          map_dim, prehead_dim, gn_groups_refine, rngs=rngs
      )
      if head == 'feelvos':
        self.dynamic_seghead = feelvos.FeelvosHead(
            3 * embedding_dim + prehead_dim, ensembler_dim, gn_groups, rngs=rngs
        )
      else:
        self.dynamic_seghead = ensembler_lib.CollaborativeEnsembler(
            3 * embedding_dim + prehead_dim,
            low_dim,
            4 * embedding_dim,
            ensembler_dim,
            refine_dim,
            gn_groups,
            gn_groups_refine,
            rngs=rngs,
        )
    else:
      if chans['mid_s8'] is None:
        raise ValueError('CFBI+ needs a ResNet backbone (stride-8 feature)')
      self.embedding = embedding_lib.FPN(
          decoder_channels,
          chans['mid_s8'],
          aspp_channels,
          embedding_dim,
          gn_groups,
          rngs=rngs,
      )
      in_dims = [3 * embedding_dim + 3 + 2 * len(w) for w in self.local_windows]
      self.dynamic_seghead = ensembler_lib.CollaborativeEnsemblerMS(
          in_dims,
          low_dim,
          4 * embedding_dim,
          ensembler_dim,
          refine_dim,
          gn_groups,
          gn_groups_refine,
          rngs=rngs,
      )

  # ------------------------------------------------------------------ embed
  def embed(
      self, images: jnp.ndarray, dropout_rng: Optional[jax.Array] = None
  ) -> Tuple[FrameEmbedding, Dict[str, jnp.ndarray]]:
    """Embeds a batch of frames.

    Args:
      images: `[B, H, W, 3]` normalised images (see `preprocess_images`).
      dropout_rng: key for the DeepLab ASPP dropout (training); None at eval.

    Returns:
      `(FrameEmbedding, features)`, the latter the DeepLab features by
      stride (for inspection and parity tests).
    """
    dtype = _DTYPES[self.compute_dtype]
    feats = layers.call_in_dtype(
        self.feature_extracter, dtype, images, dropout_rng
    )
    # The embedding head (CFBI) or FPN (CFBI+) stays float32: matching
    # takes differences of squared norms, which bfloat16 inputs would drown.
    feats = {
        k: v.astype(jnp.float32) if v is not None else None
        for k, v in feats.items()
    }
    if self.arch == 'cfbi':
      scales = self.embedding(feats['decoder_s4'])
    else:
      scales = self.embedding(
          feats['decoder_s4'], feats['mid_s8'], feats['aspp_s16']
      )
    return (
        FrameEmbedding(features_s4=feats['low_s4'], scales=tuple(scales)),
        feats,
    )

  # ---------------------------------------------------------------- segment
  def segment(
      self,
      state: PropagationState,
      current: FrameEmbedding,
      obj_valid: jnp.ndarray,
      training: bool = False,
  ) -> Segmentation:
    """Segments one frame against its references and previous frame.

    Args:
      state: the carried state (batch B): per scale `[B, R, h_s, w_s, C_s]`
        reference and `[B, h_s, w_s, C_s]` previous-frame embeddings,
        `[B, R, H, W]` reference and `[B, H, W]` previous labels at mask
        resolution, `[B, R]` filled reference slots. CFBI has no memory.
      current: the current frame's `FrameEmbedding` (batch B).
      obj_valid: `[B, K+1]` bool object slots (slot 0, background, valid).
      training: the official training path: the global-matching lattice is
        applied to every object (min pixels 0), which also reaches the
        attention vector when `attention_uses_atrous_labels`.

    Returns:
      `[B, h4, w4, K+1]` stride-4 logits (invalid slots set to
      `INVALID_LOGIT`) and, in `aux`, named intermediates, object-first
      `[B, K+1, h, w(, L)]` (`global_fg_s4`, `local_bg_s8`, `attention_s4`,
      `fg_logit`, ...).
    """
    ref_scales, ref_labels, ref_valid = (
        state.ref_scales,
        state.ref_labels,
        state.ref_valid,
    )
    prev_scales, prev_labels = state.prev_scales, state.prev_labels
    num_slots = obj_valid.shape[1]
    dtype = _DTYPES[self.matching_dtype]
    aux = {}
    per_scale_inputs = []
    heads = None
    for s, (ref_e, prev_e, cur_e) in enumerate(
        zip(ref_scales, prev_scales, current.scales)
    ):
      name = f's{4 * 2 ** s}'
      grid = cur_e.shape[1:3]
      ref_lab = resize.resize_labels_nearest(ref_labels, grid)
      ref_lab = jnp.where(ref_valid[:, :, None, None], ref_lab, -1)
      prev_lab = resize.resize_labels_nearest(prev_labels, grid)
      md = self.matching_dims[s]
      bg_b, fg_b = self.bg_bias[s], self.fg_bias[s]
      if not self.use_matching_bias:
        bg_b = fg_b = jnp.zeros((), jnp.float32)
      min_pixels = 0 if training else self.min_matching_pixels
      global_fn = lambda q, r, lab, ov: matching.global_matching(
          q,
          r,
          lab,
          ov,
          bg_bias=bg_b,
          fg_bias=fg_b,
          num_chunks=self.global_chunks[s],
          max_chunk_bytes=int(self.global_chunk_mb * 2**20),
          atrous=self.global_atrous[s],
          min_pixels=min_pixels,
          matching_dtype=dtype,
      )
      with jax.named_scope('global_matching'):
        global_fg = jax.vmap(global_fn)(
            cur_e[..., :md], ref_e[..., :md], ref_lab, obj_valid
        )
      if self.local_downsample:
        local_impl = matching.local_matching_downsampled
      else:
        local_impl = matching.local_matching
      local_fn = lambda q, p, lab, ov: local_impl(
          q,
          p,
          lab,
          ov,
          bg_bias=bg_b,
          fg_bias=fg_b,
          windows=self.local_windows[s],
          atrous=self.local_atrous[s],
          matching_dtype=dtype,
      )
      with jax.named_scope('local_matching'):
        local_fg = jax.vmap(local_fn)(
            cur_e[..., :md], prev_e[..., :md], prev_lab, obj_valid
        )
      fg2bg = jax.vmap(matching.foreground_to_background)
      global_bg = fg2bg(global_fg, obj_valid)
      local_bg = fg2bg(local_fg, obj_valid)
      if not self.use_background:
        global_bg, local_bg = jnp.zeros_like(global_bg), jnp.zeros_like(
            local_bg
        )
      prev_onehot = (
          prev_lab[:, None] == jnp.arange(num_slots)[None, :, None, None]
      )
      prev_onehot = prev_onehot.astype(cur_e.dtype)  # [B, K+1, h, w]
      aux.update(
          {
              f'global_fg_{name}': global_fg,
              f'global_bg_{name}': global_bg,
              f'local_fg_{name}': local_fg,
              f'local_bg_{name}': local_bg,
              f'prev_onehot_{name}': prev_onehot,
          }
      )
      if s == 0:
        with jax.named_scope('attention'):
          att_lab = ref_lab
          if (
              self.attention_uses_atrous_labels
              and self.global_atrous[0] > 1
              and (training or self.min_matching_pixels > 0)
          ):
            att_lab = jax.vmap(
                lambda lab, ov: matching.atrous_reference_labels(
                    lab, ov, atrous=self.global_atrous[0], min_pixels=min_pixels
                )
            )(ref_lab, obj_valid)
          heads = jax.vmap(
              attention.attention_head, in_axes=(0, 0, 0, 0, 0, None)
          )(
              ref_e, att_lab, ref_valid, prev_e, prev_lab, num_slots
          )  # [B, K+1, 4C]
          heads = _ablate_attention(
              heads, self.use_background, self.use_attention
          )
        aux['attention_s4'] = heads
      maps = jnp.concatenate(
          [
              global_fg[..., None],
              local_fg,
              prev_onehot[..., None],
              local_bg,
              global_bg[..., None],
          ],
          axis=-1,
      )  # [B, K+1, h, w, M]
      objs = _per_object(
          cur_e, prev_e, prev_onehot, self.use_background
      )  # [B, K+1, h, w, 3C]
      per_scale_inputs.append((maps, objs))

    batch = obj_valid.shape[0]
    fold = lambda x: x.reshape((batch * num_slots,) + x.shape[2:])
    low = jnp.repeat(current.features_s4, num_slots, axis=0)
    head = fold(heads)
    with jax.named_scope('ensembler'):
      dtype = _DTYPES[self.compute_dtype]
      if self.arch == 'cfbi':
        maps, objs = per_scale_inputs[0]
        pre = layers.call_in_dtype(self.dynamic_prehead, dtype, fold(maps))
        aux['prehead'] = pre.reshape((batch, num_slots) + pre.shape[1:])
        x = jnp.concatenate([fold(objs).astype(pre.dtype), pre], axis=-1)
        if self.head == 'feelvos':
          fg = layers.call_in_dtype(self.dynamic_seghead, dtype, x)
          bg = jnp.zeros_like(fg)  # Background is slot 0's own logit.
        else:
          fg, bg = layers.call_in_dtype(
              self.dynamic_seghead, dtype, x, low, head
          )
      else:
        xs = [
            fold(jnp.concatenate([maps, objs], axis=-1))
            for maps, objs in per_scale_inputs
        ]
        fg, bg = layers.call_in_dtype(
            self.dynamic_seghead, dtype, xs, low, head
        )
    fg, bg = fg.astype(jnp.float32), bg.astype(jnp.float32)
    unfold = lambda x: x.reshape((batch, num_slots) + x.shape[1:])
    fg, bg = unfold(fg), unfold(bg)
    aux['fg_logit'], aux['bg_logit'] = fg, bg
    logits = ensembler_lib.augment_background_logit(fg, bg, obj_valid)
    logits = jnp.where(obj_valid[:, :, None, None], logits, INVALID_LOGIT)
    return Segmentation(logits=jnp.moveaxis(logits, 1, -1), aux=aux)

  # ------------------------------------------------------------ memory
  def start_memory(
      self, emb: FrameEmbedding, labels: jnp.ndarray, memory_slots: int
  ) -> Tuple[()]:
    """CFBI has no memory of its own: `()`."""
    del emb, labels, memory_slots
    return ()

  def advance_memory(
      self,
      state,
      emb: FrameEmbedding,
      labels: jnp.ndarray,
      update,
      training: bool = False,
  ) -> Tuple[()]:
    """CFBI has no memory of its own: `()`."""
    del state, emb, labels, update, training
    return ()


def _ablate_attention(
    heads: jnp.ndarray, use_background: bool, use_attention: bool
) -> jnp.ndarray:
  """The attention vectors `[B, K+1, 4C]` ([ref_fg, ref_bg, prev_fg,
  prev_bg]) with the background quarters (no background integration) or
  everything (no instance attention) zeroed."""
  if not use_attention:
    return jnp.zeros_like(heads)
  if not use_background:
    c = heads.shape[-1] // 4
    keep = jnp.repeat(jnp.array([1.0, 0.0, 1.0, 0.0], heads.dtype), c)
    return heads * keep
  return heads


def _per_object(
    cur: jnp.ndarray,
    prev: jnp.ndarray,
    prev_onehot: jnp.ndarray,
    use_background: bool = True,
) -> jnp.ndarray:
  """[E_cur | E_prev * m_i | E_prev * (1 - m_i)] per object slot.

  Args:
    cur: `[B, h, w, C]`; prev: `[B, h, w, C]`; prev_onehot: `[B, K+1, h, w]`.
    use_background: False zeros the `E_prev * (1 - m_i)` part.

  Returns:
    `[B, K+1, h, w, 3C]`.
  """
  m = prev_onehot[..., None]
  num_slots = prev_onehot.shape[1]
  cur = jnp.broadcast_to(
      cur[:, None], (cur.shape[0], num_slots) + cur.shape[1:]
  )
  bg = prev[:, None] * (1.0 - m)
  if not use_background:
    bg = jnp.zeros_like(bg)
  return jnp.concatenate([cur, prev[:, None] * m, bg], axis=-1)


_CFBI_WINDOWS = (2, 4, 6, 8, 10, 12)
# A ResNet with one block per stage, width 8 (about 1M parameters).
_TINY = dict(
    backbone_lib.TINY_DEEPLAB,
    embedding_dim=16,
    matching_dims=(16,),
    gn_embedding_groups=4,
    gn_groups_refine=4,
    prehead_dim=16,
    ensembler_dim=32,
    refine_dim=16,
    local_windows=((2, 4),),
    global_chunks=(1,),
)

# The released variants and the tiny test models: what each changes from
# the constructor's defaults (the official `cfbi_resnet101`).
VARIANTS = {
    'cfbi_resnet101': {},
    'cfbi_mobilenetv2': dict(backbone='mobilenetv2'),
    'cfbip_resnet101': dict(
        arch='cfbip',
        embedding_dim=256,
        matching_dims=(32, 64, 128),
        local_windows=((4, 8, 12, 16, 20, 24), _CFBI_WINDOWS, (2, 4, 6, 8, 10)),
        local_atrous=(2, 1, 1),
        local_downsample=False,
        global_atrous=(2, 1, 1),
        global_chunks=(4, 1, 1),
    ),
    'tiny_cfbi': _TINY,
    # CFBI+ at test size: as `cfbip_resnet101`, the stride-4 windows are
    # twice the stride-8 ones (the paper's 4..24 against 2..12), so both
    # scales look as far in frame pixels.
    'tiny_cfbip': dict(
        _TINY,
        arch='cfbip',
        embedding_dim=16,
        matching_dims=(8, 8, 16),
        local_windows=((4, 8), (2, 4), (2,)),
        local_atrous=(2, 1, 1),
        local_downsample=False,
        global_atrous=(2, 1, 1),
        global_chunks=(2, 1, 1),
    ),
}


def _dataset_overrides(variant: str, dataset: str) -> dict:
  """Model fields that the official evaluation scripts of `dataset` set
  differently from the variant's own (`davis_eval_cfbip.sh`)."""
  if dataset.startswith('davis') and variant == 'cfbip_resnet101':
    return {'min_matching_pixels': 100}
  return {}


def _training_overrides(model_config) -> dict:
  """[official] TRAIN_GLOBAL_CHUNKS: 20 (CFBI), one per scale (CFBI+)."""
  single = len(model_config['global_chunks']) == 1
  return {'global_chunks': (20,) if single else (20, 10, 5)}


# Fields that change how the model evaluates but not its parameters; a
# caller may override them when loading.
EVAL_FIELDS = (
    'global_atrous',
    'global_chunks',
    'global_chunk_mb',
    'compute_dtype',
    'min_matching_pixels',
    'matching_dtype',
    'attention_uses_atrous_labels',
    'use_background',
    'use_matching_bias',
    'use_attention',
)


# ---- The official checkpoint's names (applied by `convert.py`) beyond the
# DeepLab's (`backbone.CHECKPOINT_RULES`).
CHECKPOINT_RULES: List[family_lib.Rule] = backbone_lib.CHECKPOINT_RULES + [
    # Embedding heads: CFBI's are top-level modules, CFBI+'s FPN is `fpn`.
    (r'^embedding\.(\w+)\.conv\.', r'fpn.\1.0.'),
    (r'^embedding\.(\w+)\.gn\.', r'fpn.\1.1.'),
    (r'^embedding\.', ''),
    # CFBI ensembler stages and gates.
    (
        r'^dynamic_seghead\.gates\.(\d+)\.',
        lambda m: f'dynamic_seghead.IA{int(m[1]) + 1}.',
    ),
    (
        r'^dynamic_seghead\.stages\.(\d+)\.',
        lambda m: f'dynamic_seghead.layer{int(m[1]) + 1}.',
    ),
]

# Alias key patterns (same tensor registered twice) -> the canonical name.
CHECKPOINT_ALIASES: List[family_lib.Rule] = [
    (r'^semantic_embedding\.0\.', 'seperate_conv.'),
    (r'^semantic_embedding\.1\.', 'bn1.'),
    (r'^semantic_embedding\.3\.', 'embedding_conv.'),
    (r'^semantic_embedding\.4\.', 'bn2.'),
] + backbone_lib.CHECKPOINT_ALIASES


def zero_attention_gates(module: nnx.Module) -> int:
  """Zeroes the linear layer of every `IAGate` (gates start at 1).

  Returns:
    How many gates were zeroed.
  """
  count = 0
  for _, sub in nnx.iter_modules(module):
    if isinstance(sub, attention.IAGate):
      sub.IA.kernel[...] = jnp.zeros_like(sub.IA.kernel[...])
      sub.IA.bias[...] = jnp.zeros_like(sub.IA.bias[...])
      count += 1
  return count


FAMILY = family_lib.Family(
    name='cfbi',
    module=CFBI,
    variants=VARIANTS,
    eval_fields=EVAL_FIELDS,
    checkpoint_rules=CHECKPOINT_RULES,
    checkpoint_aliases=CHECKPOINT_ALIASES,
    official_weights=True,
    init_hooks={'zero_attention_gates': zero_attention_gates},
    dataset_overrides=_dataset_overrides,
    training_overrides=_training_overrides,
    own_predictions=True,
)
