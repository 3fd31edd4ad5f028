"""Tests for `cfbi_jax.matching` against naive NumPy references and fixtures.

The references follow the official definitions
(`../shared/reference/cfbi-official-notes.md` §7-§10) as literally as
possible: explicit candidate sets and the penalty-added minimum for global
matching, explicit offset loops for local matching, loops over objects for
fg -> bg. The parity tests compare with official PyTorch outputs from
`$CFBI_PARITY_DIR` (default: `../shared/fixtures/parity` next to the repo).
"""

import functools
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from cfbi_jax import backend
from cfbi_jax import matching
from cfbi_jax import resize

BG, FG = -0.3, 0.2
PARITY_DIR = pathlib.Path(
    os.environ.get(
        'CFBI_PARITY_DIR',
        pathlib.Path(__file__).resolve().parents[1]
        / '..'
        / 'shared'
        / 'fixtures'
        / 'parity',
    )
)
parity = pytest.mark.skipif(
    not PARITY_DIR.is_dir(), reason=f'no parity fixtures at {PARITY_DIR}'
)


# Naive references.


def np_similarity(dist, biases):
  """2 * sigmoid(d + b) - 1, written as tanh((d + b) / 2) to avoid overflow."""
  x = dist.astype(np.float64)
  x = x + np.reshape(biases, (-1,) + (1,) * (dist.ndim - 1))
  return np.tanh(x / 2)


def np_biases(num_slots, bg=BG, fg=FG):
  return np.array([bg] + [fg] * (num_slots - 1))


def np_acc(dtype):
  """Accumulation dtype: float64 for the exact reference, else float32."""
  return np.float64 if dtype == np.float64 else np.float32


def np_sq_norm(x, dtype):
  return (x.astype(np_acc(dtype)) ** 2).sum(-1).astype(dtype)


def naive_kept_pixels(ref_labels, obj_valid, atrous, min_pixels):
  """Per-pixel keep decision of the official min-pixel / training branch."""
  keep = np.zeros(ref_labels.shape, bool)
  for r, y, x in np.ndindex(*ref_labels.shape):
    k = ref_labels[r, y, x]
    if not (0 <= k < len(obj_valid) and obj_valid[k]):
      continue
    big = (ref_labels[r] == k).sum() > min_pixels * atrous**2
    keep[r, y, x] = not (atrous > 1 and big and (y % atrous or x % atrous))
  return keep


def naive_global(
    query,
    ref,
    ref_labels,
    obj_valid,
    atrous=1,
    min_pixels=0,
    dtype=np.float64,
    biases=(BG, FG),
):
  num_slots, (h, w, c) = len(obj_valid), query.shape
  emb, lab = [], []
  for frame, labels in zip(ref, ref_labels):
    if atrous > 1 and min_pixels == 0:  # official: zero-pad, then [::a, ::a]
      ph, pw = -frame.shape[0] % atrous, -frame.shape[1] % atrous
      frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)))[::atrous, ::atrous]
      labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=-1)
      labels = labels[::atrous, ::atrous]
      keep = naive_kept_pixels(labels[None], obj_valid, 1, 0)[0]
    else:
      keep = naive_kept_pixels(labels[None], obj_valid, atrous, min_pixels)[0]
    emb.append(frame[keep])
    lab.append(labels[keep])
  emb, lab = np.concatenate(emb).astype(dtype), np.concatenate(lab)
  if not len(lab):
    return np.ones((num_slots, h, w))
  q, acc = query.reshape(-1, c).astype(dtype), np_acc(dtype)
  dot = (q.astype(acc) @ emb.astype(acc).T).astype(dtype)
  dist = np_sq_norm(q, dtype)[:, None] + np_sq_norm(emb, dtype)[None] - 2 * dot
  out = np.stack(
      [
          (dist + np.where(lab == k, 0, 5e4).astype(dtype)[None]).min(1)
          for k in range(num_slots)
      ]
  )
  out = np_similarity(out, np_biases(num_slots, *biases))
  return out.reshape(num_slots, h, w)


