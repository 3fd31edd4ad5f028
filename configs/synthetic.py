"""Training on the synthetic benchmark (`cfbi_jax.synthetic`): the recipe of
the bundled model `models/tiny_cfbi_synthetic`.

    python train.py --config=configs/synthetic.py --workdir=runs/synthetic

The training set (`synthetic_videos` videos of seed `synthetic_seed`, 1)
is drawn into `--config.data.root` (default `runs/synthetic_data`) on
first use. Seed 1 is for training only: `python evaluate.py` scores
held-out videos of seed 2 (`configs/eval.py`), the ablations
(`bench/ablate.py`) use seeds 3 and up for their test sets.

Arguments after the colon: `model=cfbi|cfbip|feelvos|videomatch` (its
tiny variant, `tiny_<model>`, about 0.4-0.5M parameters; the default is
CFBI), or `preset=` any variant of `cfbi_jax.models`; `steps=`,
`ablation=` one of `ABLATIONS` (below; `bench/ablate.py` runs them all;
CFBI only) and `recipe=` (default: `paper` for a family with a paper
recipe of its own, FEELVOS and VideoMatch; `scratch` for CFBI and CFBI+):

* `scratch` (default, the bundled model): what a small model trained from
  scratch needs, and what the papers never had to do (they start from an
  ImageNet/COCO DeepLab): GroupNorm in the DeepLab (a frozen BN at its
  initial values is no normalisation at all), AdamW at lr 0.002, and
  instance-attention gates that start at 1 (`init.zero_attention_gates`);
  3,700 steps. The architecture is otherwise the papers'.
* `sgd`: the papers' optimizer (SGD, momentum 0.9) at lr 0.05, frozen BN,
  random gates, 3,400 steps: the recipe of the first bundled model and of
  the first ablation table (`docs/ablations_sgd.md`).
* `paper`: the family's own paper recipe (`Family.recipe`:
  `models/feelvos.py`, `models/videomatch.py`; for CFBI and CFBI+ the
  shared recipe) with its learning rate x5 (`PAPER_LR_SCALE`, as `sgd`
  scales CFBI's 0.01 to 0.05; CFBI's is then 0.05), this benchmark's batch
  and steps (3,700, all families alike) and a GroupNorm DeepLab. The
  recipe of `bench/compare_models.py`.
* `cfbi`: `scratch`, CFBI's recipe on this benchmark, for any family.

The rest is the shared recipe of `configs/common.py::training_config` with
the sizes of a small world: 120x160 videos (short edge 120, crop 97), at
most 3 objects, batch 2 of N = 3 frames, 100 warm-up steps, hard-pixel
mining and own predictions from half the run as in the papers' main
stage. The input pipeline loads one clip at a time (`num_parallel_calls`
1, `prefetch` 2): its small clips take a few ms, and more loader threads
only compete with the train step for the two cores (0.49 s per step with
tf.data's autotuning, 0.44 s without). The bundled model is this config
as is (see `models/README.md` for its wall time on 2 CPU cores and its
scores).

The ablations are plain config fields, usable with any config file:
`config.model.use_background`, `use_matching_bias`, `use_attention`,
`head`, `local_windows`, `config.data.balanced_crop` and
`config.train.own_predictions_from_step`; `ABLATIONS` names the settings
of the papers' tables.
"""

from configs import common


def _single_window(config):
  # The largest window of each scale (CFBI Table 4: one local window).
  config.model.local_windows = tuple(
      (w[-1],) for w in config.model.local_windows
  )


def _gt_masks(config):
  # Never switch to the model's own previous predictions.
  config.train.own_predictions_from_step = config.train.steps + 1


def _set(path, value):
  return lambda config: config.update_from_flattened_dict({path: value})


