"""The pure, jitted training step: sequential training unrolled with scan.

No TensorFlow here: this module is the whole device-side training
computation, so it can be exported or run where TF is absent.

A batch is `{'frames': [B, T, S, S, 3] uint8, 'labels': [B, T, S, S] uint8,
'object_valid': [B, K+1] bool}` with frame 0 the reference, frame 1 the
previous frame (its ground truth seeds the recurrence) and frames 2..T-1 the
frames to segment. `clip_loss`:

1. embeds all B*T frames in one batched call (DeepLab dropout keyed per
   frame from the step's key), or frame by frame under remat;
2. starts the `vos.PropagationState` carry from the reference
   and moves it to frame 1 with its ground truth;
3. unrolls the frames with `jax.lax.scan` over the same
   `vos.frame_segmentation` / `vos.advance` pieces evaluation
   uses: logits at the crop size (align-corners bilinear), the model's
   loss (`vos.frame_loss`: the bootstrapped cross-entropy, or VideoMatch's
   per-object one) with the scheduled k, and the next previous
   mask is the hard argmax of the prediction (no gradient) when
   `use_own_predictions`, else the ground truth;
4. averages the per-sample losses over samples and frames.

Schedule values (`num_hard_pixels`, `use_own_predictions`, the learning rate
inside optax) enter as data, so nothing recompiles as training progresses.
"""

