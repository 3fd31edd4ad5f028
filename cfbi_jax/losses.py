"""Training losses: CFBI's bootstrapped cross-entropy with the official
ramp, and VideoMatch's per-object foreground/background cross-entropy.

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

`object_binary_cross_entropy` is the loss of a model that scores every
object against its own background (VideoMatch's p_k = sigmoid(z_k)): per
pixel, the mean over the valid objects of -log sigmoid(+-z_k), in log space
(no floor, a gradient everywhere). `bootstrapped_mean` keeps the hardest
pixels of any per-pixel loss, so both losses share the schedule.
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


def bootstrapped_mean(
    losses: jnp.ndarray, num_hard: jnp.ndarray
) -> jnp.ndarray:
  """Mean of the `num_hard` largest pixel losses, per sample.

  Args:
    losses: `[B, H, W]` per-pixel losses.
    num_hard: scalar k (traced is fine), 1 <= k <= H * W.

  Returns:
    `[B]` per-sample losses.
  """
  flat = losses.reshape(losses.shape[0], -1)
  ranked = -jnp.sort(-flat, axis=-1)  # descending
  keep = jnp.arange(flat.shape[1])[None] < num_hard
  k = jnp.asarray(num_hard, jnp.float32)
  return jnp.sum(jnp.where(keep, ranked, 0.0), axis=-1) / k


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
  return bootstrapped_mean(
      pixel_cross_entropy(logits, labels, ignore_label), num_hard
  )


def object_binary_cross_entropy(
    object_logits: jnp.ndarray,
    labels: jnp.ndarray,
    obj_valid: jnp.ndarray,
    ignore_label: int = 255,
) -> jnp.ndarray:
  """Per-pixel foreground/background cross-entropy, averaged over objects.

  For object k (slot k >= 1 with `obj_valid`) and pixel p with logit
  z = `object_logits[p, k]` (p_k = sigmoid(z)): -log sigmoid(z) where p
  belongs to k, -log sigmoid(-z) elsewhere, both as log-sigmoids, so the
  loss goes to 0 as the scores become right and its gradient, 1 -
  sigmoid(+-z), tends to 1 (not 0) as they become badly wrong. Slot 0 (the
  background) and invalid slots add nothing.

  Args:
    object_logits: `[B, H, W, S]` logits z_k.
    labels: `[B, H, W]` integer labels (`ignore_label` pixels give 0).
    obj_valid: `[B, S]` bool.
    ignore_label: label whose pixels contribute 0.

  Returns:
    `[B, H, W]` float32 losses (0 for a sample without a valid object).
  """
  z = object_logits.astype(jnp.float32)
  slots = jnp.arange(z.shape[-1])
  mine = labels[..., None] == slots
  per_object = -jax.nn.log_sigmoid(jnp.where(mine, z, -z))
  weight = (obj_valid & (slots > 0)).astype(jnp.float32)[:, None, None, :]
  total = jnp.sum(per_object * weight, axis=-1)
  count = jnp.maximum(jnp.sum(weight, axis=-1), 1.0)
  return jnp.where(labels == ignore_label, 0.0, total / count)
