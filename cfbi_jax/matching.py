"""Global and multi-local matching of CFBI / CFBI+, as pure `jnp` functions.

Reproduces `networks/layers/matching.py` of github.com/z-x-yang/CFBI @ 91fc6a3
(`global_matching(_for_eval)`, parallel `local_matching`,
`foreground2background`; `../shared/reference/cfbi-official-notes.md`
§7-§10). `cfbi_jax.model` calls them once per scale and frame.

One sample, NHWC without batch axis. Objects live in `K + 1` static slots
(slot 0 = background, matched like any object); `obj_valid` marks the slots
in use and label -1 marks ignored pixels. Outputs are object-first.
Distances use the official expanded form |q|^2 + |r|^2 - 2 q.r (so they can
be slightly negative); the global matmul uses `Precision.HIGHEST` because
that form cancels badly under TF32/bf16 passes (notes §22.24). With a
float16/bfloat16 `matching_dtype` the embeddings are cast first, norms and
dot products accumulate in float32 and are rounded once (like half matmuls
on GPU), the rest of the distance arithmetic and the minima run in that
dtype, and adding the float32 bias promotes to float32 (notes §8.7).
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfbi_jax import backend
from cfbi_jax import resize

# Official `WRONG_LABEL_PADDING_DISTANCE`: the raw distance of a candidate of
# another object or outside the frame. It maps to a similarity of 1.0.
WRONG_LABEL_PADDING_DISTANCE = 5e4

# Rows per block of label-sorted reference pixels in global matching's
# 'sorted' form. Only speed depends on it: larger blocks mean fewer block
# minima to scatter but more rows in the (at most K + 1) blocks that
# straddle a label change.
_BLOCK_ROWS = 64

# Query pixels per side of a tile in local matching. Only speed and memory
# depend on it: a tile of T x T queries is matched against its
# (T + 2p) x (T + 2p) neighbourhood in one matrix product, so larger tiles
# mean fewer, larger products but more products outside the windows
# ((T + 2p)^2 / (2p + 1)^2 of the work that counts).
_LOCAL_TILE = 16


def distance_to_similarity(
    sq_dist: jnp.ndarray, bias: jnp.ndarray
) -> jnp.ndarray:
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


def object_biases(
    num_slots: int, bg_bias: jnp.ndarray, fg_bias: jnp.ndarray
) -> jnp.ndarray:
  """Per-slot distance bias: `bg_bias` for slot 0, `fg_bias` for the others.

  Args:
    num_slots: number of object slots `K + 1`.
    bg_bias: background bias, any shape of size 1 (e.g. `[1, 1, 1, 1]`).
    fg_bias: foreground bias, any shape of size 1.

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
  valid = (
      (labels >= 0)
      & (labels < num_slots)
      & obj_valid[jnp.clip(labels, 0, num_slots - 1)]
  )
  return jnp.where(valid, labels, -1)


def atrous_reference_labels(
    ref_labels: jnp.ndarray,
    obj_valid: jnp.ndarray,
    *,
    atrous: int,
    min_pixels: int,
) -> jnp.ndarray:
  """Reference labels with -1 where the official code drops the pixel.

  Lattice masking of the official training and min-pixel eval branches
  (notes §8.2-3). A pixel is dropped if its label is not a valid object
  (outside [0, K] or `obj_valid` False), or if it is off the [0::a, 0::a]
  lattice and its object is "big" in that reference frame: more than
  `min_pixels * atrous**2` pixels of that label in that frame (strict >,
  decided per object and per reference frame, background included).
  `min_pixels == 0` restricts every present object to the lattice.

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
  counts = jnp.sum(
      labels[..., None] == jnp.arange(obj_valid.shape[0]), axis=(1, 2)
  )  # [refs, K + 1]
  big = jnp.take_along_axis(
      counts > min_pixels * atrous**2,
      jnp.maximum(labels, 0).reshape(num_refs, -1),
      axis=1,
  ).reshape(labels.shape)
  on_lattice = (np.arange(height) % atrous == 0)[:, None] & (
      np.arange(width) % atrous == 0
  )[None, :]
  return jnp.where((labels >= 0) & (on_lattice | ~big), labels, -1)


def _squared_norm(x: jnp.ndarray) -> jnp.ndarray:
  """|x|^2 over the last axis, accumulated in float32, in x's dtype."""
  x32 = x.astype(jnp.float32)
  return jnp.sum(x32 * x32, axis=-1).astype(x.dtype)


