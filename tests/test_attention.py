"""Tests for `cfbi_jax.attention`: fg/bg attention pooling and the IA gate.

`attention_head` is compared with an explicit loop over objects, reference
frames and pixels written from `../shared/reference/cfbi-official-notes.md`
§12 (sums and counts accumulated over the valid references before dividing,
epsilon 1e-5). `IAGate` is compared with x * (1 + tanh(h @ W + b)) in NumPy,
using the module's own kernel and bias.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import attention

EPS = 1e-5


# ---------------------------------------------------------------- references
def np_pool(embs, labels, obj):
  """fg and bg means of object `obj` over a list of (emb, labels) frames."""
  c = embs[0].shape[-1]
  fg_sum, total, fg_count, bg_count = np.zeros(c), np.zeros(c), 0.0, 0.0
  for emb, lab in zip(embs, labels):
    h, w = lab.shape
    for y in range(h):
      for x in range(w):
        e = emb[y, x].astype(np.float64)
        total += e
        if lab[y, x] == obj:
          fg_sum += e
          fg_count += 1
        else:
          bg_count += 1
  return fg_sum / (fg_count + EPS), (total - fg_sum) / (bg_count + EPS)


def np_attention_head(
    ref_emb, ref_labels, ref_valid, prev_emb, prev_labels, num_slots
):
  refs = [r for r in range(len(ref_valid)) if ref_valid[r]]
  out = []
  for obj in range(num_slots):
    ref_fg, ref_bg = np_pool(
        [ref_emb[r] for r in refs], [ref_labels[r] for r in refs], obj
    )
    prev_fg, prev_bg = np_pool([prev_emb], [prev_labels], obj)
    out.append(np.concatenate([ref_fg, ref_bg, prev_fg, prev_bg]))
  return np.stack(out)


def make_inputs(seed, num_refs, h, w, c, label_high):
  rng = np.random.default_rng(seed)
  ref_emb = rng.standard_normal((num_refs, h, w, c)).astype(np.float32)
  ref_labels = rng.integers(-1, label_high, (num_refs, h, w)).astype(np.int32)
  prev_emb = rng.standard_normal((h, w, c)).astype(np.float32)
  prev_labels = rng.integers(-1, label_high, (h, w)).astype(np.int32)
  return ref_emb, ref_labels, prev_emb, prev_labels


def run_head(ref_emb, ref_labels, ref_valid, prev_emb, prev_labels, num_slots):
  fn = jax.jit(attention.attention_head, static_argnames='num_slots')
  return np.asarray(
      fn(
          jnp.asarray(ref_emb),
          jnp.asarray(ref_labels),
          jnp.asarray(ref_valid),
          jnp.asarray(prev_emb),
          jnp.asarray(prev_labels),
          num_slots=num_slots,
      )
  )


# ------------------------------------------------------------ attention_head
@pytest.mark.parametrize(
    'num_refs,ref_valid',
    [
        pytest.param(1, [True], id='one_ref'),
        pytest.param(3, [True, False, True], id='three_refs_middle_invalid'),
        pytest.param(3, [False, True, True], id='three_refs_first_invalid'),
    ],
)
def test_attention_head_matches_naive(num_refs, ref_valid):
  ref_emb, ref_labels, prev_emb, prev_labels = make_inputs(
      0, num_refs, 5, 7, 6, label_high=3
  )
  ref_valid = np.array(ref_valid)
  # An invalid slot holds large values and every object; it must not count.
  for r in np.flatnonzero(~ref_valid):
    ref_emb[r] = 1e3
    ref_labels[r] = np.arange(5 * 7).reshape(5, 7) % 3
  got = run_head(ref_emb, ref_labels, ref_valid, prev_emb, prev_labels, 4)
  want = np_attention_head(
      ref_emb, ref_labels, ref_valid, prev_emb, prev_labels, 4
  )
  assert got.shape == (4, 4 * 6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_attention_head_invalid_slot_contributes_nothing():
  ref_emb, ref_labels, prev_emb, prev_labels = make_inputs(
      1, 3, 4, 6, 5, label_high=4
  )
  valid = np.array([True, False, True])
  base = run_head(ref_emb, ref_labels, valid, prev_emb, prev_labels, 4)
  rng = np.random.default_rng(2)
  ref_emb[1] = rng.standard_normal(ref_emb[1].shape) * 100
  ref_labels[1] = rng.integers(0, 4, ref_labels[1].shape)
  changed = run_head(ref_emb, ref_labels, valid, prev_emb, prev_labels, 4)
  np.testing.assert_array_equal(changed, base)
  # The same frames without the invalid slot give the same vectors.
  keep = [0, 2]
  dropped = run_head(
      ref_emb[keep], ref_labels[keep], valid[keep], prev_emb, prev_labels, 4
  )
  np.testing.assert_allclose(dropped, base, rtol=1e-6, atol=1e-6)


def test_attention_head_minus_one_is_background_of_every_object():
  h, w, c = 4, 5, 3
  rng = np.random.default_rng(3)
  ref_emb = rng.standard_normal((1, h, w, c)).astype(np.float32)
  prev_emb = rng.standard_normal((h, w, c)).astype(np.float32)
  labels = np.full((h, w), -1, np.int32)
  labels[0, :2] = 0
  labels[3, 4] = 1
  got = run_head(ref_emb, labels[None], np.array([True]), prev_emb, labels, 2)
  # Object 0: fg = mean of its two pixels, bg = mean of the other 18,
  # which includes all the -1 pixels.
  e = ref_emb[0].astype(np.float64)
  fg0 = e[0, :2].sum(0) / (2 + EPS)
  bg0 = (e.sum((0, 1)) - e[0, :2].sum(0)) / (18 + EPS)
  np.testing.assert_allclose(got[0, :c], fg0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[0, c : 2 * c], bg0, rtol=1e-5, atol=1e-6)
  # Object 1: a single pixel; its bg holds 19 pixels (object 0 and -1 ones).
  fg1 = e[3, 4] / (1 + EPS)
  bg1 = (e.sum((0, 1)) - e[3, 4]) / (19 + EPS)
  np.testing.assert_allclose(got[1, :c], fg1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[1, c : 2 * c], bg1, rtol=1e-5, atol=1e-6)
  want = np_attention_head(ref_emb, labels[None], [True], prev_emb, labels, 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_attention_head_absent_object():
  ref_emb, ref_labels, prev_emb, prev_labels = make_inputs(
      4, 2, 4, 4, 3, label_high=2
  )  # labels in {-1, 0, 1}; object 2 absent
  got = run_head(
      ref_emb, ref_labels, np.array([True, True]), prev_emb, prev_labels, 3
  )
  c = 3
  # fg = 0 / eps = 0; bg = mean over every pixel of the valid frames.
  np.testing.assert_array_equal(got[2, :c], 0.0)
  np.testing.assert_array_equal(got[2, 2 * c : 3 * c], 0.0)
  total = ref_emb.astype(np.float64).sum((0, 1, 2))
  np.testing.assert_allclose(
      got[2, c : 2 * c], total / (32 + EPS), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
      got[2, 3 * c :],
      prev_emb.astype(np.float64).sum((0, 1)) / (16 + EPS),
      rtol=1e-5,
      atol=1e-6,
  )
  want = np_attention_head(
      ref_emb, ref_labels, [True, True], prev_emb, prev_labels, 3
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size', [3, 17, 33])
def test_attention_head_object_covering_everything(size):
  # Object 0 everywhere: bg count is 0, so bg = 0 / eps = 0 (not NaN). At
  # 17x17 and above, the `(N - n) + eps` form XLA folds to `(N + eps) - n`
  # lost eps to rounding and gave inf/NaN under jit (a frame predicted all
  # background during sequential training).
  rng = np.random.default_rng(5)
  ref_emb = rng.standard_normal((1, size, size, 16)).astype(np.float32) + 1
  prev_emb = rng.standard_normal((size, size, 16)).astype(np.float32) + 1
  labels = np.zeros((size, size), np.int32)
  got = run_head(ref_emb, labels[None], np.array([True]), prev_emb, labels, 2)
  want = np_attention_head(ref_emb, labels[None], [True], prev_emb, labels, 2)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# -------------------------------------------------------------------- IAGate
def test_ia_gate_matches_numpy():
  rng = np.random.default_rng(6)
  gate = attention.IAGate(12, 5, rngs=nnx.Rngs(0))
  # Random (not initial) bias so that the bias term is exercised.
  gate.IA.bias[...] = jnp.asarray(rng.standard_normal(5).astype(np.float32))
  x = rng.standard_normal((3, 4, 6, 5)).astype(np.float32)
  head = rng.standard_normal((3, 12)).astype(np.float32)
  got = np.asarray(gate(jnp.asarray(x), jnp.asarray(head)))
  kernel = np.asarray(gate.IA.kernel[...], np.float64)
  bias = np.asarray(gate.IA.bias[...], np.float64)
  assert kernel.shape == (12, 5)
  want = np.empty_like(x, dtype=np.float64)
  for n in range(3):
    a = 1.0 + np.tanh(head[n].astype(np.float64) @ kernel + bias)
    want[n] = x[n] * a[None, None, :]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ia_gate_range_and_zero_weights():
  gate = attention.IAGate(4, 3, rngs=nnx.Rngs(1))
  gate.IA.kernel[...] = jnp.zeros((4, 3))
  gate.IA.bias[...] = jnp.array([0.0, 100.0, -100.0])
  x = np.ones((1, 2, 2, 3), np.float32)
  got = np.asarray(gate(jnp.asarray(x), jnp.ones((1, 4))))
  # Gate 1 + tanh(0) = 1, 1 + tanh(100) = 2, 1 + tanh(-100) = 0.
  np.testing.assert_allclose(got[0, 0, 0], [1.0, 2.0, 0.0], atol=1e-6)
