r"""Training on YouTube-VOS (the papers' main stage) of CFBI, CFBI+, FEELVOS
or VideoMatch.

    python train.py --config=configs/ytvos.py:model=cfbi \
        --config.data.root=youtube-vos --workdir=runs/cfbi_ytvos

Arguments after the colon: `model=cfbi|cfbip|feelvos|videomatch`,
`backbone=resnet|mobilenet`, `recipe=paper|cfbi` (default `paper`: each
family trains by its paper, `Family.recipe`, FEELVOS's and VideoMatch's
over the values below; `cfbi`: CFBI's shared recipe for any family) and
`runlocal`
(a tiny model, crop 65, batch 2, 20 steps: a smoke run on any machine);
the older `variant=cfbi|cfbip|mobilenet` still works.
`--config.data.root` is the folder holding `train/meta.json`.

The recipe and the provenance of each value ([paper] / [official] / [ours])
are in `configs/common.py::training_config`; this stage keeps it as is:
lr 0.01, 100k steps, global batch 8, N = 3 current frames, crop 465,
random scale 1.0-1.3, flip, balanced crop, bootstrapped CE of the hardest
15% pixels ramped over the first half, own predictions from the middle.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_training_arg(arg)
  config = common.training_config(args.model, args.runlocal, args.backbone)
  config.data.source = 'youtubevos'
  common.apply_recipe(config, args.recipe, budget=not args.runlocal)
  return config
