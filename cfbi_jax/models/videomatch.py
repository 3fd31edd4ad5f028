"""VideoMatch (Hu, Huang and Schwing, ECCV 2018): everything the project
knows about this model family.

VideoMatch (`../shared/reference/papers/`, file 003) segments a frame by
matching its features to the foreground and background features of the
first frame, with no decoder after the matching:

* features: [ours] a 1x1 projection of the DeepLabV3+ decoder output to
  `embedding_dim` channels, at stride 8 (`match_stride=8`, every other row
  and column of the stride-4 grid: the paper matches the stride-8 top layer
  of a dilated ResNet-101) or at stride 4;
* the soft matching layer (`soft_matching`, §3.2): for every pixel, the
  cosine similarity to each feature of a set, averaged over its top K = 20
  matches; per object k against its foreground set m_F,k (its pixels) and
  its background set m_B,k (every other pixel of the frame), §3.4;
* the weighted softmax (§3.3) of the two scores to a foreground
  probability, p_k = softmax(w [S_F, S_B])_F = sigmoid(w (S_F - S_B)), with
  [ours] w a learned scalar (`softmax_weight` its initial value): the paper
  names a weighted softmax without giving the weight;
* outlier removal (§3.3, `extrude`): foreground of object k is kept only
  within d_c = 100 pixels of its previous-frame mask;
* the fusion of §3.4: the label of a pixel is the object of highest p_k, or
  the background when every p_k is below c2 = 0.4 (`fused_logits`: slot 0
  holds log c2, slot k log p_k, so the argmax, which the shared evaluation
  takes, is exactly that rule);
* the online update (§3.3, `update_sets`): after each frame, the features
  of pixels first predicted as foreground of k but removed as outliers join
  m_B,k, and those of the eroded final mask of k with p_k > c1 = 0.95 (and
  not just added to m_B,k) join m_F,k.

The sets are the reference frames' pixels (the first frame, and frames
that introduced objects: the carried `PropagationState`) plus the online
update, which grows. In JAX the growth is a fixed-capacity buffer, the
model's `memory`: `update_capacity` pixel features `[B, P, C]` with their
membership `fg`, `bg` `[B, P, S]` (the validity masks: an unwritten or
reassigned entry belongs to no set) and the count of pixels written. When
it is full, new pixels overwrite the oldest updates first (a ring); the
reference frames' pixels are never dropped. One frame adds at most P pixels
(the first P in raster order).

Training (`FAMILY.recipe`, the default of every training config with
`model=videomatch`; `recipe=cfbi` trains with CFBI's shared recipe):

* [paper §4.1] pairs of randomly chosen frames, not necessarily
  consecutive: `data.frame_sampling='pairs'` draws each current frame of a
  clip uniformly from the video, and each is matched to the reference
  alone (training has no outlier removal and no online update, as in the
  paper). [ours] A clip of N current frames is N pairs sharing one
  reference (the stage's N), so the reference is embedded once for all.
* [paper] Adam, initial lr 1e-5, "gradually decreases" ([ours] poly decay
  with power 0.9, no warm-up), weight decay 5e-4 as an L2 term added to
  the gradient (TensorFlow's regulariser; `optim.name='adam'`, not AdamW),
  flips, random crops and random scale 0.5-1.5.
* The loss. The paper trains the softmax of the two matching scores, p_k =
  softmax(w [S_F, S_B])_F = sigmoid(z_k), z_k = w (S_F - S_B), against the
  object's mask; with several objects, [ours] the mean over objects of
  that binary cross-entropy (`losses.object_binary_cross_entropy` on
  `Segmentation.object_logits`), over every pixel (no bootstrapping: the
  paper names none). It is computed as log-sigmoids: it goes to 0 as the
  scores become right, and a badly wrong pixel keeps a gradient of about
  1. (Training on the fused logits of inference, as before, put a floor of
  ln 1.4 under every foreground pixel, since the fused probability is
  p / (0.4 + p), and passed no gradient where log(max(p, 1e-6)) clipped.)
* Departures that remain: [ours] steps and batch size are the stage's
  (the paper trains 1000 iterations on DAVIS from a Pascal VOC model and
  gives no batch size); the DeepLabV3+ of this package rather than the
  paper's dilated ResNet-101 top layer.

[ours] d_c is in pixels of the frame (mask resolution), converted to the
matching grid; the erosion is `erosion` grid pixels; the initial foreground
of object k is p_k > 0.5; outlier removal works at the matching grid,
before the logits are upsampled.
"""

