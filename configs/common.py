"""Helpers shared by the config files.

* `parse_arg('variant=cfbi_resnet101,dataset=davis2017', variant='', ...)`
  parses `--config=file.py:arg`: a ConfigDict of the declared keys with
  their defaults overridden; an undeclared key is an error.
* `parse_training_arg`, `training_preset`: the `model=` / `backbone=` /
  `recipe=` arguments of the training configs and the variant they build;
  `apply_recipe`: a family's paper recipe (`Family.recipe`) over the
  shared one, which every stage file calls last.
* `training_config(model, runlocal, backbone)`: the training recipe shared by
  `ytvos.py`, `davis.py` and `davis_ytvos.py`, which then set their own
  stage values. Where each value comes from is written next to it:
  [paper] CFBI §4 / CFBI+ §4; [official] the official configs
  (`configs/resnet101_cfbi*.py`, notes §20.2); [ours] our choice where both
  are silent (the official training code is not public; several follow
  the RPCMVOS recipe of notes §19, which reuses the CFBI code).

No side effects; imported by configs only.
"""

from typing import Tuple

import ml_collections

from cfbi_jax import backend
from cfbi_jax import data_config


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """Parses 'k=v,k2=v2' (or 'flag' for booleans) against `defaults`."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    if not item:
      continue
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(
          f'unknown config argument {key!r}; expected one of '
          f'{sorted(defaults)}'
      )
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ('', '1', 'true', 'yes')
    else:
      out[key] = type(default)(value)
  return out


# The backbones of the training configs (`backbone=` after the colon); the
# models (`model=`) are the registered families' (`models.training_models`:
# cfbi, cfbip, feelvos, videomatch). `variant=` is the older spelling of
# both.
TRAIN_BACKBONES = {'resnet': 'resnet101', 'mobilenet': 'mobilenetv2'}
_OLD_VARIANTS = {
    'cfbi': ('cfbi', 'resnet'),
    'cfbip': ('cfbip', 'resnet'),
    'mobilenet': ('cfbi', 'mobilenet'),
}


def train_models() -> Tuple[str, ...]:
  """The `model=` names (`models.training_models`)."""
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  return models.training_models()


RECIPES = ('paper', 'cfbi')


def parse_training_arg(arg) -> ml_collections.ConfigDict:
  """The arguments of the training configs: `model=` one of
  `train_models()`, `backbone=resnet|mobilenet`, `recipe=paper|cfbi`
  (`apply_recipe`), `runlocal` (and the older
  `variant=cfbi|cfbip|mobilenet`)."""
  args = parse_arg(
      arg,
      model='cfbi',
      backbone='resnet',
      variant='',
      runlocal=False,
      recipe='paper',
  )
  if args.variant:
    if args.variant not in _OLD_VARIANTS:
      raise ValueError(
          f'variant must be one of {sorted(_OLD_VARIANTS)}, '
          f'got {args.variant!r}'
      )
    args.model, args.backbone = _OLD_VARIANTS[args.variant]
  return args


def training_preset(model: str, backbone: str, runlocal: bool) -> str:
  """The model variant a training run builds (`models.variants()`)."""
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  if model not in train_models():
    raise ValueError(f'model must be one of {train_models()}, got {model!r}')
  if backbone not in TRAIN_BACKBONES:
    raise ValueError(
        f'backbone must be one of {sorted(TRAIN_BACKBONES)}, '
        f'got {backbone!r}'
    )
  preset = (
      f'tiny_{model}' if runlocal else f'{model}_{TRAIN_BACKBONES[backbone]}'
  )
  if preset not in models.variants():
    raise ValueError(
        f'{model} has no {backbone} variant; expected one of '
        f'{[v for v in models.variants() if v.startswith(model)]}'
    )
  return preset


def default_remat(preset: str) -> Tuple[str, ...]:
  """`train.remat` of a variant: both parts for the ResNet-101 models, none
  for the small backbones (see `training_config`)."""
  return ('backbone', 'frame') if preset.endswith('_resnet101') else ()


def training_model_config(preset: str) -> ml_collections.ConfigDict:
  """`models.model_config(preset)` with the family's training changes
  (the training matching chunks: CFBI [official] TRAIN_GLOBAL_CHUNKS 20,
  one per scale for CFBI+; FEELVOS [ours] as CFBI's)."""
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  return models.training_model_config(preset)


def one_global_chunk(model: ml_collections.ConfigDict) -> None:
  """Global matching in one query chunk (small frames), for the models
  that have the field."""
  if 'global_chunks' in model:
    chunks = model.global_chunks
    model.global_chunks = (1,) * len(chunks) if isinstance(chunks, tuple) else 1


def uses_own_predictions(model_config) -> bool:
  """Whether a model family trains on its own previous predictions: CFBI's
  sequential training [paper]; FEELVOS trains on the ground-truth previous
  mask [paper FEELVOS §3] and VideoMatch on frame pairs [paper
  VideoMatch §4.1], so neither does (`Family.own_predictions`)."""
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  return models.family_of(model_config).own_predictions


def optim_config(total_steps: int) -> ml_collections.ConfigDict:
  """The optimizer block of the recipe (`config.optim`); no TF import, so
  TF-free code (bench/bench_train.py on an accelerator image) can use it."""
  optim = ml_collections.ConfigDict()
  optim.name = 'sgd'  # [paper]; 'adamw' [ours] for tiny models
  optim.lr = 0.01  # [paper] CFBI+ §4
  optim.total_steps = total_steps
  optim.warmup_steps = 1000  # [official] TRAIN_WARM_UP_STEPS
  optim.power = 0.9  # [paper] poly decay
  optim.min_lr = 1e-5  # [ours] notes §19
  optim.momentum = 0.9  # [paper]
  optim.nesterov = True  # [ours] notes §19
  optim.adam_b2 = 0.999  # [ours] name='adamw' only
  optim.weight_decay = 1.5e-4  # [official] TRAIN_WEIGHT_DECAY
  optim.weight_decay_exclude = ()  # [ours] decay on every parameter
  optim.backbone_lr_mult = 1.0  # [ours]
  optim.clip_grad_norm = 5.0  # [official] TRAIN_CLIP_GRAD_NORM
  optim.accumulate_steps = 1  # [ours] micro-batches per step
  return optim


def training_config(
    model: str, runlocal: bool, backbone: str = 'resnet'
) -> ml_collections.ConfigDict:
  """The shared training recipe (module docstring); stage files adjust it.

  Args:
    model: one of `train_models()`.
    runlocal: a smoke-test shrink (tiny model, crop 65, batch 2, 20 steps)
      that runs in about a minute on a laptop CPU.
    backbone: one of `TRAIN_BACKBONES`.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  # [ours] JAX's persistent compilation cache ('' turns it off).
  config.compilation_cache_dir = backend.DEFAULT_COMPILATION_CACHE_DIR
  preset = training_preset(model, backbone, runlocal)
  # `config.model.bgr`: [official] the BGR input order of the released
  # models, saved with the weights.
  config.model = training_model_config(preset)
  # Deprecated spelling of `config.model.bgr` (`trainer.apply_deprecated_
  # fields` moves it there, with a warning).
  config.model_bgr = ml_collections.config_dict.placeholder(bool)
  config.data = data_config.default_data_config()  # provenance there
  config.train = ml_collections.ConfigDict()
  config.train.steps = 100_000  # [paper] CFBI+ §4 (YouTube-VOS)
  # [paper] 8 clips in all: CFBI §4.1 4 per GPU on 2 GPUs, CFBI+ §4 8 on
  # 4 GPUs (2 per GPU); global here, split over the devices.
  config.train.batch_size = 8
  config.train.num_frames = 3  # [paper] N current frames per clip
  config.train.top_k_percent = 0.15  # [paper] bootstrapped CE
  config.train.hard_mining_step = 50_000  # [official] steps / 2
  config.train.own_predictions_from_step = 50_001  # [official] GT while
  # step <= TRAIN_START_SEQ_TRAINING_STEPS (50k), own predictions after.
  # False: the previous mask is always the ground truth (`uses_own_
  # predictions`: FEELVOS and VideoMatch).
  config.train.own_predictions = uses_own_predictions(config.model)
  # [ours] Parts recomputed in the backward pass instead of stored
  # (`train_step.REMAT_PARTS`: 'backbone', 'frame'): less device memory for
  # more compute, same gradients. On for the ResNet-101 models, whose step
  # without it needs 43 GB (CFBI) / 53 GB (CFBI+) for the papers' 2 clips
  # per device at crop 465 and 9.8 / 13.6 GB with it (CPU buffer
  # assignment, `bench/bench_train.py --compiled-memory`); off for the
  # small backbones and the smoke test, where memory is not the limit and
  # the step is faster without the recomputation.
  config.train.remat = default_remat(preset)
  # 'paper' (the family's own, `apply_recipe`) or 'cfbi' (this one).
  config.train.recipe = 'cfbi'
  config.train.log_every = 50  # [ours]
  config.train.image_every = 1000  # [ours] overlay images to TensorBoard
  config.train.checkpoint_every = 1000  # [ours]
  config.train.keep_checkpoints = 3  # [ours] plus the best one
  # [ours] True: each process appends the element indices of the clips it
  # fed to every step to workdir/examples/process_<i>.jsonl (trainer.py).
  config.train.log_examples = False
  config.optim = optim_config(config.train.steps)
  config.init = ml_collections.ConfigDict()
  config.init.cfbi_checkpoint = ''  # converted official CFBI weights
  config.init.backbone_checkpoint = ''  # convert.py --backbone_only output
  config.init.zero_attention_gates = False  # [ours] True: IA gates start at 1
  if runlocal:
    one_global_chunk(config.model)
    config.data.crop_size = 65
    config.data.short_edge = 65
    config.data.min_object_pixels = 10
    config.data.reference_min_pixels = 10
    config.train.steps = config.optim.total_steps = 20
    config.train.batch_size = 2
    config.train.num_frames = 2
    config.train.hard_mining_step = 10
    config.train.own_predictions_from_step = 0
    config.train.log_every = 5
    config.train.image_every = 10
    config.train.checkpoint_every = 10
    config.optim.warmup_steps = 2
    config.optim.lr = 0.05
  return config


def set_steps(config: ml_collections.ConfigDict, steps: int) -> None:
  """Sets the run length and the values tied to it (decay, ramp ends; a
  bootstrapping without a ramp, `hard_mining_step` 0, stays so)."""
  config.train.steps = config.optim.total_steps = steps
  if config.train.hard_mining_step:
    config.train.hard_mining_step = steps // 2
  config.train.own_predictions_from_step = steps // 2 + 1


# The recipe values that set a run's length and batch: the paper's budget,
# taken only where the config trains at the papers' scale.
BUDGET_FIELDS = ('train.steps', 'train.batch_size')


def apply_recipe(
    config: ml_collections.ConfigDict,
    recipe: str,
    *,
    budget: bool = True,
    lr_scale: float = 1.0,
) -> None:
  """Puts the model family's paper recipe over the shared one.

  `recipe='paper'` applies `Family.recipe` of `config.model`'s family (the
  optimiser, learning rate and schedule, sampling, bootstrapping and
  augmentation of its paper; nothing for CFBI and CFBI+, whose recipe is
  the shared one); `'cfbi'` keeps the shared recipe for any family. Either
  way `config.train.recipe` records it. Stage files call this last, so a
  family's paper values win over CFBI's stage values.

  Args:
    config: a training config.
    recipe: one of `RECIPES`.
    budget: also take the paper's steps and batch size (`BUDGET_FIELDS`);
      False where the config sets a small world's (`runlocal`, the
      synthetic benchmark).
    lr_scale: multiplies the recipe's learning rate (the synthetic
      benchmark's scaling of the papers' rates).
  """
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  if recipe not in RECIPES:
    raise ValueError(f'recipe must be one of {RECIPES}, got {recipe!r}')
  config.train.recipe = recipe
  if recipe != 'paper':
    return
  changes = dict(models.family_of(config.model).recipe)
  steps = changes.pop('train.steps', None)
  if not budget:
    for key in BUDGET_FIELDS:
      changes.pop(key, None)
    steps = None
  if 'optim.lr' in changes:
    changes['optim.lr'] *= lr_scale
  config.update_from_flattened_dict(changes)
  if steps is not None:
    set_steps(config, steps)