def _label_sorted_blocks(ref: jnp.ndarray, labels: jnp.ndarray, num_slots: int):
  """Sorts reference rows by label and splits them into blocks.

  Labels change at most K + 1 times along the sorted rows (dropped rows, id
  K + 1, last), so all blocks but at most K + 1 "mixed" ones hold one label.
  Padded entries of `mixed_blocks` repeat block 0, which a min ignores.

  Args:
    ref: `[rows, channels]` reference embeddings.
    labels: `[rows]` int32 labels, -1 for dropped rows.
    num_slots: K + 1.

  Returns:
    `[blocks * B, channels]` sorted zero-padded rows, `[blocks]` label of
    each one-label block (K + 1 if mixed), `[K + 1]` mixed block indices and
    `[(K + 1) * B]` labels of their rows.
  """
  segment_ids = jnp.where(labels >= 0, labels, num_slots)
  num_blocks = -(-ref.shape[0] // _BLOCK_ROWS)
  padding = num_blocks * _BLOCK_ROWS - ref.shape[0]
  order = jnp.argsort(segment_ids, stable=True)
  segment_ids = jnp.pad(
      segment_ids[order], (0, padding), constant_values=num_slots
  )
  segment_ids = segment_ids.reshape(num_blocks, _BLOCK_ROWS)
  ref = jnp.pad(ref[order], ((0, padding), (0, 0)))
  single = segment_ids[:, 0] == segment_ids[:, -1]
  block_labels = jnp.where(single, segment_ids[:, 0], num_slots)
  mixed = jnp.nonzero(~single, size=num_slots, fill_value=0)[0]
  return ref, block_labels, mixed, segment_ids[mixed].reshape(-1)


def chunk_count(
    num_rows: int,
    num_queries: int,
    min_chunks: int,
    max_chunk_bytes: Optional[int],
    matching_dtype,
) -> int:
  """Query chunks of global matching under a byte bound.

  One chunk of `c` queries holds a `[num_rows, c]` float32 dot product and
  the distances in `matching_dtype`; the count is the smallest that keeps
  that under `max_chunk_bytes`, and at least `min_chunks`.

  Args:
    num_rows: reference rows (block-padded pixels of every reference).
    num_queries: query pixels.
    min_chunks: the smallest count allowed.
    max_chunk_bytes: the bound; None returns `min_chunks`.
    matching_dtype: dtype of the distances.

  Returns:
    The number of chunks, in [min_chunks, num_queries].
  """
  if max_chunk_bytes is None:
    return max(1, min(min_chunks, num_queries))
  per_query = num_rows * (4 + jnp.dtype(matching_dtype).itemsize)
  per_chunk = max(1, int(max_chunk_bytes) // per_query)
  return max(1, min(max(min_chunks, -(-num_queries // per_chunk)), num_queries))


def global_matching(
    query: jnp.ndarray,
    ref: jnp.ndarray,
    ref_labels: jnp.ndarray,
    obj_valid: jnp.ndarray,
    *,
    bg_bias: jnp.ndarray,
    fg_bias: jnp.ndarray,
    num_chunks: int = 1,
    max_chunk_bytes: Optional[int] = None,
    atrous: int = 1,
    min_pixels: int = 0,
    matching_dtype=jnp.float32,
    per_label: Optional[str] = None,
) -> jnp.ndarray:
  """Global (nearest-neighbour) matching against all reference frames.

  Official `global_matching_for_eval` (notes §8): the reference set is the
  concatenation over references of the atrous-selected pixels with a valid
  label, and for query q and object k

    d_k(q) = min_r [ sqdist(q, r) + 5e4 * (1 - [label(r) == k]) ].

  Rather than adding the penalty per object, each query chunk computes one
  distance matrix (one matmul) for all objects and reduces it per label:
  m_k = min over r labelled k, m_all = min_k m_k, and
  d_k = min(m_k, fl(m_all + 5e4)). The per-label minima take one of two
  forms (`per_label`), the same numbers either way:

  * 'masked' (GPU and TPU): a masked minimum per object over the
    `[chunk, reference pixels]` matrix, which XLA fuses with the distance
    arithmetic into one reduction: no sort, no scatter, nothing computed
    ahead of the frame.
  * 'sorted' (CPU): reference pixels are sorted by label, each chunk takes
    the min inside blocks of `_BLOCK_ROWS` sorted rows (one pass) and a
    segment min over the block minima; only the <= K + 1 blocks straddling
    a label change are reduced row by row. XLA:CPU runs a masked minimum
    per object 3-6x slower than this one pass, while its sort and scatters
    cost little; on a GPU the scatters are atomics and the sort a kernel
    of its own every frame.

  Why this is exact: adding a penalty of 0 is exact, and rounding x + 5e4 to
  the matching dtype is monotonic in x, so the min over r not in k of
  fl(d_r + 5e4) is fl(min_{r not in k} d_r + 5e4). Replacing that inner min
  by m_all only changes it when m_all = m_k, and then both forms give m_k
  because fl(m_k + 5e4) >= m_k. The bias is added after the min (as in the
  official code) and the sigmoid is monotonic, so both are applied once to
  d_k. Chunking only partitions the query pixels (XLA may pick a different
  dot kernel per chunk shape, a 1-ulp effect).

  The matmul does not grow with the number of objects. Peak memory is one
  chunk's
  distance matrix (`jax.checkpoint` keeps the backward pass there too),
  which `max_chunk_bytes` bounds whatever the number of references and the
  frame size (`chunk_count`).

  Args:
    query: `[height, width, channels]` current-frame embedding.
    ref: `[refs, ref_height, ref_width, channels]` reference embeddings.
    ref_labels: `[refs, ref_height, ref_width]` int labels at the reference
      grid, -1 to ignore (e.g. an unused reference slot).
    obj_valid: `[K + 1]` bool, slot 0 = background.
    bg_bias: background bias (size 1).
    fg_bias: foreground bias (size 1).
    num_chunks: at least this many query chunks (static; the official
      `--global_chunks`).
    max_chunk_bytes: bound on one chunk's distance matrix in bytes
      (static); None for `num_chunks` alone.
    atrous: reference lattice rate (static).
    min_pixels: `--min_matching_pixels` P (static); with P > 0 only objects
      with more than P * atrous**2 pixels in a reference are subsampled.
    matching_dtype: dtype of the distance computation (static).
    per_label: 'masked' or 'sorted' (static; see above); None picks by
      backend (`backend.is_cpu()`: 'sorted', else 'masked').

  Returns:
    `[K + 1, height, width]` float32 similarities; all ones when the
    reference set is empty.
  """
  obj_valid = jnp.asarray(obj_valid, bool)
  num_slots = obj_valid.shape[0]
  height, width, channels = query.shape
  if atrous > 1 and min_pixels == 0:
    # Same set as the official zero-pad + [::a, ::a] (padded pixels are
    # never on the lattice); slicing first shrinks the matmul by a**2.
    ref = ref[:, ::atrous, ::atrous]
    labels = _valid_labels(ref_labels[:, ::atrous, ::atrous], obj_valid)
  else:
    labels = atrous_reference_labels(
        ref_labels, obj_valid, atrous=atrous, min_pixels=min_pixels
    )
  if per_label is None:
    per_label = 'sorted' if backend.is_cpu() else 'masked'
  if per_label not in ('masked', 'sorted'):
    raise ValueError(
        f"per_label must be 'masked' or 'sorted', got " f'{per_label!r}'
    )
  ref = ref.reshape(-1, channels).astype(matching_dtype)
  labels = labels.reshape(-1)
  penalty = jnp.asarray(WRONG_LABEL_PADDING_DISTANCE, matching_dtype)
  if per_label == 'sorted':
    ref, block_labels, mixed_blocks, mixed_labels = _label_sorted_blocks(
        ref, labels, num_slots
    )
  ref_sq = _squared_norm(ref)

  num_queries = height * width
  num_chunks = chunk_count(
      ref.shape[0], num_queries, num_chunks, max_chunk_bytes, matching_dtype
  )
  chunk = -(-num_queries // num_chunks)
  queries = query.reshape(num_queries, channels).astype(matching_dtype)
  queries = jnp.pad(queries, ((0, chunk * num_chunks - num_queries), (0, 0)))

  def masked_minima(q):
    dot = jnp.einsum(
        'qc,rc->qr',
        q,
        ref,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    dist = (_squared_norm(q)[:, None] + ref_sq[None, :]) - 2 * dot.astype(
        matching_dtype
    )  # [chunk, rows]
    is_slot = labels[None, None, :] == jnp.arange(num_slots)[:, None, None]
    inf = jnp.asarray(jnp.inf, matching_dtype)
    return jnp.min(jnp.where(is_slot, dist[None], inf), axis=-1)

  def sorted_minima(q):
    dot = jnp.einsum(
        'rc,qc->rq',
        ref,
        q,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    dist = (ref_sq[:, None] + _squared_norm(q)[None, :]) - 2 * dot.astype(
        matching_dtype
    )
    dist = dist.reshape(-1, _BLOCK_ROWS, chunk)  # [blocks, rows, chunk]
    segment_min = lambda x, ids: jax.ops.segment_min(
        x, ids, num_segments=num_slots + 1
    )[:num_slots]
    return jnp.minimum(
        segment_min(jnp.min(dist, axis=1), block_labels),
        segment_min(dist[mixed_blocks].reshape(-1, chunk), mixed_labels),
    )

  def match_chunk(q):
    per_label_min = (masked_minima if per_label == 'masked' else sorted_minima)(
        q
    )  # [K + 1, chunk]
    nearest = jnp.min(per_label_min, axis=0)
    return jnp.minimum(per_label_min, nearest + penalty)

  dist = jax.lax.map(
      jax.checkpoint(match_chunk, prevent_cse=False),
      queries.reshape(num_chunks, chunk, channels),
  )
  dist = jnp.moveaxis(dist, 1, 0).reshape(num_slots, -1)[:, :num_queries]
  biases = object_biases(num_slots, bg_bias, fg_bias)
  similarity = distance_to_similarity(
      dist.reshape(num_slots, height, width), biases[:, None, None]
  )
  return jnp.where(jnp.any(labels >= 0), similarity, 1.0)


def _overlapping_tiles(
    x: jnp.ndarray, tile: int, span: int, axis: int
) -> jnp.ndarray:
  """Tiles of length `span` starting every `tile` entries along `axis`.

  Args:
    x: an array whose `axis` has at least `(n + m - 1) * tile` entries,
      where n = its length // tile rounded down and m = ceil(span / tile);
      callers pad it so.
    tile: the stride between tiles.
    span: the tile length (>= tile).
    axis: the axis to tile (non-negative).

  Returns:
    `x` with `axis` replaced by `[n, span]` (tile index, position), built
    from m shifted views of whole blocks (no gather).
  """
  m = -(-span // tile)
  n = x.shape[axis] // tile - m + 1
  blocks = x.reshape(x.shape[:axis] + (n + m - 1, tile) + x.shape[axis + 1 :])
  views = [jax.lax.slice_in_dim(blocks, u, u + n, axis=axis) for u in range(m)]
  tiles = jnp.concatenate(views, axis=axis + 1)
  return jax.lax.slice_in_dim(tiles, 0, span, axis=axis + 1)


def _diagonal_band(x: jnp.ndarray, width: int) -> jnp.ndarray:
  """`out[..., t, d] = x[..., t, t + d]` for d < `width`.

  Args:
    x: `[..., T, T + width - 1]` array.
    width: the band width.

  Returns:
    `[..., T, width]`, by padding, reshaping and slicing (no gather): in
    the rows of length `T + width` that the padded flat array forms, entry
    (t, d) is flat index t (T + width - 1) + t + d.
  """
  rows, cols = x.shape[-2:]
  flat = x.reshape(x.shape[:-2] + (rows * cols,))
  flat = jnp.pad(flat, [(0, 0)] * (flat.ndim - 1) + [(0, rows)])
  return flat.reshape(x.shape[:-2] + (rows, cols + 1))[..., :width]


def _window_band(x: jnp.ndarray, side: int) -> jnp.ndarray:
  """`[..., y, x, Y, X]` tile pairs -> `[..., y, x, dy, dx]`, the entries at
  Y = y + dy and X = x + dx (dy, dx < `side`)."""
  x = jnp.moveaxis(x, -2, -3)  # [..., y, Y, x, X]
  x = _diagonal_band(x, side)  # [..., y, Y, x, dx]
  x = jnp.moveaxis(x, (-4, -3), (-2, -1))  # [..., x, dx, y, Y]
  x = _diagonal_band(x, side)  # [..., x, dx, y, dy]
  return jnp.moveaxis(x, (-4, -3), (-3, -1))  # [..., y, x, dy, dx]


def _neighbourhood_distances(
    query: jnp.ndarray, prev: jnp.ndarray, labels: jnp.ndarray, half: int
):
  """Distances to every pixel of the (2 half + 1)^2 neighbourhood.

  The grid is cut into `_LOCAL_TILE`^2 query tiles; each tile's embeddings
  meet its (T + 2 half)^2 neighbourhood in one matrix product (batched over
  tiles), and the entries inside each pixel's window are taken out of the
  products as diagonal bands (`_window_band`): no loop over offsets, no
  gather, and memory linear in the pixels.

  Args:
    query: `[N, h, w, C]` embeddings (N independent grids).
    prev: `[N, h, w, C]` previous-frame embeddings.
    labels: `[N, h, w]` int previous labels, -1 ignored.
    half: the window half-size p.

  Returns:
    `([N, h, w, S, S] distances, [N, h, w, S, S] labels)` with
    S = 2 p + 1, entry (dy, dx) the candidate at offset (dy - p, dx - p);
    label -1 outside the frame. Distances are the expanded form
    (|q|^2 + |r|^2) - 2 q.r in the embeddings' dtype, the dot accumulated
    in float32.
  """
  num, height, width, channels = query.shape
  side, tile = 2 * half + 1, _LOCAL_TILE
  span = tile + 2 * half
  rows, cols = -(-height // tile), -(-width // tile)
  extra = -(-span // tile) - 1  # Whole blocks a tile reaches past its own.

  def pad(x, value=0):
    return jnp.pad(
        x,
        [
            (0, 0),
            (half, (rows + extra) * tile - height - half),
            (half, (cols + extra) * tile - width - half),
        ]
        + [(0, 0)] * (x.ndim - 3),
        constant_values=value,
    )

  def neighbourhoods(x):  # [N, H', W', ...] -> [N, rows, cols, span, span, ...]
    x = _overlapping_tiles(x, tile, span, 1)  # [N, rows, span, W', ...]
    x = _overlapping_tiles(x, tile, span, 3)  # [N, rows, span, cols, span, ...]
    return jnp.moveaxis(x, 3, 2)

  q = jnp.pad(
      query,
      [(0, 0), (0, rows * tile - height), (0, cols * tile - width), (0, 0)],
  )
  q = q.reshape(num, rows, tile, cols, tile, channels).swapaxes(2, 3)
  dot = jnp.einsum(
      'nijyxc,nijYXc->nijyxYX',
      q,
      neighbourhoods(pad(prev)),
      precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32,
  )
  dot = _window_band(dot.astype(query.dtype), side)
  cand_sq = _window_band(
      jnp.broadcast_to(
          neighbourhoods(pad(_squared_norm(prev)))[:, :, :, None, None],
          dot.shape[:5] + (span, span),
      ),
      side,
  )
  cand_labels = _window_band(
      jnp.broadcast_to(
          neighbourhoods(pad(labels, -1))[:, :, :, None, None],
          dot.shape[:5] + (span, span),
      ),
      side,
  )
  query_sq = _squared_norm(q)[..., None, None]
  dist = (query_sq + cand_sq) - 2 * dot  # [N, rows, cols, T, T, S, S]

  def untile(x):
    x = x.swapaxes(2, 3).reshape((num, rows * tile, cols * tile) + x.shape[5:])
    return x[:, :height, :width]

  return untile(dist), untile(cand_labels)


def local_matching(
    query: jnp.ndarray,
    prev: jnp.ndarray,
    prev_labels: jnp.ndarray,
    obj_valid: jnp.ndarray,
    *,
    bg_bias: jnp.ndarray,
    fg_bias: jnp.ndarray,
    windows: Sequence[int],
    atrous: int = 1,
    matching_dtype=jnp.float32,
) -> jnp.ndarray:
  """Multi-window local matching against the previous frame.

  Official parallel `local_matching` (notes §9 steps 2-5). With
  p = max(windows) - max(windows) % a, the candidates of pixel q are
  q + (i a - p, j a - p) for i, j in 0..2p/a. A candidate inside the frame
  whose previous label is k has the expanded distance to q for object k;
  every other candidate (other label, ignored, outside the frame) has
  exactly 5e4. Window w takes the min over the central sub-square of
  half-size floor(w / a) lattice steps.

  Candidates of a pixel lie on its own lattice phase (y mod a, x mod a), so
  the a^2 phase sub-grids are matched as independent grids with stride 1
  and half-size p / a. Each is matched without a loop over offsets
  (`_neighbourhood_distances`: tiled matrix products and diagonal bands),
  then every object takes one masked min per window.

  Args:
    query: `[height, width, channels]` current-frame embedding.
    prev: `[height, width, channels]` previous-frame embedding.
    prev_labels: `[height, width]` int previous labels, -1 to ignore.
    obj_valid: `[K + 1]` bool, slot 0 = background.
    bg_bias: background bias (size 1).
    fg_bias: foreground bias (size 1).
    windows: ascending window sizes (static), e.g. `(2, 4, 6, 8, 10, 12)`.
    atrous: offset stride a (static).
    matching_dtype: dtype of the distance computation (static).

  Returns:
    `[K + 1, height, width, len(windows)]` float32 similarities, channels
    ordered [largest window, then the others in the given order].

  Raises:
    ValueError: if `windows` is not ascending.
  """
  windows = tuple(int(size) for size in windows)
  if list(windows) != sorted(windows):
    raise ValueError(f'windows must be ascending, got {windows}.')
  obj_valid = jnp.asarray(obj_valid, bool)
  num_slots = obj_valid.shape[0]
  height, width, _ = query.shape
  a = atrous
  half = (windows[-1] - windows[-1] % a) // a  # In lattice steps.
  labels = _valid_labels(prev_labels, obj_valid)
  label_dtype = jnp.int8 if num_slots < 127 else jnp.int32

  # [a^2, h / a, w / a, ...] phase sub-grids (padding: label -1, never a
  # candidate; padded queries are cut off below).
  sub_h, sub_w = -(-height // a), -(-width // a)

  def phases(x, value=0):
    x = jnp.pad(
        x,
        [(0, sub_h * a - height), (0, sub_w * a - width)]
        + [(0, 0)] * (x.ndim - 2),
        constant_values=value,
    )
    x = x.reshape((sub_h, a, sub_w, a) + x.shape[2:])
    return jnp.moveaxis(x, (1, 3), (0, 1)).reshape(
        (a * a, sub_h, sub_w) + x.shape[4:]
    )

  def window_minima(query, prev, labels):  # -> [K + 1, a^2, h', w', L]
    dist, cand = _neighbourhood_distances(
        phases(query), phases(prev), phases(labels, -1), half
    )  # [a^2, h', w', S, S]
    penalty = jnp.asarray(WRONG_LABEL_PADDING_DISTANCE, matching_dtype)
    slot_ids = jnp.arange(num_slots, dtype=label_dtype).reshape(
        (-1,) + (1,) * dist.ndim
    )
    per_window = []
    for size in windows:
      r = size // a
      inner = (slice(None),) * 4 + (slice(half - r, half + r + 1),) * 2
      per_window.append(
          jnp.where(
              cand[None][inner] == slot_ids, dist[None][inner], penalty
          ).min(axis=(-2, -1))
      )
    return jnp.stack(per_window[-1:] + per_window[:-1], axis=-1)

  # Recomputed in the backward pass rather than storing the [S, S]
  # neighbourhoods of every pixel (training differentiates through it).
  dist = jax.checkpoint(window_minima, prevent_cse=False)(
      query.astype(matching_dtype),
      prev.astype(matching_dtype),
      labels.astype(label_dtype),
  )
  # [K + 1, a^2, h', w', L] -> [K + 1, h, w, L]
  dist = dist.reshape((num_slots, a, a, sub_h, sub_w, len(windows)))
  dist = jnp.moveaxis(dist, (1, 2), (2, 4)).reshape(
      num_slots, sub_h * a, sub_w * a, len(windows)
  )[:, :height, :width]
  biases = object_biases(num_slots, bg_bias, fg_bias)
  return distance_to_similarity(dist, biases[:, None, None, None])


def local_matching_downsampled(
    query: jnp.ndarray,
    prev: jnp.ndarray,
    prev_labels: jnp.ndarray,
    obj_valid: jnp.ndarray,
    *,
    bg_bias: jnp.ndarray,
    fg_bias: jnp.ndarray,
    windows: Sequence[int],
    atrous: int = 1,
    matching_dtype=jnp.float32,
) -> jnp.ndarray:
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
    bg_bias: background bias (size 1).
    fg_bias: foreground bias (size 1).
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
      obj_valid,
      bg_bias=bg_bias,
      fg_bias=fg_bias,
      windows=windows,
      atrous=atrous,
      matching_dtype=matching_dtype,
  )
  return resize.resize_bilinear_ac(maps, (height, width))


def foreground_to_background(
    fg_maps: jnp.ndarray, obj_valid: jnp.ndarray
) -> jnp.ndarray:
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
  is_first = jnp.arange(num_slots).reshape(expand) == jnp.argmin(masked, axis=0)
  second = jnp.min(jnp.where(is_first, inf, masked), axis=0)
  background = jnp.where(is_first, second, jnp.min(masked, axis=0))
  return jnp.where(jnp.sum(obj_valid) > 1, background, fg_maps)
