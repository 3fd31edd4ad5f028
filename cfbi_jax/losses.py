"""Training loss of CFBI: bootstrapped cross-entropy with the official ramp.

Reproduces `networks/layers/loss.py::Concat_CrossEntropyLoss`
(`cfbi-official-notes.md` §18): per-pixel cross-entropy over the K+1 object
channels, pixels labelled `ignore_label` contributing 0 but still counted,
and per sample the mean of the k largest pixel losses, where

    ratio = min(1, step / hard_mining_step)
    k = int((top_k_percent * ratio + (1 - ratio)) * H * W).

So the kept fraction falls linearly from all pixels at step 0 to 15% at
`hard_mining_step` (half the training steps officially). `k` is computed on
the host in float64 like the official Python code and enters the jitted step
as data; the selection is a sort plus a rank mask, so it may change every
step without recompiling. Padded object slots hold a large negative logit
and so add nothing to the softmax.
"""

import jax
import jax.numpy as jnp


def num_hard_pixels(
    step: int,
    num_pixels: int,
    top_k_percent: float = 0.15,
    hard_mining_step: float = 50000.0,
) -> int:
  """The official k for `step` (host-side, float64 arithmetic).

  Args:
    step: training step.
    num_pixels: H * W of the loss map.
    top_k_percent: final kept fraction (0.15).
    hard_mining_step: step at which the final fraction is reached.

  Returns:
    Number of pixels averaged per sample.
  """
  if hard_mining_step <= 0:
    ratio = 1.0
  else:
    ratio = min(1.0, float(step) / float(hard_mining_step))
  return int((top_k_percent * ratio + (1.0 - ratio)) * num_pixels)


def pixel_cross_entropy(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_label: int = 255
) -> jnp.ndarray:
  """Per-pixel cross-entropy; ignored pixels give 0.

  Args:
    logits: `[B, H, W, C]`.
    labels: `[B, H, W]` integer class ids (or `ignore_label`).
    ignore_label: label whose pixels contribute 0.

  Returns:
    `[B, H, W]` float32 losses.
  """
  logits = logits.astype(jnp.float32)
  ignored = labels == ignore_label
  safe = jnp.where(ignored, 0, labels).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  return jnp.where(ignored, 0.0, -picked)


def bootstrapped_cross_entropy(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    num_hard: jnp.ndarray,
    ignore_label: int = 255,
) -> jnp.ndarray:
  """Mean of the `num_hard` largest pixel losses, per sample.

  Args:
    logits: `[B, H, W, C]` logits at label resolution.
    labels: `[B, H, W]` integer labels.
    num_hard: scalar k (traced is fine), 1 <= k <= H * W.
    ignore_label: label ignored in the loss (but counted among the pixels).

  Returns:
    `[B]` per-sample losses.
  """
  losses = pixel_cross_entropy(logits, labels, ignore_label)
  flat = losses.reshape(losses.shape[0], -1)
  ranked = -jnp.sort(-flat, axis=-1)  # descending
  keep = jnp.arange(flat.shape[1])[None] < num_hard
  k = jnp.asarray(num_hard, jnp.float32)
  return jnp.sum(jnp.where(keep, ranked, 0.0), axis=-1) / k
