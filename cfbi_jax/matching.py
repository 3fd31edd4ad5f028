"""Global and multi-local matching of CFBI / CFBI+, as pure `jnp` functions.

Reproduces `networks/layers/matching.py` of the official code
(github.com/z-x-yang/CFBI @ 91fc6a3): `global_matching(_for_eval)`,
the parallel `local_matching` and `foreground2background`. The behaviour
follows `../shared/reference/cfbi-official-notes.md` §7-§10; the model
(`cfbi_jax.model`) calls these functions once per scale and frame.

Conventions: one sample, NHWC without the batch axis. Objects live in
`K + 1` static slots, slot 0 is the background (matched like any object),
and `obj_valid` marks the slots in use; label `-1` marks ignored pixels.
Every output has the object axis first. Distances are squared L2 in the
expanded form |q|^2 + |r|^2 - 2 q.r, like the official code, so they can be
slightly negative. In float16/bfloat16 matching the embeddings are cast
before the norms and products (both accumulate in float32 and are rounded
once, as half matmuls on GPU do) and all distance arithmetic and minima run
in that dtype; adding the float32 bias promotes to float32 (notes §8.7).

Cost. The official code adds a 5e4 penalty per (query, reference, object)
and takes a min per object. Here one distance matrix per query chunk serves
all objects: global matching reduces it with a per-label segment minimum
(cost independent of the number of objects) and local matching computes the
offset distances once and only does a fused masked min per object.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfbi_jax import resize

# Official `WRONG_LABEL_PADDING_DISTANCE`: the raw distance of a candidate of
# another object or outside the frame. It maps to a similarity of 1.0.
WRONG_LABEL_PADDING_DISTANCE = 5e4


def distance_to_similarity(sq_dist: jnp.ndarray,
                           bias: jnp.ndarray) -> jnp.ndarray:
  """Official distance transform, 2 * sigmoid(sq_dist + bias) - 1.

  Written as (sigmoid - 0.5) * 2 like the official code. A float16/bfloat16
  `sq_dist` is cast to float32 before the float32 bias is added, which is
  where the official half path promotes.

  Args:
    sq_dist: `[...]` minimum squared distances, any float dtype.
    bias: float32 bias broadcastable to `sq_dist` (per object).

  Returns:
    `[...]` float32 similarities in (-1, 1].
  """
  x = sq_dist.astype(jnp.float32) + jnp.asarray(bias, jnp.float32)
  return (jax.nn.sigmoid(x) - 0.5) * 2.0


def object_biases(num_slots: int, bg_bias: jnp.ndarray,
                  fg_bias: jnp.ndarray) -> jnp.ndarray:
  """Per-slot distance bias: `bg_bias` for slot 0, `fg_bias` for the others.

  Args:
    num_slots: number of object slots `K + 1`.
    bg_bias: scalar (any shape of size 1) background bias.
    fg_bias: scalar (any shape of size 1) foreground bias.

  Returns:
    `[num_slots]` float32 biases.
  """
  bg = jnp.reshape(jnp.asarray(bg_bias, jnp.float32), ())
  fg = jnp.reshape(jnp.asarray(fg_bias, jnp.float32), ())
  return jnp.where(jnp.arange(num_slots) == 0, bg, fg)


def _valid_labels(labels: jnp.ndarray, obj_valid: jnp.ndarray) -> jnp.ndarray:
  """Labels with -1 wherever the label is not a valid object slot."""
  num_slots = obj_valid.shape[0]
  labels = labels.astype(jnp.int32)
  in_range = (labels >= 0) & (labels < num_slots)
  valid = in_range & obj_valid[jnp.clip(labels, 0, num_slots - 1)]
  return jnp.where(valid, labels, -1)


def atrous_reference_labels(ref_labels: jnp.ndarray, obj_valid: jnp.ndarray,
                            *, atrous: int, min_pixels: int) -> jnp.ndarray:
  """Reference labels with -1 where the official code drops the pixel.

  Reproduces the lattice masking of the official training and min-pixel
  eval branches (notes §8.2-3). A pixel is dropped if its label is not a
  valid object (outside [0, K] or `obj_valid` False), or if it is off the
  [0::a, 0::a] lattice and its object is "big" in that reference frame:
  more than `min_pixels * atrous**2` pixels of that label in that frame
  (strict >, decided per object and per reference frame, background
  included). `min_pixels == 0` restricts every present object to the lattice,
  which is the plain atrous branch.

  Args:
    ref_labels: `[refs, height, width]` int labels at the matching grid, -1
      for ignored pixels.
    obj_valid: `[K + 1]` bool, slot 0 = background.
    atrous: lattice rate a (static); 1 applies only the validity rule.
    min_pixels: P of `--min_matching_pixels` (static).

  Returns:
    `[refs, height, width]` int32 labels, -1 for dropped pixels.
  """
  obj_valid = jnp.asarray(obj_valid, bool)
  labels = _valid_labels(ref_labels, obj_valid)
  if atrous == 1:
    return labels
  num_refs, height, width = labels.shape
  num_slots = obj_valid.shape[0]
  counts = jnp.sum(labels[..., None] == jnp.arange(num_slots),
                   axis=(1, 2))  # [refs, K + 1]
  big = counts > min_pixels * atrous**2
  big_here = jnp.take_along_axis(
      big, jnp.clip(labels, 0).reshape(num_refs, -1), axis=1)
  big_here = big_here.reshape(labels.shape)
  on_lattice = ((np.arange(height) % atrous == 0)[:, None]
                & (np.arange(width) % atrous == 0)[None, :])
  keep = (labels >= 0) & (on_lattice | ~big_here)
  return jnp.where(keep, labels, -1)


def _squared_norm(x: jnp.ndarray) -> jnp.ndarray:
  """|x|^2 over the last axis, accumulated in float32, in x's dtype."""
  x32 = x.astype(jnp.float32)
  return jnp.sum(x32 * x32, axis=-1).astype(x.dtype)


