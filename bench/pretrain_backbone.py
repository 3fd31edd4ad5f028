"""Pretrains the tiny DeepLab alone: the shared starting point of the model
comparison.

    python bench/pretrain_backbone.py        # -> runs/pretrained_deeplab

The papers start every model from a DeepLab pretrained on ImageNet and COCO
(VideoMatch: Pascal VOC); none of that exists for the tiny DeepLab of the
`tiny_<model>` variants (`backbone.TINY_DEEPLAB`, GroupNorm as in the
synthetic recipe). Our stand-in trains it alone, with no video model on
top, on per-frame foreground/background segmentation of the synthetic
training frames: a 1x1 convolution to one logit on each of the three
features the families read (`decoder_s4`, `mid_s8`, `aspp_s16`; CFBI+
reads all three, the others `decoder_s4`), sigmoid cross-entropy against
"any object" at the crop size, summed over the three. Every family then
starts from the same DeepLab, which none of them trained
(`bench/compare_models.py --backbone_from`), where the earlier comparison
started all four from the DeepLab trained together with CFBI's head.

Data: frames of the first `--train_videos` videos of the synthetic training
set (seed 1, as `configs/synthetic.py`), every `--frame_stride`-th frame,
random `--crop` windows and flips, drawn from `numpy.random.default_rng(
--seed)`. The remaining videos of the set are held out: the script reports
the foreground IoU of the s4 head on their frames (whole frames, threshold
0), before and after training. Optimiser: the synthetic recipe's AdamW (lr
0.002, 100 warm-up steps, poly decay, `optimizer.make_optimizer`).

Output: a `tiny_cfbi` model directory (GroupNorm DeepLab) whose DeepLab
holds the pretrained weights (the rest is initialised from the seed and
unused: `synthetic_runs.backbone_init` copies only `feature_extracter`),
plus `pretrain.json` with the settings, losses, IoUs and time. A directory
with `pretrain.json` is reused as is.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# The three features the families read, and their strides.
HEAD_FEATURES = ('decoder_s4', 'mid_s8', 'aspp_s16')


def read_frames(root: str, names, frame_stride: int):
  """`([F, H, W, 3] uint8, [F, H, W] bool foreground)` of the videos."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  frames, fg = [], []
  for name in names:
    image_dir = os.path.join(root, 'JPEGImages', '480p', name)
    mask_dir = os.path.join(root, 'Annotations', '480p', name)
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir))
    for stem in stems[::frame_stride]:
      with Image.open(os.path.join(image_dir, stem + '.jpg')) as im:
        frames.append(np.asarray(im.convert('RGB')))
      with Image.open(os.path.join(mask_dir, stem + '.png')) as im:
        fg.append(np.asarray(im) > 0)
  return np.stack(frames), np.stack(fg)


def sample_batch(rng, frames, fg, batch: int, crop: int):
  """Random crops (with flips) of random frames."""
  index = rng.integers(0, len(frames), batch)
  h, w = frames.shape[1:3]
  ys = rng.integers(0, h - crop + 1, batch)
  xs = rng.integers(0, w - crop + 1, batch)
  flips = rng.random(batch) < 0.5
  images, labels = [], []
  for i, y, x, flip in zip(index, ys, xs, flips):
    im = frames[i, y : y + crop, x : x + crop]
    lab = fg[i, y : y + crop, x : x + crop]
    if flip:
      im, lab = im[:, ::-1], lab[:, ::-1]
    images.append(im)
    labels.append(lab)
  return np.stack(images), np.stack(labels)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/pretrained_deeplab')
  parser.add_argument('--data', default='runs/synthetic_data')
  parser.add_argument('--videos', type=int, default=200)
  parser.add_argument('--synthetic_seed', type=int, default=1)
  parser.add_argument('--train_videos', type=int, default=180)
  parser.add_argument('--frame_stride', type=int, default=2)
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--crop', type=int, default=97)
  parser.add_argument('--lr', type=float, default=0.002)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  if os.path.exists(os.path.join(args.out, 'pretrain.json')):
    print(f'{args.out} is pretrained already')
    return
  pretrain(args)