import inspect
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
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

# Probabilities enter the logits as log(max(p, _EPS)).
_EPS = 1e-6


def top_k_mean(
    similarity: jnp.ndarray, member: jnp.ndarray, k: int
) -> jnp.ndarray:
  """Mean of the `k` largest similarities among the members of a set.

  Args:
    similarity: `[..., N]` similarities to N candidates.
    member: `[..., N]` bool, the candidates in the set (broadcastable).
    k: K of the paper (static).

  Returns:
    `[...]` float32: the mean over the min(k, members) best members; -1 (the
    least cosine similarity) for an empty set.
  """
  k = min(k, similarity.shape[-1])
  best, _ = jax.lax.top_k(similarity + _set_bias(member), k)
  return _mean_of_finite(best)


def _set_bias(member: jnp.ndarray) -> jnp.ndarray:
  """0 for a member, -inf otherwise: added to a similarity, it masks the
  non-members (an add broadcasts and fuses into a reduction far better than
  a `where` on a broadcast mask on the CPU: 0.09 s against 0.55 s for a
  block max over 4 x 6420 x 8468 values)."""
  return jnp.where(member, 0.0, -jnp.inf).astype(jnp.float32)


def _mean_of_finite(best: jnp.ndarray) -> jnp.ndarray:
  """`[..., k]` ranked values (-inf where the set ran out) -> their mean,
  -1 for none."""
  found = jnp.isfinite(best)
  count = jnp.sum(found, axis=-1)
  total = jnp.sum(jnp.where(found, best, 0.0), axis=-1)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), -1.0)


