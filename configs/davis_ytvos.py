r"""Fine-tuning on DAVIS 2017 and YouTube-VOS mixed 1:2, N = 5 frames.

    python train.py --config=configs/davis_ytvos.py:model=cfbi \
        --config.data.root=youtube-vos --config.data.davis_root=DAVIS \
        --config.init.cfbi_checkpoint=runs/cfbi_ytvos/model \
        --workdir=runs/cfbi_davis_ytvos

The stage that gives the papers' DAVIS numbers: start from the YouTube-VOS
model (`init.cfbi_checkpoint`, or resume a workdir) and train on both
datasets. Arguments: `model=cfbi|cfbip|feelvos|videomatch`,
`backbone=resnet|mobilenet`, `recipe=paper|cfbi` (FEELVOS and VideoMatch
take their papers' recipes over the stage values by default), `runlocal`.

Stage values (beyond `configs/common.py::training_config`):
* the 'mixed' source: YouTube-VOS at `data.root` plus DAVIS at
  `data.davis_root` repeated 30 times per epoch [official DATASETS list and
  DATA_DAVIS_REPEAT = 30], about one DAVIS clip per two YouTube-VOS clips
  (60 x 30 = 1800 vs 3471 videos);
* mixed 1:2, lr 0.01, 50k steps, global batch 8, N = 5 current frames
  ("slightly better than N = 3") [paper: CFBI+ §4, fine-tuning on both].
"""

from configs import common


def get_config(arg=None):
  args = common.parse_training_arg(arg)
  config = common.training_config(args.model, args.runlocal, args.backbone)
  config.data.source = 'mixed'
  config.data.davis_repeat = 30
  if not args.runlocal:
    config.train.num_frames = 5
    common.set_steps(config, 50_000)
  else:
    config.data.davis_repeat = 2
  common.apply_recipe(config, args.recipe, budget=not args.runlocal)
  return config