def pretrain(args) -> dict:
  """Trains and writes `args.out` (module docstring); returns the record."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from cfbi_jax import atomic_files
  from cfbi_jax import backend
  from cfbi_jax import checkpoint
  from cfbi_jax import layers
  from cfbi_jax import models
  from cfbi_jax import optimizer
  from cfbi_jax import synthetic
  from cfbi_jax import vos
  from configs import common
  from configs import synthetic as synthetic_config

  # pylint: enable=g-import-not-at-top
  backend.use_compilation_cache(backend.DEFAULT_COMPILATION_CACHE_DIR)
  config = synthetic_config.get_config('model=cfbi')
  model_config = config.model
  bgr = bool(model_config.bgr)
  names = synthetic.ensure_davis_dataset(
      args.data, args.videos, args.synthetic_seed, split='train'
  )
  train_frames, train_fg = read_frames(
      args.data, names[: args.train_videos], args.frame_stride
  )
  test_frames, test_fg = read_frames(
      args.data, names[args.train_videos :], args.frame_stride
  )
  print(
      f'{len(train_frames)} training frames, {len(test_frames)} held-out '
      'frames',
      flush=True,
  )

  class Pretraining(nnx.Module):
    """The DeepLab plus one 1x1 foreground head per read feature."""

    def __init__(self, deeplab, rngs):
      self.feature_extracter = deeplab
      chans = deeplab.out_channels
      self.heads = nnx.List(
          [
              layers.conv(chans[f], 1, 1, use_bias=True, rngs=rngs)
              for f in HEAD_FEATURES
          ]
      )

    def __call__(self, images, dropout_rng=None):
      feats = self.feature_extracter(images, dropout_rng)
      size = images.shape[1:3]
      out = []
      for name, head in zip(HEAD_FEATURES, self.heads):
        logit = head(feats[name])
        out.append(
            jax.image.resize(logit, logit.shape[:1] + size + (1,), 'bilinear')[
                ..., 0
            ]
        )
      return out  # one [B, H, W] logit map per head

  model = models.build(model_config, rngs=nnx.Rngs(args.seed))
  net = Pretraining(model.feature_extracter, nnx.Rngs(args.seed + 1))
  optim = common.optim_config(args.steps)
  optim.name = 'adamw'
  optim.lr = args.lr
  optim.warmup_steps = 100
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)
  tx = optimizer.make_optimizer(optim, params)
  opt_state = tx.init(params)

  def loss_fn(p, images, labels, key):
    logits = nnx.merge(graphdef, p, rest)(
        vos.preprocess_images(images, bgr=bgr), key
    )
    target = labels.astype(jnp.float32)
    per_head = [
        jnp.mean(optax.sigmoid_binary_cross_entropy(lg, target))
        for lg in logits
    ]
    return sum(per_head), jnp.stack(per_head)

  @jax.jit
  def step(p, o, images, labels, key):
    (loss, per_head), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        p, images, labels, key
    )
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss, per_head

  @jax.jit
  def s4_logits(p, images):
    return nnx.merge(graphdef, p, rest)(vos.preprocess_images(images, bgr=bgr))[
        0
    ]

  def held_out_iou(p):
    inter = union = 0
    for i in range(0, len(test_frames), 16):
      pred = np.asarray(s4_logits(p, test_frames[i : i + 16])) > 0
      gt = test_fg[i : i + 16]
      inter += np.sum(pred & gt)
      union += np.sum(pred | gt)
    return float(inter / max(union, 1))

  rng = np.random.default_rng(args.seed)
  key = jax.random.key(args.seed)
  iou_before = held_out_iou(params)
  start = time.perf_counter()
  losses = []
  for i in range(args.steps):
    images, labels = sample_batch(
        rng, train_frames, train_fg, args.batch_size, args.crop
    )
    params, opt_state, loss, per_head = step(
        params, opt_state, images, labels, jax.random.fold_in(key, i)
    )
    if (i + 1) % 250 == 0 or i + 1 == args.steps:
      losses.append([i + 1] + [float(x) for x in per_head])
      print(
          f'step {i + 1}: loss {float(loss):.4f} (s4, s8, s16 '
          + ', '.join(f'{float(x):.4f}' for x in per_head)
          + ')',
          flush=True,
      )
  seconds = time.perf_counter() - start
  iou_after = held_out_iou(params)
  nnx.update(net, params)
  record = {
      'settings': vars(args),
      'bgr': bgr,
      'backbone_norm': model_config.backbone_norm,
      'losses (step, s4, s8, s16)': losses,
      'held_out_foreground_iou': {
          'before': iou_before,
          'after': iou_after,
      },
      'held_out_frames': int(len(test_frames)),
      'seconds': seconds,
  }
  arrays = checkpoint.flat_state(model)
  checkpoint.save_model(args.out, model_config, arrays)
  atomic_files.write_json(
      os.path.join(args.out, 'pretrain.json'), record, indent=2
  )
  print(
      f'held-out foreground IoU (s4 head): {iou_before:.3f} before, '
      f'{iou_after:.3f} after {args.steps} steps ({seconds / 60:.1f} min); '
      f'wrote {args.out}'
  )
  return record


if __name__ == '__main__':
  main()
