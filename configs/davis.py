r"""Training on DAVIS 2017 train only (CFBI, CFBI+, FEELVOS or VideoMatch).

    python train.py --config=configs/davis.py:model=cfbi \
        --config.data.root=DAVIS --workdir=runs/cfbi_davis

`--config.data.root` is the folder holding `ImageSets/2017/train.txt`.
Arguments: `model=cfbi|cfbip|feelvos|videomatch`,
`backbone=resnet|mobilenet`, `recipe=paper|cfbi`, `runlocal`.

Stage values: lr 0.006, 50k steps, global batch 6, N = 3: the DAVIS-only
setting of both papers [paper] (CFBI §4.1: 3 clips per GPU on 2 GPUs; CFBI+
§4: 6 clips on 2 GPUs, the same 3 per GPU). FEELVOS and VideoMatch take
their papers' recipes over these values (`recipe=cfbi` keeps them;
`configs/common.py::apply_recipe`). Everything else is
the shared recipe of `configs/common.py::training_config` (provenance
noted there), with the ramps (hard mining, own predictions) ending at half
the steps as in the main stage.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_training_arg(arg)
  config = common.training_config(args.model, args.runlocal, args.backbone)
  config.data.source = 'davis'
  if not args.runlocal:
    config.optim.lr = 0.006  # [paper]
    config.train.batch_size = 6  # [paper]
    common.set_steps(config, 50_000)  # [paper]
  common.apply_recipe(config, args.recipe, budget=not args.runlocal)
  return config