def naive_local(
    query, prev, labels, obj_valid, windows, atrous=1, dtype=np.float64
):
  (h, w, _), num_slots, a = query.shape, len(obj_valid), atrous
  q, p, acc = query.astype(dtype), prev.astype(dtype), np_acc(dtype)
  pad = windows[-1] - windows[-1] % a
  best = np.full((num_slots, len(windows), h, w), np.inf)
  for i in range(2 * pad // a + 1):
    for j in range(2 * pad // a + 1):
      dy, dx = i * a - pad, j * a - pad
      ys, xs = np.arange(h)[:, None] + dy, np.arange(w)[None, :] + dx
      inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
      ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
      dot = (q.astype(acc) * p[ys, xs].astype(acc)).sum(-1).astype(dtype)
      dist = np_sq_norm(q, dtype) + np_sq_norm(p, dtype)[ys, xs] - 2 * dot
      for k in range(num_slots):
        hit = inside & (labels[ys, xs] == k) & obj_valid[k]
        value = np.where(hit, dist, dtype(5e4))
        for n, size in enumerate(windows):
          if max(abs(dy), abs(dx)) <= (size // a) * a:
            best[k, n] = np.minimum(best[k, n], value)
  best = np.concatenate([best[:, -1:], best[:, :-1]], axis=1)
  return np.moveaxis(np_similarity(best, np_biases(num_slots)), 1, -1)


def np_bilinear_ac(x, size, axes):
  for axis, out in zip(axes, size):
    n = x.shape[axis]
    src = np.arange(out) * ((n - 1) / (out - 1)) if out > 1 else np.zeros(1)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    lam = np.expand_dims(src - i0, [d for d in range(x.ndim) if d != axis])
    x = (
        np.take(x, i0, axis) * (1 - lam)
        + np.take(x, np.minimum(i0 + 1, n - 1), axis) * lam
    )
  return x


def np_legacy_nearest(labels, size):
  def index(n, out):
    src = np.floor(np.arange(out, dtype=np.float32) * np.float32(n / out))
    return np.minimum(src.astype(int), n - 1)

  rows, cols = index(labels.shape[0], size[0]), index(labels.shape[1], size[1])
  return labels[rows][:, cols]


def naive_fg_to_bg(fg, obj_valid):
  if obj_valid.sum() <= 1:
    return fg.copy()
  return np.stack(
      [
          np.min([fg[j] for j in range(len(fg)) if obj_valid[j] and j != i], 0)
          for i in range(len(fg))
      ]
  )


# Helpers.


@functools.lru_cache(maxsize=None)
def _fn(name, **static):
  fn = getattr(matching, name)
  if name == 'foreground_to_background':
    return jax.jit(fn)
  return jax.jit(
      lambda q, r, lab, valid, bg, fg: fn(
          q, r, lab, valid, bg_bias=bg, fg_bias=fg, **static
      )
  )


def run(name, *args, **static):
  out = _fn(name, **static)(*args, np.float32(BG), np.float32(FG))
  return np.asarray(out)


def embeddings(rng, *shape, scale=0.5):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def labels_for(rng, shape, high):
  return rng.integers(-1, high, size=shape).astype(np.int32)


GLOBAL_CASES = {
    # name: (query hw, refs, ref hw, obj_valid, labels < high, atrous, P)
    'one_ref': ((7, 9), 1, (7, 9), [1, 1, 1], 3, 1, 0),
    'three_refs_padded': ((11, 13), 3, (9, 11), [1, 1, 0, 1, 0, 0], 7, 1, 0),
    'atrous2_odd': ((11, 13), 2, (11, 13), [1, 1, 1, 0], 4, 2, 0),
    'atrous3': ((7, 9), 1, (10, 11), [1, 1, 1], 3, 3, 0),
    'min_pixels_atrous2': ((7, 9), 3, (9, 11), [1, 1, 1, 1], 4, 2, 5),
    'min_pixels_atrous3': ((7, 9), 2, (9, 11), [1, 1, 0, 1], 4, 3, 1),
    'background_only': ((7, 9), 1, (7, 9), [1, 0, 0], 3, 2, 0),
}


def global_inputs(case, seed=0, channels=5, scale=0.5):
  (h, w), refs, (hr, wr), valid, high, atrous, min_pixels = GLOBAL_CASES[case]
  rng = np.random.default_rng(seed)
  labels = labels_for(rng, (refs, hr, wr), high)
  labels[labels == 1] = 2  # valid object 1 is absent from every reference
  args = (
      embeddings(rng, h, w, channels, scale=scale),
      embeddings(rng, refs, hr, wr, channels, scale=scale),
      labels,
      np.array(valid, bool),
  )
  return args, dict(atrous=atrous, min_pixels=min_pixels)


# Tests.


def test_distance_to_similarity_promotes_half():
  dist = jnp.array([-0.01, 0.5, 3.0, 5e4], jnp.float16)
  out = matching.distance_to_similarity(dist, jnp.float32(-0.2))
  assert out.dtype == jnp.float32
  want = np_similarity(np.asarray(dist, np.float32), np.array([-0.2]))
  np.testing.assert_allclose(out, want, atol=1e-6)
  assert out[-1] == 1.0


def test_object_biases():
  out = matching.object_biases(
      4, jnp.full((1, 1, 1, 1), -0.5), jnp.array([0.25])
  )
  np.testing.assert_array_equal(out, np.float32([-0.5, 0.25, 0.25, 0.25]))


@pytest.mark.parametrize('atrous,min_pixels', [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_atrous_reference_labels(atrous, min_pixels):
  rng = np.random.default_rng(1)
  labels = labels_for(rng, (3, 9, 11), 6)
  labels[0, :6] = 1  # object 1 big in reference 0, small in the others
  valid = np.array([1, 1, 1, 0, 1], bool)
  out = matching.atrous_reference_labels(
      labels, valid, atrous=atrous, min_pixels=min_pixels
  )
  keep = naive_kept_pixels(labels, valid, atrous, min_pixels)
  np.testing.assert_array_equal(out, np.where(keep, labels, -1))


# The two forms of the per-label minima (the GPU's and the CPU's).
PER_LABEL = pytest.mark.parametrize('per_label', ['masked', 'sorted'])


@PER_LABEL
@pytest.mark.parametrize('case', sorted(GLOBAL_CASES))
def test_global_matching_matches_naive(case, per_label):
  args, static = global_inputs(case)
  out = run('global_matching', *args, per_label=per_label, **static)
  np.testing.assert_allclose(out, naive_global(*args, **static), atol=1e-5)
  assert np.all(out[1] == 1.0)  # object absent from the references


def test_global_form_follows_the_backend():
  """On the CPU the default is the sorted form, exactly; traced for a GPU,
  the masked one."""
  args, static = global_inputs('three_refs_padded', seed=4)
  default = run('global_matching', *args, **static)
  np.testing.assert_array_equal(
      default, run('global_matching', *args, per_label='sorted', **static)
  )
  with backend.tracing_for('cuda'):
    gpu_form = run('global_matching', *args, **static)
  np.testing.assert_array_equal(
      gpu_form, run('global_matching', *args, per_label='masked', **static)
  )
  np.testing.assert_allclose(gpu_form, default, atol=1e-6)


@pytest.mark.parametrize('block_rows', [1, 3, 7])
def test_global_block_size_has_no_effect(monkeypatch, block_rows):
  args, static = global_inputs('min_pixels_atrous2', seed=3)
  monkeypatch.setattr(matching, '_BLOCK_ROWS', block_rows)  # read at trace
  fn = jax.jit(
      lambda *a: matching.global_matching(
          *a, bg_bias=BG, fg_bias=FG, per_label='sorted', **static
      )
  )
  np.testing.assert_allclose(
      fn(*args), naive_global(*args, **static), atol=1e-5
  )


def test_void_reference_pixels_are_ignored():
  """Void (255) reference pixels match no object and no background: their
  embeddings can be anything without changing the matching."""
  case = sorted(GLOBAL_CASES)[0]
  (query, ref, labels, valid), static = global_inputs(case)
  labels = labels.copy()
  void = np.random.default_rng(1).random(labels.shape) < 0.3
  labels[void] = 255
  out = run('global_matching', query, ref, labels, valid, **static)
  moved = np.where(void[..., None], ref + 7.0, ref).astype(np.float32)
  np.testing.assert_array_equal(
      out, run('global_matching', query, moved, labels, valid, **static)
  )
  np.testing.assert_allclose(
      out, naive_global(query, ref, labels, valid, **static), atol=1e-5
  )


def test_global_min_pixels_decided_per_reference_frame():
  rng = np.random.default_rng(2)
  labels = np.zeros((2, 7, 9), np.int32)
  labels[0, :4], labels[0, 6, :8] = 1, 2  # 1 big (36 > 8), 2 small (8)
  labels[1, :4], labels[1, 6, :2] = 2, 1  # and the other way round
  args = (
      embeddings(rng, 7, 9, 4),
      embeddings(rng, 2, 7, 9, 4),
      labels,
      np.ones(3, bool),
  )
  kept = matching.atrous_reference_labels(
      labels, args[3], atrous=2, min_pixels=2
  )
  np.testing.assert_array_equal(kept[0, 6, :8], 2)  # 8 is not > 8
  np.testing.assert_array_equal(kept[1, 6, :2], 1)
  assert np.sum(kept[0] == 1) == 10 and np.sum(kept[1] == 2) == 10
  out = run('global_matching', *args, atrous=2, min_pixels=2)
  want = naive_global(*args, atrous=2, min_pixels=2)
  np.testing.assert_allclose(out, want, atol=1e-5)
  for other in (dict(atrous=2, min_pixels=0), dict(atrous=1, min_pixels=0)):
    assert np.abs(out - run('global_matching', *args, **other)).max() > 1e-3


def test_global_penalty_is_added_not_substituted():
  # A bias of -5e4 cancels the penalty: an object absent from the references
  # then reads sigmoid(d_min) instead of saturating at 1.
  args, static = global_inputs('three_refs_padded')
  out = _fn('global_matching', **static)(
      *args, np.float32(-5e4), np.float32(-5e4)
  )
  want = naive_global(*args, **static, biases=(-5e4, -5e4))
  np.testing.assert_allclose(out, want, atol=5e-3)
  assert np.all(np.asarray(out)[1] < 0.9)


@PER_LABEL
@pytest.mark.parametrize('num_chunks', [3, 7])
def test_global_chunking_has_no_effect(num_chunks, per_label):
  args, static = global_inputs('three_refs_padded')
  whole = run('global_matching', *args, per_label=per_label, **static)
  chunked = run(
      'global_matching',
      *args,
      num_chunks=num_chunks,
      per_label=per_label,
      **static,
  )
  # Same algorithm; XLA may pick another dot kernel per chunk shape (1 ulp).
  np.testing.assert_allclose(chunked, whole, atol=1e-6, rtol=0)


@PER_LABEL
def test_global_empty_reference_gives_ones(per_label):
  (query, ref, _, valid), _ = global_inputs('one_ref')
  labels = np.full((2, 7, 9), -1, np.int32)
  labels[1, 0, 0] = 5  # not a valid slot either
  out = run(
      'global_matching',
      query,
      np.concatenate([ref, ref]),
      labels,
      valid,
      per_label=per_label,
  )
  np.testing.assert_array_equal(out, np.ones((3, 7, 9)))


@PER_LABEL
@pytest.mark.parametrize(
    'dtype,atol', [(np.float16, 5e-3), (ml_dtypes.bfloat16, 3e-2)]
)
def test_global_low_precision(dtype, atol, per_label):
  args, static = global_inputs('three_refs_padded', channels=6, scale=0.25)
  out = run(
      'global_matching',
      *args,
      matching_dtype=jnp.dtype(dtype),
      per_label=per_label,
      **static,
  )
  want = naive_global(*args, dtype=dtype, **static)
  np.testing.assert_allclose(out, want, atol=atol)
  assert np.abs(out - run('global_matching', *args, **static)).max() > 1e-4


@pytest.mark.parametrize(
    'windows,atrous,valid',
    [
        ((1, 2, 3), 1, [1, 1, 1]),
        ((2, 3, 4), 2, [1, 1, 0, 1, 0]),
        ((2, 5, 7), 3, [1, 1, 1, 1]),
        ((4,), 2, [1]),
    ],
)
def test_local_matching_matches_naive(windows, atrous, valid):
  rng = np.random.default_rng(4)
  args = (
      embeddings(rng, 11, 13, 4),
      embeddings(rng, 11, 13, 4),
      labels_for(rng, (11, 13), len(valid) + 2),
      np.array(valid, bool),
  )
  out = run('local_matching', *args, windows=windows, atrous=atrous)
  assert out.shape == (len(valid), 11, 13, len(windows))
  want = naive_local(*args, windows, atrous)
  np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize(
    'size,windows,atrous',
    [
        ((35, 50), (3, 18), 1),  # windows wider than a tile: 4 blocks a tile
        ((34, 41), (8, 24), 2),  # several tiles per phase, uneven phases
    ],
)
def test_local_matching_across_tiles(size, windows, atrous):
  """Grids of several `_LOCAL_TILE` tiles, neighbourhoods spanning more
  than two tiles, and the edges of every tile, against the naive loop."""
  rng = np.random.default_rng(8)
  valid = np.array([1, 1, 0, 1], bool)
  args = (
      embeddings(rng, *size, 5),
      embeddings(rng, *size, 5),
      labels_for(rng, size, len(valid) + 1),
      valid,
  )
  out = run('local_matching', *args, windows=windows, atrous=atrous)
  np.testing.assert_allclose(
      out, naive_local(*args, windows, atrous), atol=1e-5
  )


def test_local_channel_order_is_largest_first():
  rng = np.random.default_rng(5)
  args = (
      embeddings(rng, 7, 9, 3),
      embeddings(rng, 7, 9, 3),
      labels_for(rng, (7, 9), 3),
      np.ones(3, bool),
  )
  out = run('local_matching', *args, windows=(2, 4, 6), atrous=2)
  for channel, size in enumerate((6, 2, 4)):
    single = run('local_matching', *args, windows=(size,), atrous=2)
    np.testing.assert_array_equal(out[..., channel], single[..., 0])


def test_local_float16():
  rng = np.random.default_rng(6)
  args = (
      embeddings(rng, 7, 9, 6, scale=0.25),
      embeddings(rng, 7, 9, 6, scale=0.25),
      labels_for(rng, (7, 9), 3),
      np.ones(3, bool),
  )
  out = run(
      'local_matching',
      *args,
      windows=(1, 2),
      matching_dtype=jnp.dtype(jnp.float16),
  )
  want = naive_local(*args, (1, 2), dtype=np.float16)
  np.testing.assert_allclose(out, want, atol=5e-3)


@pytest.mark.parametrize('size', [(9, 11), (8, 10)])
def test_local_downsampled_two_step_rule(size):
  rng = np.random.default_rng(7)
  query, prev = embeddings(rng, *size, 4), embeddings(rng, *size, 4)
  labels, valid = labels_for(rng, size, 3), np.ones(3, bool)
  out = run(
      'local_matching_downsampled', query, prev, labels, valid, windows=(1, 2)
  )
  half = (size[0] // 2 + 1, size[1] // 2 + 1)
  maps = naive_local(
      np_bilinear_ac(query.astype(np.float64), half, (0, 1)),
      np_bilinear_ac(prev.astype(np.float64), half, (0, 1)),
      np_legacy_nearest(labels, half),
      valid,
      (1, 2),
  )
  want = np_bilinear_ac(maps, size, (1, 2))
  np.testing.assert_allclose(out, want, atol=1e-5)
  if size[0] % 2:  # embeddings keep rows 0, 2, 4, ...; labels 0, 1, 3, ...
    direct = run(
        'local_matching',
        query[::2, ::2],
        prev[::2, ::2],
        labels[[0, 1, 3, 5, 7]][:, [0, 1, 3, 5, 7, 9]],
        valid,
        windows=(1, 2),
    )
    np.testing.assert_allclose(out[:, ::2, ::2], direct, atol=1e-6)


def test_matching_gradients_are_finite():
  (query, ref, labels, valid), static = global_inputs('min_pixels_atrous2')

  def loss(q, r):
    glob = matching.global_matching(
        q, r, labels, valid, bg_bias=BG, fg_bias=FG, num_chunks=3, **static
    )
    local = matching.local_matching(
        q,
        r[0, :7, :9],
        labels[0, :7, :9],
        valid,
        bg_bias=BG,
        fg_bias=FG,
        windows=(1, 2),
    )
    return glob.sum() + local.sum()

  for grad in jax.jit(jax.grad(loss, argnums=(0, 1)))(query, ref):
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


@pytest.mark.parametrize(
    'valid', [[1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1], [1, 0, 0], [1]]
)
def test_foreground_to_background(valid):
  rng = np.random.default_rng(8)
  valid = np.array(valid, bool)
  fg = rng.uniform(-1, 1, size=(len(valid), 5, 6, 3)).astype(np.float32)
  out = np.asarray(_fn('foreground_to_background')(fg, valid))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[valid], naive_fg_to_bg(fg, valid)[valid])
  fg[~valid] = rng.uniform(-9, 9, size=fg[~valid].shape)  # must not leak
  again = np.asarray(_fn('foreground_to_background')(fg, valid))
  np.testing.assert_array_equal(again[valid], out[valid])
  if valid.sum() == 1:  # official identity when there is no foreground
    np.testing.assert_array_equal(again, fg)


# Parity with the official outputs.


def _hwc(x):
  return np.transpose(x[0], (1, 2, 0))


def _nchw(maps):
  maps = np.asarray(maps)
  return np.moveaxis(maps, -1, 1) if maps.ndim == 4 else maps[:, None]


@functools.lru_cache(maxsize=None)
def _parity_biases(variant):
  if str(PARITY_DIR) not in sys.path:
    sys.path.insert(0, str(PARITY_DIR))
  from make_state_dict import make_state_dict  # pylint: disable=g-import-not-at-top

  state = make_state_dict(str(PARITY_DIR / variant / 'manifest.json'))
  return state['bg_bias'].reshape(-1), state['fg_bias'].reshape(-1)


def _parity_inputs(variant, key, channels=None):
  folder = PARITY_DIR / variant
  frame0 = np.load(folder / 'frame0.npz')
  frame1 = np.load(folder / 'frame1.npz')
  stored = frame1.get(f'{key}__channels', np.arange(frame1[key].shape[1]))
  channels = channels or frame1[key].shape[1]
  assert np.array_equal(stored[:channels], np.arange(channels))
  query = _hwc(frame1[key][:, :channels])
  ref = _hwc(frame0[key][:, :channels])
  annotation = np.load(PARITY_DIR / 'clip' / 'inputs.npz')['annotation_f00']
  sequence = np.load(folder / 'sequence.npz')
  grid = query.shape[:2]
  ref_labels = resize.resize_labels_nearest(
      jnp.asarray(annotation, jnp.int32), grid
  )
  prev_labels = resize.resize_labels_nearest(
      jnp.asarray(sequence['prev_mask_fed'][0], jnp.int32), grid
  )
  valid = np.ones(int(sequence['gt_ids'][1]) + 1, bool)
  return query, ref, ref_labels, prev_labels, valid


def _fg_bg(prefix, suffix, fg, valid):
  bg = _fn('foreground_to_background')(fg, valid)
  return {f'{prefix}_fg{suffix}': _nchw(fg), f'{prefix}_bg{suffix}': _nchw(bg)}


def _check_parity(variant, got):
  folder = PARITY_DIR / variant
  tolerances = json.loads((folder / 'tolerances.json').read_text())['arrays']
  want = {
      **np.load(folder / 'frame1.npz'),
      **np.load(folder / 'alt_setting.npz'),
  }
  for name, value in got.items():
    diff = np.abs(value - want[name]).max()
    print(f'{variant} {name}: max abs diff {diff:.3g}')
    assert diff <= tolerances[name.replace('_f01', '')]['atol'], (name, diff)


@parity
@pytest.mark.parametrize('variant', ['cfbi_resnet101', 'cfbi_mobilenetv2'])
def test_parity_cfbi(variant):
  query, ref, ref_labels, prev_labels, valid = _parity_inputs(
      variant, 'embedding'
  )
  bg, fg = _parity_biases(variant)
  common = (valid, bg[0], fg[0])
  glob = _fn('global_matching', num_chunks=4)(
      query, ref[None], ref_labels[None], *common
  )
  local = _fn('local_matching_downsampled', windows=(2, 4, 6, 8, 10, 12))(
      query, ref, prev_labels, *common
  )
  alt = _fn('global_matching', atrous=2)(  # --global_atrous_rate 2
      query, ref[None], ref_labels[None], *common
  )
  _check_parity(
      variant,
      {
          **_fg_bg('global', '', glob, valid),
          **_fg_bg('local', '', local, valid),
          'global_fg_f01': _nchw(alt),
      },
  )


@parity
@pytest.mark.parametrize(
    'scale,channels,windows,atrous',
    [
        (0, 32, (4, 8, 12, 16, 20, 24), 2),
        (1, 64, (2, 4, 6, 8, 10, 12), 1),
        (2, 128, (2, 4, 6, 8, 10), 1),
    ],
)
def test_parity_cfbip(scale, channels, windows, atrous):
  variant, suffix = 'cfbip_resnet101', f'_{4 << scale}x'
  query, ref, ref_labels, prev_labels, valid = _parity_inputs(
      variant, 'embedding' + suffix, channels
  )
  bg, fg = _parity_biases(variant)
  common = (valid, bg[scale], fg[scale])
  glob = _fn('global_matching', atrous=atrous)(
      query, ref[None], ref_labels[None], *common
  )
  local = _fn('local_matching', windows=windows, atrous=atrous)(
      query, ref, prev_labels, *common
  )
  # DAVIS flags: --global_atrous_rate 2 --min_matching_pixels 100.
  alt = _fn('global_matching', atrous=atrous, min_pixels=100)(
      query, ref[None], ref_labels[None], *common
  )
  _check_parity(
      variant,
      {
          **_fg_bg('global', suffix, glob, valid),
          **_fg_bg('local', suffix, local, valid),
          f'global_fg{suffix}_f01': _nchw(alt),
      },
  )