# name -> (what it removes, how). CFBI Table 3 (bias) and Table 4 (the rest).
ABLATIONS = {
    'none': ('full CFBI', lambda config: None),
    'no_background': (
        'no background matching / attention / embedding',
        _set('model.use_background', False),
    ),
    'no_bias': (
        'no foreground/background offsets in the distance',
        _set('model.use_matching_bias', False),
    ),
    'single_window': ('one local window (the largest)', _single_window),
    'no_attention': (
        'no instance-level attention',
        _set('model.use_attention', False),
    ),
    'feelvos_head': (
        "FEELVOS's segmentation head, not the ensembler",
        _set('model.head', 'feelvos'),
    ),
    'normal_crop': (
        'normal instead of balanced random crop',
        _set('data.balanced_crop', False),
    ),
    'gt_masks': (
        'ground-truth previous masks throughout (no sequential '
        'training on own predictions)',
        _gt_masks,
    ),
}


def _scratch(config):
  config.model.backbone_norm = 'group_norm'
  config.init.zero_attention_gates = True
  config.optim.name = 'adamw'
  config.optim.lr = 0.002
  return 3700  # Steps: the whole command fits 40 minutes on 2 CPU cores.


def _sgd(config):
  config.optim.lr = 0.05
  return 3400


# The papers' learning rates on this benchmark: x5, as `sgd` takes CFBI's
# 0.01 to 0.05 (a small model, batch 2, a few thousand steps).
PAPER_LR_SCALE = 5.0


def _paper(config):
  # A GroupNorm DeepLab, as `scratch` (the shared pretrained DeepLab of
  # `bench/pretrain_backbone.py` is one), and the family's paper recipe
  # with its lr scaled; the shared recipe for CFBI and CFBI+. Steps and
  # batch stay this benchmark's.
  config.model.backbone_norm = 'group_norm'
  common.apply_recipe(config, 'paper', budget=False, lr_scale=PAPER_LR_SCALE)
  if not _own_recipe(config):
    config.optim.lr = 0.05  # CFBI's recipe: as `sgd`.
  return 3700


def _own_recipe(config) -> bool:
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  return bool(models.family_of(config.model).recipe)


# name -> function that sets the recipe and returns its default steps.
# `cfbi` is `scratch`: CFBI's recipe on this benchmark.
RECIPES = {'scratch': _scratch, 'sgd': _sgd, 'paper': _paper, 'cfbi': _scratch}


def get_config(arg=None):
  args = common.parse_arg(
      arg, model='cfbi', preset='', steps=0, ablation='none', recipe=''
  )
  if args.ablation not in ABLATIONS:
    raise ValueError(
        f'unknown ablation {args.ablation!r}; expected one of '
        f'{sorted(ABLATIONS)}'
    )
  if args.recipe and args.recipe not in RECIPES:
    raise ValueError(
        f'unknown recipe {args.recipe!r}; expected one of ' f'{sorted(RECIPES)}'
    )
  config = common.training_config('cfbi', runlocal=False)
  preset = args.preset or common.training_preset(args.model, 'resnet', True)
  config.model = common.training_model_config(preset)
  config.train.remat = common.default_remat(preset)
  config.train.own_predictions = common.uses_own_predictions(config.model)
  common.one_global_chunk(config.model)
  config.data.source = 'synthetic'
  config.data.root = 'runs/synthetic_data'
  config.data.synthetic_videos = 200
  config.data.synthetic_seed = 1
  config.data.short_edge = 120
  config.data.crop_size = 97
  config.data.min_object_pixels = 20
  config.data.reference_min_pixels = 50
  config.data.max_objects = 3
  config.data.num_parallel_calls = 1
  config.data.prefetch = 2
  config.train.batch_size = 2
  config.train.num_frames = 3
  config.train.log_every = 25
  config.train.image_every = 250
  config.train.checkpoint_every = 250
  config.optim.warmup_steps = 100
  # The default: the family's paper recipe where it has one of its own
  # (FEELVOS, VideoMatch), else CFBI's recipe here (`scratch`).
  recipe = args.recipe or ('paper' if _own_recipe(config) else 'scratch')
  if recipe == 'cfbi':
    recipe = 'scratch'
  config.train.recipe = recipe
  steps = RECIPES[recipe](config)
  common.set_steps(config, args.steps or steps)
  ABLATIONS[args.ablation][1](config)  # After set_steps (gt_masks).
  return config