def set_top_k_mean(
    similarity: jnp.ndarray, member: jnp.ndarray, k: int, block: int = 0
) -> jnp.ndarray:
  """`top_k_mean` of every query against every set.

  With `block` > 0 the same numbers at a fraction of the cost on long rows.
  The candidates are cut into blocks of `block`; for each query and set,
  the k blocks of largest member maxima are taken (`top_k` over the block
  maxima), and the answer is the top k of the members in those k * block
  candidates. It is exact: a member outside those blocks is at most the
  smallest of their k maxima, so k members at least as large are already
  among them. One `top_k` over all N masked candidates per query and set
  becomes a masked max over N (an add and a reduction, which fuse), a
  `top_k` over N / block maxima and one over k * block candidates gathered
  from the shared similarities. Rows shorter than 4 k * block take the
  plain `top_k`.

  Args:
    similarity: `[Q, N]` similarities of Q queries to N candidates.
    member: `[S, N]` bool, candidate n is in set s.
    k: K (static).
    block: candidates per block (static; 0: the plain `top_k`).

  Returns:
    `[S, Q]` float32 means (-1 for an empty set).
  """
  num_queries, n = similarity.shape
  num_sets = member.shape[0]
  k = min(k, n)
  if block <= 0 or n < 4 * k * block:
    return top_k_mean(similarity[None], member[:, None], k)
  bias = _set_bias(member)
  blocks = -(-n // block)
  pad = ((0, 0), (0, blocks * block - n))
  sim_b = jnp.pad(similarity, pad).reshape(num_queries, blocks, block)
  bias_b = jnp.pad(bias, pad, constant_values=-jnp.inf).reshape(
      num_sets, blocks, block
  )
  maxima = jnp.max(sim_b[None] + bias_b[:, None], axis=-1)  # [S, Q, blocks]
  _, chosen = jax.lax.top_k(maxima, k)  # [S, Q, k] block ids
  values = (
      sim_b[jnp.arange(num_queries)[None, :, None], chosen]
      + bias_b[jnp.arange(num_sets)[:, None, None], chosen]
  )  # [S, Q, k, block]
  best, _ = jax.lax.top_k(values.reshape(num_sets, num_queries, k * block), k)
  return _mean_of_finite(best)


def soft_matching(
    query: jnp.ndarray,
    candidates: jnp.ndarray,
    fg: jnp.ndarray,
    bg: jnp.ndarray,
    *,
    k: int,
    max_chunk_bytes: Optional[int] = None,
    top_k_block: int = 0,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """The soft matching layer SML (§3.2) for every object's two sets.

  Args:
    query: `[h, w, C]` current-frame features.
    candidates: `[N, C]` features of the template sets (all objects').
    fg: `[N, S]` bool, candidate n is in object s's foreground set.
    bg: `[N, S]` bool, candidate n is in object s's background set.
    k: top K.
    max_chunk_bytes: bound on one query chunk's `[S, chunk, N]` masked
      similarities (static; None: one chunk).
    top_k_block: the blocked exact top K of `set_top_k_mean` (0: plain).

  Returns:
    `(S_F, S_B)`, each `[S, h, w]` float32.
  """
  height, width, channels = query.shape
  num_slots = fg.shape[1]
  unit = lambda x: x / jnp.maximum(
      jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12
  )
  q = unit(query.reshape(-1, channels).astype(jnp.float32))
  c = unit(candidates.astype(jnp.float32))
  num_queries = q.shape[0]
  chunks = matching.chunk_count(
      num_slots * c.shape[0], num_queries, 1, max_chunk_bytes, jnp.float32
  )
  size = -(-num_queries // chunks)
  q = jnp.pad(q, ((0, size * chunks - num_queries), (0, 0)))

  def match_chunk(qc):
    sim = jnp.einsum(
        'qc,nc->qn', qc, c, precision=jax.lax.Precision.HIGHEST
    )  # [chunk, N]
    score = lambda member: set_top_k_mean(sim, member.T, k, top_k_block)
    return score(fg), score(bg)  # [S, chunk]

  s_f, s_b = jax.lax.map(match_chunk, q.reshape(chunks, size, channels))
  shape = (
      lambda x: jnp.moveaxis(x, 1, 0)
      .reshape(num_slots, -1)[:, :num_queries]
      .reshape(num_slots, height, width)
  )
  return shape(s_f), shape(s_b)


def disk_offsets(radius: float, inclusive: bool = False) -> np.ndarray:
  """`[n, 2]` integer offsets (dy, dx) with dy^2 + dx^2 < radius^2 (<= with
  `inclusive`; the origin always included)."""
  r = int(np.ceil(radius))
  dy, dx = np.meshgrid(
      np.arange(-r, r + 1), np.arange(-r, r + 1), indexing='ij'
  )
  sq = dy**2 + dx**2
  inside = (sq <= radius**2 if inclusive else sq < radius**2) | (sq == 0)
  return np.stack([dy[inside], dx[inside]], axis=1)


def extrude(masks: jnp.ndarray, radius: float) -> jnp.ndarray:
  """Pixels closer than `radius` to a mask (Euclidean, in pixels).

  Args:
    masks: `[..., h, w]` bool.
    radius: d_c in pixels of this grid (static).

  Returns:
    `[..., h, w]` bool, True within the distance (the mask included).
  """
  r = int(np.ceil(radius))
  if r == 0:
    return masks
  h, w = masks.shape[-2:]
  pad = [(0, 0)] * (masks.ndim - 2) + [(r, r), (r, r)]
  padded = jnp.pad(masks, pad)
  out = jnp.zeros_like(masks)
  for dy, dx in disk_offsets(radius):
    out = out | padded[..., r + dy : r + dy + h, r + dx : r + dx + w]
  return out


def erode(masks: jnp.ndarray, radius: float) -> jnp.ndarray:
  """Pixels of a mask with no pixel outside it within `radius` (distance
  <= radius, so 1 removes the pixels with a 4-neighbour outside; the
  frame's border does not erode).

  Args:
    masks: `[..., h, w]` bool.
    radius: in pixels (static).

  Returns:
    `[..., h, w]` bool.
  """
  r = int(np.ceil(radius))
  if r == 0:
    return masks
  h, w = masks.shape[-2:]
  pad = [(0, 0)] * (masks.ndim - 2) + [(r, r), (r, r)]
  outside = jnp.pad(~masks, pad)
  near = jnp.zeros_like(masks)
  for dy, dx in disk_offsets(radius, inclusive=True):
    near = near | outside[..., r + dy : r + dy + h, r + dx : r + dx + w]
  return masks & ~near


def fused_logits(
    probs: jnp.ndarray, obj_valid: jnp.ndarray, background_threshold: float
) -> jnp.ndarray:
  """§3.4's fusion as logits: argmax is the object of highest p_k, or the
  background if every p_k < c2.

  Args:
    probs: `[B, S, h, w]` foreground probabilities (slot 0 ignored).
    obj_valid: `[B, S]` bool.
    background_threshold: c2.

  Returns:
    `[B, S, h, w]` float32: slot 0 log c2, slot k log max(p_k, 1e-6),
    invalid slots `INVALID_LOGIT`.
  """
  logits = jnp.log(jnp.maximum(probs, _EPS))
  slot = jnp.arange(probs.shape[1])[None, :, None, None]
  logits = jnp.where(slot == 0, float(np.log(background_threshold)), logits)
  return jnp.where(obj_valid[:, :, None, None], logits, INVALID_LOGIT)


def update_sets(
    initial_fg: jnp.ndarray,
    extruded: jnp.ndarray,
    final_labels: jnp.ndarray,
    final_probs: jnp.ndarray,
    obj_valid: jnp.ndarray,
    *,
    confidence: float,
    erosion: float,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """§3.3's online update: which pixels join which set, per object.

  b_k = initial foreground of k outside its extruded previous mask;
  f_k = eroded final mask of k, where p_k > c1, not in b_k. Slot 0 and
  invalid slots join nothing.

  Args:
    initial_fg: `[S, h, w]` bool, y_t,init per object (p_k > 0.5).
    extruded: `[S, h, w]` bool, the extruded previous masks.
    final_labels: `[h, w]` int final labels at the grid.
    final_probs: `[S, h, w]` p_k after outlier removal.
    obj_valid: `[S]` bool.
    confidence: c1.
    erosion: erosion radius in grid pixels.

  Returns:
    `(to_fg, to_bg)`, each `[S, h, w]` bool.
  """
  num_slots = obj_valid.shape[0]
  objects = (obj_valid & (jnp.arange(num_slots) > 0))[:, None, None]
  to_bg = initial_fg & ~extruded & objects
  mine = final_labels[None] == jnp.arange(num_slots)[:, None, None]
  to_fg = erode(mine, erosion) & (final_probs > confidence) & ~to_bg & objects
  return to_fg, to_bg


def write_sets(
    memory: Dict[str, jnp.ndarray],
    features: jnp.ndarray,
    to_fg: jnp.ndarray,
    to_bg: jnp.ndarray,
) -> Dict[str, jnp.ndarray]:
  """Appends pixels to the fixed-capacity buffer of one stream (a ring).

  Args:
    memory: `{'features': [P, C], 'fg': [P, S], 'bg': [P, S], 'count': []}`.
    features: `[n, C]` this frame's pixel features.
    to_fg, to_bg: `[n, S]` bool, the sets each pixel joins.

  Returns:
    The buffer with the selected pixels (the first P of them, in order)
    written at positions count, count + 1, ... modulo P, and `count`
    advanced by their number.
  """
  capacity = memory['features'].shape[0]
  selected = jnp.any(to_fg | to_bg, axis=1)
  rank = jnp.cumsum(selected) - 1
  keep = selected & (rank < capacity)
  position = jnp.where(keep, (memory['count'] + rank) % capacity, capacity)
  put = lambda old, new: old.at[position].set(
      new.astype(old.dtype), mode='drop'
  )
  return {
      'features': put(memory['features'], features),
      'fg': put(memory['fg'], to_fg),
      'bg': put(memory['bg'], to_bg),
      'count': memory['count'] + jnp.sum(keep).astype(jnp.int32),
  }


class VideoMatch(nnx.Module):
  """VideoMatch on one of our DeepLabV3+ backbones (module docstring).

  Constructor fields are plain values (`models.build` passes them):
    backbone, resnet_blocks, resnet_width, aspp_channels, decoder_channels,
      backbone_norm, gn_groups: the DeepLab, as in `CFBI`.
    embedding_dim: matching features' width.
    match_stride: 8 (the paper) or 4.
    top_k: K (20).
    top_k_block: [ours] the exact blocked top K (`set_top_k_mean`):
      candidates per block, 0 for one plain `lax.top_k` over every
      candidate. The same scores in a fraction of the time
      (`bench/family_speed.py`).
    softmax_weight: initial weight w of the softmax (learned).
    outlier_distance: d_c in frame pixels (100).
    confidence: c1 (0.95).
    background_threshold: c2 (0.4).
    erosion: erosion of the final mask before it joins m_F, in grid pixels.
    update_capacity: P, pixels of the online-update buffer.
    outlier_removal, online_update: switch the two inference steps.
    global_chunk_mb: bound on one query chunk of the soft matching in MiB
      (`chunk_mb` in older model directories).
    compute_dtype: dtype of DeepLab; the matching stays float32.
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
      embedding_dim: int = 256,
      match_stride: int = 8,
      top_k: int = 20,
      top_k_block: int = 32,
      softmax_weight: float = 10.0,
      outlier_distance: float = 100.0,
      confidence: float = 0.95,
      background_threshold: float = 0.4,
      erosion: float = 1.0,
      update_capacity: int = 16384,
      outlier_removal: bool = True,
      online_update: bool = True,
      global_chunk_mb: float = 256.0,
      compute_dtype: str = 'float32',
      *,
      rngs: nnx.Rngs,
  ):
    if match_stride not in (4, 8):
      raise ValueError(f'match_stride must be 4 or 8, got {match_stride}')
    if compute_dtype not in _DTYPES:
      raise ValueError(
          f'compute_dtype must be one of {sorted(_DTYPES)}, '
          f'got {compute_dtype!r}'
      )
    self.match_stride = int(match_stride)
    self.top_k = int(top_k)
    self.top_k_block = int(top_k_block)
    self.outlier_distance = float(outlier_distance)
    self.confidence = float(confidence)
    self.background_threshold = float(background_threshold)
    self.erosion = float(erosion)
    self.update_capacity = int(update_capacity)
    self.outlier_removal = bool(outlier_removal)
    self.online_update = bool(online_update)
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
    self.projection = layers.conv(
        decoder_channels, embedding_dim, 1, use_bias=True, rngs=rngs
    )
    self.softmax_weight = nnx.Param(jnp.asarray(softmax_weight, jnp.float32))

  def embed(
      self, images: jnp.ndarray, dropout_rng: Optional[jax.Array] = None
  ) -> Tuple[FrameEmbedding, Dict[str, jnp.ndarray]]:
    """`[B, H, W, 3]` normalised images -> (matching features at
    `match_stride` in `scales`, DeepLab features)."""
    feats = layers.call_in_dtype(
        self.feature_extracter, _DTYPES[self.compute_dtype], images, dropout_rng
    )
    feats = {
        k: v.astype(jnp.float32) if v is not None else None
        for k, v in feats.items()
    }
    x = self.projection(feats['decoder_s4'])
    if self.match_stride == 8:
      x = x[:, ::2, ::2]
    return FrameEmbedding(features_s4=feats['decoder_s4'], scales=(x,)), feats

  def segment(
      self,
      state: PropagationState,
      current: FrameEmbedding,
      obj_valid: jnp.ndarray,
      training: bool = False,
  ) -> Segmentation:
    """Soft matching to every object's sets, weighted softmax, outlier
    removal (not in training), fusion.

    Args:
      state: the carried state: `([B, R, h, w, C],)` reference features,
        `[B, R, H, W]` reference labels (mask resolution), `[B, R]` filled
        reference slots, `[B, H, W]` previous labels (for outlier
        removal), and the memory, the online-update buffer (module
        docstring). VideoMatch does not match the previous frame.
      current: this frame's features.
      obj_valid: `[B, K + 1]` bool.
      training: the paper's training pairs: no outlier removal.

    Returns:
      `[B, h, w, K + 1]` fused logits (at the matching grid; the step
      upsamples them), what the online update needs as `memory_update`
      (None in training or without the update), `aux` `{'fg_score',
      'bg_score', 'initial', 'final': [B, K + 1, h, w]}` and, in
      training, the per-object logits z_k = w (S_F - S_B) as
      `object_logits` `[B, h, w, K + 1]` (what the loss trains).
    """
    ref_scales, ref_labels, ref_valid = (
        state.ref_scales,
        state.ref_labels,
        state.ref_valid,
    )
    prev_labels, memory = state.prev_labels, state.memory
    num_slots = obj_valid.shape[1]
    cur = current.scales[0]
    batch, grid, channels = cur.shape[0], cur.shape[1:3], cur.shape[-1]
    ref_lab = resize.resize_labels_nearest(ref_labels, grid)
    ref_lab = jnp.where(ref_valid[:, :, None, None], ref_lab, -1)
    ref_lab = jax.vmap(
        lambda lab, ov: matching.atrous_reference_labels(
            lab, ov, atrous=1, min_pixels=0
        )
    )(ref_lab, obj_valid)
    ref_lab = ref_lab.reshape(batch, -1)  # [B, R*h*w]
    slots = jnp.arange(num_slots)
    ref_fg = ref_lab[..., None] == slots
    ref_bg = (ref_lab[..., None] >= 0) & ~ref_fg
    candidates = ref_scales[0].reshape(batch, -1, channels)
    fg, bg = ref_fg, ref_bg
    if not training and self.online_update:
      # The sets grown by the online update (training pairs have none).
      candidates = jnp.concatenate(
          [candidates, memory['features'].astype(cur.dtype)], axis=1
      )
      fg = jnp.concatenate([fg, memory['fg'][..., :num_slots]], axis=1)
      bg = jnp.concatenate([bg, memory['bg'][..., :num_slots]], axis=1)
    with jax.named_scope('global_matching'):
      # Objects only: slot 0 (the background) has no probability of its
      # own (the fusion gives it log c2, the update and the loss skip it),
      # so its scores are not computed; they read as empty sets (-1).
      s_f, s_b = jax.vmap(
          lambda q, c, f, b: soft_matching(
              q,
              c,
              f,
              b,
              k=self.top_k,
              max_chunk_bytes=int(self.global_chunk_mb * 2**20),
              top_k_block=self.top_k_block,
          )
      )(cur, candidates, fg[..., 1:], bg[..., 1:])
      empty = jnp.full((batch, 1) + s_f.shape[2:], -1.0, s_f.dtype)
      s_f = jnp.concatenate([empty, s_f], axis=1)
      s_b = jnp.concatenate([empty, s_b], axis=1)
    weight = self.softmax_weight[...]
    initial = jax.nn.sigmoid(weight * (s_f - s_b))  # [B, S, h, w]
    aux = {'fg_score': s_f, 'bg_score': s_b, 'initial': initial}
    final = initial
    if not training and self.outlier_removal:
      prev = resize.resize_labels_nearest(prev_labels, grid)
      masks = prev[:, None] == slots[None, :, None, None]
      radius = self.outlier_distance * grid[0] / prev_labels.shape[1]
      extruded = extrude(masks, radius)
      final = jnp.where(extruded, initial, 0.0)
    else:
      extruded = jnp.ones(initial.shape, bool)
    aux['final'] = final
    logits = fused_logits(final, obj_valid, self.background_threshold)
    update = None
    if not training and self.online_update:
      update = {
          'initial_fg': initial > 0.5,
          'extruded': extruded,
          'final': final,
          'obj_valid': obj_valid,
      }
    return Segmentation(
        logits=jnp.moveaxis(logits, 1, -1),
        memory_update=update,
        aux=aux,
        # Training's loss (`losses.object_binary_cross_entropy`): z_k =
        # w (S_F - S_B), p_k = sigmoid(z_k), per object.
        object_logits=jnp.moveaxis(weight * (s_f - s_b), 1, -1)
        if training
        else None,
    )

  def start_memory(
      self, emb: FrameEmbedding, labels: jnp.ndarray, memory_slots: int
  ) -> Dict[str, jnp.ndarray]:
    """An empty update buffer (`update_capacity` pixels)."""
    del labels
    batch, channels = emb.scales[0].shape[0], emb.scales[0].shape[-1]
    capacity = self.update_capacity
    return {
        'features': jnp.zeros((batch, capacity, channels), jnp.float32),
        'fg': jnp.zeros((batch, capacity, memory_slots), bool),
        'bg': jnp.zeros((batch, capacity, memory_slots), bool),
        'count': jnp.zeros((batch,), jnp.int32),
    }

  def advance_memory(
      self,
      state,
      emb: FrameEmbedding,
      labels: jnp.ndarray,
      update: Any,
      training: bool = False,
  ) -> Dict[str, jnp.ndarray]:
    """The online update of the sets with this frame (`update_sets`,
    `write_sets`); unchanged in training or without an update."""
    if training or update is None:
      return state.memory
    features = emb.scales[0]
    batch, grid = features.shape[0], features.shape[1:3]
    memory_slots = state.memory['fg'].shape[-1]
    small = resize.resize_labels_nearest(labels, grid)
    to_fg, to_bg = jax.vmap(
        lambda i, e, lab, p, ov: update_sets(
            i, e, lab, p, ov, confidence=self.confidence, erosion=self.erosion
        )
    )(
        update['initial_fg'],
        update['extruded'],
        small,
        update['final'],
        update['obj_valid'],
    )  # [B, K+1, h, w]
    flat = lambda x: jnp.pad(
        jnp.moveaxis(x, 1, -1).reshape(batch, -1, x.shape[1]),
        ((0, 0), (0, 0), (0, memory_slots - x.shape[1])),
    )
    return jax.vmap(write_sets)(
        state.memory,
        features.reshape(batch, -1, features.shape[-1]),
        flat(to_fg),
        flat(to_bg),
    )


# What each variant changes from the constructor's defaults (the paper's
# settings on a ResNet-101 DeepLab).
VARIANTS = {
    'videomatch_resnet101': {},
    'videomatch_mobilenetv2': dict(backbone='mobilenetv2'),
    # The tiny DeepLab of `tiny_cfbi`, matching at stride 4 like the other
    # tiny models (stride 8 leaves 13x13 features of a 97-pixel crop), d_c
    # scaled to 120-pixel frames as 100 is to 480-pixel DAVIS frames.
    'tiny_videomatch': dict(
        backbone_lib.TINY_DEEPLAB,
        embedding_dim=16,
        match_stride=4,
        outlier_distance=25.0,
        update_capacity=2048,
    ),
}

# The paper's training (§4.1), as changes to the shared recipe (module
# docstring).
RECIPE = {
    # [paper] Adam, initial lr 1e-5 that "gradually decreases" ([ours] poly
    # decay to 0, no warm-up), weight decay 5e-4 (an L2 term: 'adam').
    'optim.name': 'adam',
    'optim.lr': 1e-5,
    'optim.momentum': 0.9,
    'optim.adam_b2': 0.999,
    'optim.warmup_steps': 0,
    'optim.power': 0.9,
    'optim.min_lr': 0.0,
    'optim.weight_decay': 5e-4,
    'optim.clip_grad_norm': 0.0,
    # [paper] any two random frames of a video as a training pair.
    'data.frame_sampling': 'pairs',
    # [paper] flips, crops and random scale between 0.5 and 1.5.
    'data.scale_range': (0.5, 1.5),
    # [ours] every pixel in the loss: the paper names no bootstrapping.
    'train.top_k_percent': 1.0,
    'train.hard_mining_step': 0,
}

# No official VideoMatch weights exist in PyTorch; a DeepLab backbone
# checkpoint (`convert.py --backbone_only`) loads into `feature_extracter`
# under the DeepLab's names.
FAMILY = family_lib.Family(
    name='videomatch',
    module=VideoMatch,
    variants=VARIANTS,
    # Fields that change how the model evaluates but not its parameters.
    eval_fields=(
        'top_k',
        'top_k_block',
        'outlier_distance',
        'confidence',
        'background_threshold',
        'erosion',
        'update_capacity',
        'outlier_removal',
        'online_update',
        'global_chunk_mb',
        'compute_dtype',
    ),
    checkpoint_rules=backbone_lib.CHECKPOINT_RULES,
    checkpoint_aliases=backbone_lib.CHECKPOINT_ALIASES,
    # [paper VideoMatch §4.1] frame pairs: the ground truth, never its own
    # predictions.
    own_predictions=False,
    renamed_fields={'chunk_mb': 'global_chunk_mb'},
    recipe=RECIPE,
)
