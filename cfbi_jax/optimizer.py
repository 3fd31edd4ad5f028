"""The optax optimizer of CFBI training, built from `config.optim`.

`name='sgd'` (the papers' recipe): SGD with momentum 0.9 (Nesterov switch),
weight decay added to the gradient as PyTorch's SGD does. `name='adamw'`
(ours, for small models trained from scratch, e.g. the synthetic recipe):
Adam (b1 = `momentum`, b2 = `adam_b2`) with decoupled weight decay
(`weight_decay` x the learning rate, as `optax.adamw`). `name='adam'`
(VideoMatch's paper recipe): Adam with the weight decay added to the
gradient before the Adam scaling, an L2 term as TensorFlow's weight
regulariser gives it. All follow a
learning rate with linear warm-up then poly decay, floored at `min_lr`:

    lr(t) = base * t / warmup                                  t < warmup
    lr(t) = max(min_lr, base * (1 - (t - w) / (T - w + 1)) ** power)

(the RPCMVOS-derived recipe of `cfbi-official-notes.md` §19). Also:
weight decay on every parameter except those whose path matches one of
`weight_decay_exclude` (regexes), a learning-rate multiplier for the
backbone (`feature_extracter`), and optional global-norm clipping.
Gradient accumulation (`accumulate_steps`) is not here but in
`train_step.make_train_step`, which averages micro-batch gradients inside
one step so that the step counter, the schedules and the data position all
count whole batches. Only `nnx.Param`s are optimised; frozen
BN buffers (`nnx.BatchStat`) are never touched.
"""

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 1000,
    power: float = 0.9,
    min_lr: float = 1e-5,
) -> Callable[[Any], Any]:
  """Warm-up then poly decay (see the module docstring)."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = base_lr * step / max(warmup_steps, 1)
    frac = (step - warmup_steps) / (total_steps - warmup_steps + 1)
    poly = base_lr * jnp.power(jnp.clip(1.0 - frac, 0.0, 1.0), power)
    poly = jnp.maximum(poly, min_lr)
    return jnp.where(step < warmup_steps, warm, poly)

  return schedule


def _path_labels(params, fn):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  names = [
      '.'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
      for path, _ in flat
  ]
  treedef = jax.tree_util.tree_structure(params)
  return jax.tree_util.tree_unflatten(treedef, [fn(n) for n in names])


def make_optimizer(optim_config, params) -> optax.GradientTransformation:
  """Builds the transformation for `params` (a pytree of arrays).

  Args:
    optim_config: `config.optim` (name, lr, total_steps, warmup_steps, power,
      min_lr, momentum, nesterov, adam_b2, weight_decay, weight_decay_exclude,
      backbone_lr_mult, clip_grad_norm; accumulate_steps is read by the
      trainer).
    params: the parameter pytree (for path-based masks).

  Returns:
    An optax transformation.
  """
  c = optim_config
  name = c.get('name', 'sgd')
  if name not in ('sgd', 'adamw', 'adam'):
    raise ValueError(
        f"optim.name must be 'sgd', 'adamw' or 'adam', got {name!r}"
    )
  schedule = learning_rate_schedule(
      c.lr, c.total_steps, c.warmup_steps, c.power, c.min_lr
  )
  exclude = [re.compile(p) for p in c.weight_decay_exclude]
  decay_mask = _path_labels(
      params, lambda n: not any(p.search(n) for p in exclude)
  )
  lr_scale = _path_labels(
      params,
      lambda n: c.backbone_lr_mult
      if n.startswith('feature_extracter')
      else 1.0,
  )
  chain = []
  if c.clip_grad_norm:
    chain.append(optax.clip_by_global_norm(c.clip_grad_norm))
  decay = optax.masked(optax.add_decayed_weights(c.weight_decay), decay_mask)
  if name == 'sgd':
    # Official PyTorch SGD adds weight decay to the gradient (coupled).
    chain += [decay, optax.trace(decay=c.momentum, nesterov=c.nesterov)]
  elif name == 'adam':
    # L2: decay added to the gradient, then scaled by Adam with it.
    chain += [
        decay,
        optax.scale_by_adam(b1=c.momentum, b2=c.get('adam_b2', 0.999)),
    ]
  else:
    # AdamW: decay added after the Adam scaling, so it is scaled by the
    # learning rate only.
    chain += [
        optax.scale_by_adam(b1=c.momentum, b2=c.get('adam_b2', 0.999)),
        decay,
    ]
  chain.append(optax.scale_by_schedule(lambda t: -schedule(t)))
  if c.backbone_lr_mult != 1.0:
    chain.append(_scale_per_leaf(lr_scale))
  tx = optax.chain(*chain)
  return tx


def _scale_per_leaf(scales) -> optax.GradientTransformation:
  """Multiplies each update leaf by a fixed per-leaf factor."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(init, update)
