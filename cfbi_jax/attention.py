"""Instance-level attention: foreground/background pooling and the IA gate.

`attention_head` is the parameter-free pooling of
`networks/layers/attention.py::calculate_attention_head(_for_eval)`
(`cfbi-official-notes.md` §12), written once for any number of reference
frames (the official code has a separate `_for_eval` copy). `IAGate` is the
`1 + tanh(Linear(h))` channel gate the ensembler applies before each block.
"""

import jax.numpy as jnp
from flax import nnx

from cfbi_jax import layers

ATTENTION_EPSILON = 1e-5


def attention_head(
    ref_emb: jnp.ndarray,
    ref_labels: jnp.ndarray,
    ref_valid: jnp.ndarray,
    prev_emb: jnp.ndarray,
    prev_labels: jnp.ndarray,
    num_slots: int,
    eps: float = ATTENTION_EPSILON,
) -> jnp.ndarray:
  """Per-object attention vectors [ref_fg, ref_bg, prev_fg, prev_bg].

  For object i with binary mask Y_i = (labels == i):
  fg = sum(E * Y_i) / (sum(Y_i) + eps) and
  bg = sum(E * (1 - Y_i)) / (sum(1 - Y_i) + eps) (the official code writes
  the numerator as sum(E) - sum(E * Y_i); equal up to rounding, and exactly
  zero here when Y_i covers the frame). With several reference
  frames the sums and counts are accumulated over the valid references
  before dividing, as the official evaluator does. Pixels labelled -1 (or
  any id that is not i) count as background of object i, which is how the
  official lattice-masked labels of CFBI+ behave (notes §8).

  Args:
    ref_emb: `[R, h, w, C]` reference embeddings.
    ref_labels: `[R, h, w]` integer labels at that grid.
    ref_valid: `[R]` bool, False for unused reference slots.
    prev_emb: `[h, w, C]` previous-frame embedding.
    prev_labels: `[h, w]` integer labels at that grid.
    num_slots: K + 1 object slots (slot 0 = background).
    eps: the official `MODEL_EPSILON`.

  Returns:
    `[num_slots, 4 * C]` float32 attention vectors.
  """
  ids = jnp.arange(num_slots)
  # `where`, not a product, so that whatever an unused slot holds is dropped.
  ref_emb = jnp.where(ref_valid[:, None, None, None], ref_emb, 0.0)
  ref_in = ref_labels[None] == ids[:, None, None, None]
  ref_valid_px = jnp.broadcast_to(ref_valid[None, :, None, None], ref_in.shape)
  ref_onehot = (ref_in & ref_valid_px).astype(ref_emb.dtype)
  ref_offhot = (~ref_in & ref_valid_px).astype(ref_emb.dtype)
  # Background sums and counts are taken over the complement directly, not
  # as `total - foreground`: under jit XLA folds `(N - n) + eps` into
  # `(N + eps) - n`, which loses eps when an object covers the whole frame
  # (a frame predicted all background during sequential training) and
  # divides by zero.
  ref_pos = jnp.einsum('krhw,rhwc->kc', ref_onehot, ref_emb)
  ref_neg = jnp.einsum('krhw,rhwc->kc', ref_offhot, ref_emb)
  ref_pos_num = jnp.sum(ref_onehot, axis=(1, 2, 3))
  ref_neg_num = jnp.sum(ref_offhot, axis=(1, 2, 3))
  prev_in = prev_labels[None] == ids[:, None, None]
  prev_onehot = prev_in.astype(prev_emb.dtype)
  prev_offhot = (~prev_in).astype(prev_emb.dtype)
  prev_pos = jnp.einsum('khw,hwc->kc', prev_onehot, prev_emb)
  prev_neg = jnp.einsum('khw,hwc->kc', prev_offhot, prev_emb)
  prev_pos_num = jnp.sum(prev_onehot, axis=(1, 2))
  prev_neg_num = jnp.sum(prev_offhot, axis=(1, 2))
  return jnp.concatenate(
      [
          ref_pos / (ref_pos_num[:, None] + eps),
          ref_neg / (ref_neg_num[:, None] + eps),
          prev_pos / (prev_pos_num[:, None] + eps),
          prev_neg / (prev_neg_num[:, None] + eps),
      ],
      axis=-1,
  )


class IAGate(nnx.Module):
  """x * (1 + tanh(Linear(h))), one gate value per channel and object."""

  def __init__(self, head_dim: int, channels: int, *, rngs: nnx.Rngs):
    self.IA = nnx.Linear(head_dim, channels, rngs=rngs)

  def __call__(self, x: jnp.ndarray, head: jnp.ndarray) -> jnp.ndarray:
    """Gates `x` `[N, h, w, channels]` with `head` `[N, head_dim]`."""
    gate = 1.0 + jnp.tanh(self.IA(head))
    return x * layers.broadcast_to_like(gate[:, None, None, :], x)