def _channel_dot(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Per-pixel dot product over channels, float32 accumulation."""
  dot = jnp.sum(a.astype(jnp.float32) * b.astype(jnp.float32), axis=-1)
  return dot.astype(a.dtype)


def global_matching(query: jnp.ndarray,
                    ref: jnp.ndarray,
                    ref_labels: jnp.ndarray,
                    obj_valid: jnp.ndarray,
                    *,
                    bg_bias: jnp.ndarray,
                    fg_bias: jnp.ndarray,
                    num_chunks: int = 1,
                    atrous: int = 1,
                    min_pixels: int = 0,
                    matching_dtype=jnp.float32) -> jnp.ndarray:
  """Global (nearest-neighbour) matching against all reference frames.

  Official `global_matching_for_eval` (notes §8): the reference set is the
  concatenation over references of the atrous-selected pixels with a valid
  label, and for query q and object k

    d_k(q) = min_r [ sqdist(q, r) + 5e4 * (1 - [label(r) == k]) ].

  Instead of materialising the penalty for every object, each query chunk
  computes one `[refs, chunk]` distance matrix and reduces it per label:
  m_k = min over r labelled k (a segment minimum, whose cost does not depend
  on the number of objects), m_all = min_k m_k, and

    d_k = min(m_k, fl(m_all + 5e4)).

  This is exact, not an approximation: adding 0 to a distance of object k is
  exact, and rounding x + 5e4 to the matching dtype is monotonic in x, so
  min over r not in k of fl(d_r + 5e4) = fl(min_r d_r + 5e4); replacing that
  min by m_all only matters when m_all = m_k < min over r not in k, and then
  both forms give m_k because fl(m_k + 5e4) >= m_k. The bias and the sigmoid
  are applied after the reduction, which commutes with it because the bias is
  added after the min in the official code too. Chunking only partitions the
  query pixels, so it has no numerical effect; `jax.checkpoint` keeps the
  backward pass within one chunk's distance matrix as well.

  Args:
    query: `[height, width, channels]` current-frame embedding.
    ref: `[refs, ref_height, ref_width, channels]` reference embeddings.
    ref_labels: `[refs, ref_height, ref_width]` int labels at the reference
      grid, -1 to ignore (e.g. an unused reference slot).
    obj_valid: `[K + 1]` bool, slot 0 = background.
    bg_bias: scalar background bias.
    fg_bias: scalar foreground bias.
    num_chunks: number of query chunks (static); bounds peak memory.
    atrous: reference lattice rate (static).
    min_pixels: `--min_matching_pixels` P (static); with P > 0 only objects
      with more than P * atrous**2 pixels in a reference are subsampled.
    matching_dtype: dtype of the distance computation (static).

  Returns:
    `[K + 1, height, width]` float32 similarities; all ones when the
    reference set is empty.
  """
  obj_valid = jnp.asarray(obj_valid, bool)
  num_slots = obj_valid.shape[0]
  height, width, channels = query.shape
  if atrous > 1 and min_pixels == 0:
    # Same set as the official zero-pad + [::a, ::a]: padded pixels are
    # never on the lattice. Slicing first shrinks the matmul by a**2.
    ref = ref[:, ::atrous, ::atrous]
    labels = _valid_labels(ref_labels[:, ::atrous, ::atrous], obj_valid)
  else:
    labels = atrous_reference_labels(
        ref_labels, obj_valid, atrous=atrous, min_pixels=min_pixels)
  ref = ref.reshape(-1, channels).astype(matching_dtype)
  labels = labels.reshape(-1)
  # Dropped pixels go to an extra segment that is discarded.
  segment_ids = jnp.where(labels >= 0, labels, num_slots)
  ref_sq = _squared_norm(ref)
  penalty = jnp.asarray(WRONG_LABEL_PADDING_DISTANCE, matching_dtype)

  num_queries = height * width
  chunk = -(-num_queries // num_chunks)
  queries = query.reshape(num_queries, channels).astype(matching_dtype)
  queries = jnp.pad(queries, ((0, chunk * num_chunks - num_queries), (0, 0)))
  queries = queries.reshape(num_chunks, chunk, channels)

  def match_chunk(q):
    dot = jnp.einsum(
        'rc,qc->rq', ref, q, precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32).astype(matching_dtype)
    dist = (ref_sq[:, None] + _squared_norm(q)[None, :]) - 2 * dot
    per_label = jax.ops.segment_min(
        dist, segment_ids, num_segments=num_slots + 1)[:num_slots]
    nearest = jnp.min(per_label, axis=0)
    return jnp.minimum(per_label, nearest + penalty)  # [K + 1, chunk]

  dist = jax.lax.map(jax.checkpoint(match_chunk), queries)
  dist = jnp.moveaxis(dist, 1, 0).reshape(num_slots, -1)[:, :num_queries]
  dist = dist.reshape(num_slots, height, width)
  biases = object_biases(num_slots, bg_bias, fg_bias)
  similarity = distance_to_similarity(dist, biases[:, None, None])
  return jnp.where(jnp.any(labels >= 0), similarity, 1.0)


def local_matching(query: jnp.ndarray,
                   prev: jnp.ndarray,
                   prev_labels: jnp.ndarray,
                   obj_valid: jnp.ndarray,
                   *,
                   bg_bias: jnp.ndarray,
                   fg_bias: jnp.ndarray,
                   windows: Sequence[int],
                   atrous: int = 1,
                   matching_dtype=jnp.float32) -> jnp.ndarray:
  """Multi-window local matching against the previous frame.

  Official parallel `local_matching` (notes §9 steps 2-5). With
  p = max(windows) - max(windows) % a, the candidates of pixel q are
  q + (i a - p, j a - p) for i, j in 0..2p/a. A candidate inside the frame
  whose previous label is k has the expanded distance to q for object k;
  every other candidate (other label, ignored, outside the frame) has exactly
  5e4. Window w takes the min over the central sub-square of half-size
  floor(w / a) lattice steps.

  The offset distances are computed once for all objects (a `lax.map` over
  offset rows keeps memory at one `[offsets, height, width]` array), sorted
  by ring (Chebyshev radius) so that each window adds one contiguous slice,
  and each object only does a fused masked min per ring; the windows are
  running minima over the rings, which is exact.

  Args:
    query: `[height, width, channels]` current-frame embedding.
    prev: `[height, width, channels]` previous-frame embedding.
    prev_labels: `[height, width]` int previous labels, -1 to ignore.
    obj_valid: `[K + 1]` bool, slot 0 = background.
    bg_bias: scalar background bias.
    fg_bias: scalar foreground bias.
    windows: ascending window sizes (static), e.g. `(2, 4, 6, 8, 10, 12)`.
    atrous: offset stride a (static).
    matching_dtype: dtype of the distance computation (static).

  Returns:
    `[K + 1, height, width, len(windows)]` float32 similarities, channels
    ordered [largest window, then the others in the given order].
  """
  windows = tuple(int(size) for size in windows)
  if list(windows) != sorted(windows):
    raise ValueError(f'windows must be ascending, got {windows}.')
  obj_valid = jnp.asarray(obj_valid, bool)
  num_slots = obj_valid.shape[0]
  height, width, _ = query.shape
  pad = windows[-1] - windows[-1] % atrous
  side = 2 * (pad // atrous) + 1

  query = query.astype(matching_dtype)
  prev = prev.astype(matching_dtype)
  query_sq = _squared_norm(query)
  prev_pad = jnp.pad(prev, ((pad, pad), (pad, pad), (0, 0)))
  prev_sq_pad = jnp.pad(_squared_norm(prev), pad)
  labels_pad = jnp.pad(_valid_labels(prev_labels, obj_valid), pad,
                       constant_values=-1)
  cols = [slice(j * atrous, j * atrous + width) for j in range(side)]

  def offset_row(i):
    rows = lambda x: jax.lax.dynamic_slice_in_dim(x, i * atrous, height)
    emb, sq, lab = rows(prev_pad), rows(prev_sq_pad), rows(labels_pad)
    dot = jnp.stack([_channel_dot(query, emb[:, c]) for c in cols])
    sq = jnp.stack([sq[:, c] for c in cols])
    dist = (query_sq + sq) - 2 * dot
    return dist, jnp.stack([lab[:, c] for c in cols])  # [side, h, w] each

  dist, labels = jax.lax.map(jax.checkpoint(offset_row), jnp.arange(side))
  steps = np.abs(np.arange(side) - pad // atrous)
  ring_order = np.argsort(np.maximum(steps[:, None], steps[None, :]).ravel(),
                          kind='stable')
  dist = dist.reshape(side * side, height, width)[ring_order]
  labels = labels.reshape(side * side, height, width)[ring_order]

  penalty = jnp.asarray(WRONG_LABEL_PADDING_DISTANCE, matching_dtype)
  slot_ids = jnp.arange(num_slots)[:, None, None, None]
  per_window, running, start = [], None, 0
  for size in windows:
    stop = (2 * (size // atrous) + 1)**2  # offsets within this window
    if stop > start:
      ring = jnp.where(labels[None, start:stop] == slot_ids,
                       dist[None, start:stop], penalty).min(axis=1)
      running = ring if running is None else jnp.minimum(running, ring)
      start = stop
    per_window.append(running)
  dist = jnp.stack(per_window[-1:] + per_window[:-1], axis=-1)
  biases = object_biases(num_slots, bg_bias, fg_bias)
  return distance_to_similarity(dist, biases[:, None, None, None])


def local_matching_downsampled(query: jnp.ndarray,
                               prev: jnp.ndarray,
                               prev_labels: jnp.ndarray,
                               obj_valid: jnp.ndarray,
                               *,
                               bg_bias: jnp.ndarray,
                               fg_bias: jnp.ndarray,
                               windows: Sequence[int],
                               atrous: int = 1,
                               matching_dtype=jnp.float32) -> jnp.ndarray:
  """CFBI local matching on the half-resolution grid (notes §9.1, §9.6).

  The embeddings go to (h // 2 + 1, w // 2 + 1) with align-corners bilinear
  (an exact [::2, ::2] subsample for odd sizes), the labels with legacy
  nearest from the given grid, which for odd sizes samples rows 0, 1, 3, 5,
  ... (one off the embedding rows, as in the official code). The similarity
  maps (after the sigmoid) are resized back with align-corners bilinear.

  Args:
    query: `[height, width, channels]` current-frame embedding.
    prev: `[height, width, channels]` previous-frame embedding.
    prev_labels: `[height, width]` int previous labels already at this grid.
    obj_valid: `[K + 1]` bool, slot 0 = background.
    bg_bias: scalar background bias.
    fg_bias: scalar foreground bias.
    windows: ascending window sizes on the half grid (static).
    atrous: offset stride (static).
    matching_dtype: dtype of the distance computation (static).

  Returns:
    `[K + 1, height, width, len(windows)]` float32 similarities.
  """
  height, width, _ = query.shape
  half = (height // 2 + 1, width // 2 + 1)
  maps = local_matching(
      resize.resize_bilinear_ac(query, half),
      resize.resize_bilinear_ac(prev, half),
      resize.resize_labels_nearest(prev_labels, half),
      obj_valid, bg_bias=bg_bias, fg_bias=fg_bias, windows=windows,
      atrous=atrous, matching_dtype=matching_dtype)
  return resize.resize_bilinear_ac(maps, (height, width))


def foreground_to_background(fg_maps: jnp.ndarray,
                             obj_valid: jnp.ndarray) -> jnp.ndarray:
  """Official `foreground2background`: min over the other objects' maps.

  G_i = min over valid j != i of F_j (notes §10), computed from the smallest
  and second smallest valid map, so the cost is linear in the number of
  slots. With a single valid slot the official code returns its input.
  Invalid slots are excluded from every minimum; their own output is finite
  but meaningless.

  Args:
    fg_maps: `[K + 1, ...]` foreground similarity maps.
    obj_valid: `[K + 1]` bool, slot 0 = background.

  Returns:
    `[K + 1, ...]` background maps, same dtype as `fg_maps`.
  """
  obj_valid = jnp.asarray(obj_valid, bool)
  num_slots = fg_maps.shape[0]
  expand = (num_slots,) + (1,) * (fg_maps.ndim - 1)
  inf = jnp.asarray(jnp.inf, fg_maps.dtype)
  masked = jnp.where(obj_valid.reshape(expand), fg_maps, inf)
  first = jnp.argmin(masked, axis=0)
  smallest = jnp.min(masked, axis=0)
  is_first = jnp.arange(num_slots).reshape(expand) == first
  second = jnp.min(jnp.where(is_first, inf, masked), axis=0)
  background = jnp.where(is_first, second, smallest)
  return jnp.where(jnp.sum(obj_valid) > 1, background, fg_maps)