from typing import Any, Dict, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cfbi_jax import vos


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries (and checkpoints).

  Attributes:
    step: scalar int32 step.
    params: `nnx.Param` state of the model (optimised).
    frozen: the other model state (frozen BN buffers), never updated.
    opt_state: optax state.
    rng: base PRNG key; step keys are `fold_in(rng, step)`.
  """

  step: jnp.ndarray
  params: Any
  frozen: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(
    module: nnx.Module, tx: optax.GradientTransformation, seed: int
) -> Tuple[Any, TrainState]:
  """Splits `module` into (graphdef, TrainState) for training."""
  graphdef, params, frozen = nnx.split(module, nnx.Param, ...)
  return graphdef, TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      frozen=frozen,
      opt_state=tx.init(params),
      rng=jax.random.key(seed),
  )


# What `remat` may name: 'backbone' embeds the clip one frame index at a
# time (a `lax.map` over T of B frames each) and recomputes each in the
# backward pass instead of keeping its DeepLab activations; 'frame' does
# the same for each frame's matching and ensembler inside the `lax.scan`.
# Both recomputations sit inside loops: XLA:CPU drops the optimization
# barriers `jax.checkpoint` places, and then merges a recomputation outside
# a loop with its forward (measured: the whole-batch backbone under
# `jax.checkpoint` kept CFBI R101's step at 43.1 GB, as without remat), but
# it cannot merge the body of the backward loop with the forward one.
REMAT_PARTS = ('backbone', 'frame')


def _rematerialised(module: nnx.Module, fn, *args):
  """`fn(module, *args)` under `jax.checkpoint` (nothing inside is saved
  for the backward pass; it is recomputed there)."""
  graphdef, state = nnx.split(module)
  return jax.checkpoint(lambda st, *a: fn(nnx.merge(graphdef, st), *a))(
      state, *args
  )


def embed_clips(
    module: nnx.Module,
    images: jnp.ndarray,
    keys: jax.Array,
    remat: bool = False,
) -> Any:
  """Embeddings of a batch of clips.

  Args:
    module: the model.
    images: `[B, T, H, W, 3]` preprocessed frames.
    keys: `[B, T]` dropout keys, one per frame.
    remat: embed frame index t = 0..T-1 in turn (B frames each, a
      `lax.map`), each recomputed in the backward pass: the backward holds
      one frame index's DeepLab activations instead of all T. Same values
      as one batched call (dropout is keyed per frame).

  Returns:
    The model's frame embedding with leading axes `[B, T]`.
  """
  b, t = images.shape[:2]
  embed = lambda m, x, k: m.embed(x, dropout_rng=k)[0]
  if not remat:
    emb = embed(
        module, images.reshape((b * t,) + images.shape[2:]), keys.reshape(b * t)
    )
    return jax.tree.map(lambda x: x.reshape((b, t) + x.shape[1:]), emb)
  per_frame = jax.lax.map(
      lambda xs: _rematerialised(module, embed, *xs),
      (jnp.moveaxis(images, 1, 0), jnp.moveaxis(keys, 1, 0)),
  )
  return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), per_frame)


def clip_loss(
    module: nnx.Module,
    batch: Dict[str, jnp.ndarray],
    rng: jax.Array,
    num_hard: jnp.ndarray,
    use_own_predictions: jnp.ndarray,
    bgr: bool = True,
    remat: Tuple[str, ...] = (),
) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """Sequential-training loss of one batch of clips (module docstring).

  `remat` names the parts recomputed in the backward pass (`REMAT_PARTS`):
  less memory for more compute, with the same loss and gradients.

  Returns:
    `(loss, aux)` with aux `{'per_frame_loss': [T-2, B], 'predictions':
    [T-2, B, S, S] int32, 'fed_labels': [T-2, B, S, S] int32}` (the labels
    fed as the previous mask of the next frame).
  """
  frames, labels = batch['frames'], batch['labels'].astype(jnp.int32)
  obj_valid = batch['object_valid']
  b, t = frames.shape[:2]
  crop = frames.shape[2:4]
  unknown = sorted(set(remat) - set(REMAT_PARTS))
  if unknown:
    raise ValueError(
        f'train.remat parts {unknown} unknown; expected some '
        f'of {REMAT_PARTS}'
    )
  images = vos.preprocess_images(
      frames.reshape((b * t,) + frames.shape[2:]), bgr=bgr
  )
  keys = jax.random.split(rng, b * t).reshape(b, t)
  emb = embed_clips(
      module,
      images.reshape((b, t) + images.shape[1:]),
      keys,
      remat='backbone' in remat,
  )
  at = lambda i: jax.tree.map(lambda x: x[:, i], emb)
  no_reference = jnp.zeros((b,), bool)
  state = vos.start_state(
      module,
      at(0),
      labels[:, 0],
      num_ref_slots=1,
      memory_slots=obj_valid.shape[1],
  )
  state = vos.advance_state(
      module, state, at(1), labels[:, 1], no_reference, None, training=True
  )

  def body(state, xs):
    emb_t, labels_t = xs
    segment_of = lambda m, st, e, ov: vos.frame_segmentation(
        m, st, e, ov, crop, training=True
    )
    if 'frame' in remat:
      out = _rematerialised(module, segment_of, state, emb_t, obj_valid)
    else:
      out = segment_of(module, state, emb_t, obj_valid)
    logits, update = out.logits, out.memory_update
    loss_t = vos.frame_loss(out, labels_t, obj_valid, num_hard)
    pred = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1)).astype(jnp.int32)
    fed = jnp.where(use_own_predictions, pred, labels_t)
    state = vos.advance_state(
        module,
        state,
        emb_t,
        fed,
        no_reference,
        jax.lax.stop_gradient(update),
        training=True,
    )
    return state, (loss_t, pred, fed)

  time_major = lambda x: jnp.moveaxis(x[:, 2:], 1, 0)
  xs = (jax.tree.map(time_major, emb), time_major(labels))
  _, (frame_losses, preds, fed) = jax.lax.scan(body, state, xs)
  return jnp.mean(frame_losses), {
      'per_frame_loss': frame_losses,
      'predictions': preds,
      'fed_labels': fed,
  }


def foreground_iou(
    preds: jnp.ndarray, labels: jnp.ndarray, obj_valid: jnp.ndarray
) -> jnp.ndarray:
  """Mean IoU over valid foreground objects (a training log metric).

  Args:
    preds: `[..., B, S, S]` predicted ids; labels: same shape.
    obj_valid: `[B, K+1]`.

  Returns:
    Scalar mean IoU over (frame, sample, valid object k >= 1).
  """
  ids = jnp.arange(obj_valid.shape[1])
  p = preds[..., None] == ids
  g = labels[..., None] == ids
  inter = jnp.sum(p & g, axis=(-3, -2))
  union = jnp.sum(p | g, axis=(-3, -2))
  iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
  weight = obj_valid.at[:, 0].set(False).astype(jnp.float32)
  weight = jnp.broadcast_to(weight, iou.shape)
  return jnp.sum(iou * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    bgr: bool = True,
    accumulate_steps: int = 1,
    remat: Tuple[str, ...] = (),
):
  """Returns `train_step(state, batch, schedule) -> (state, metrics)`.

  `remat` is `clip_loss`'s (`config.train.remat`).

  `schedule` is `{'num_hard': int32 scalar, 'use_own_predictions': bool
  scalar}`, computed on the host from the step. The returned function is
  pure; jit it with the shardings of `sharding.py`.

  With `accumulate_steps` = m > 1 the batch is split into m equal
  micro-batches (sample i goes to micro-batch i // (B / m)) that run one
  after another in a `lax.scan` (peak memory of one micro-batch); their
  gradients are averaged and applied in one update, so a step is still one
  optimizer update of the whole batch. Micro-batch j draws its dropout key
  as `fold_in(step_key, j)`.

  Metrics: `loss`, `grad_norm`, `iou` (scalars) and `preview`
  `[T-2, S, S]` uint8, the predictions for sample 0 (for overlay images;
  it stays on the device unless fetched).
  """

  def grads_of(params, frozen, batch, rng, schedule):
    def loss_fn(p):
      module = nnx.merge(graphdef, p, frozen)
      return clip_loss(
          module,
          batch,
          rng,
          schedule['num_hard'],
          schedule['use_own_predictions'],
          bgr,
          tuple(remat),
      )

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  def train_step(state: TrainState, batch, schedule):
    rng = jax.random.fold_in(state.rng, state.step)
    if accumulate_steps == 1:
      (loss, aux), grads = grads_of(
          state.params, state.frozen, batch, rng, schedule
      )
      preds = aux['predictions']
    else:
      size = batch['frames'].shape[0]
      if size % accumulate_steps:
        raise ValueError(
            f'batch {size} is not divisible into '
            f'{accumulate_steps} micro-batches'
        )
      micro = jax.tree.map(
          lambda x: x.reshape(
              (accumulate_steps, size // accumulate_steps) + x.shape[1:]
          ),
          batch,
      )

      def body(acc, xs):
        j, mb = xs
        (loss_j, aux_j), g = grads_of(
            state.params, state.frozen, mb, jax.random.fold_in(rng, j), schedule
        )
        acc = jax.tree.map(jnp.add, acc, (loss_j, g))
        return acc, aux_j['predictions']

      zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), preds = jax.lax.scan(
          body, zeros, (jnp.arange(accumulate_steps), micro)
      )
      loss, grads = jax.tree.map(lambda x: x / accumulate_steps, (loss, grads))
      # [m, T-2, B/m, S, S] -> [T-2, B, S, S] in sample order.
      preds = jnp.moveaxis(preds, 0, 1)
      preds = preds.reshape(preds.shape[:1] + (size,) + preds.shape[3:])
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        'loss': loss,
        'grad_norm': optax.tree.norm(grads),
        'iou': foreground_iou(
            preds,
            jnp.moveaxis(batch['labels'][:, 2:], 1, 0).astype(jnp.int32),
            batch['object_valid'],
        ),
        'preview': preds[:, 0].astype(jnp.uint8),
    }
    return (
        state.replace(step=state.step + 1, params=params, opt_state=opt_state),
        metrics,
    )

  return train_step
