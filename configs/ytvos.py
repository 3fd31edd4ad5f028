"""CFBI / CFBI+ training on YouTube-VOS (the papers' main stage).

    python train.py --config=configs/ytvos.py:variant=cfbi \
        --config.data.root=youtube-vos --workdir=runs/cfbi_ytvos

Arguments after the colon: `variant=cfbi|cfbip|mobilenet` and `runlocal`
(a tiny model, crop 65, batch 2, 20 steps: a smoke run on any machine).
`--config.data.root` is the folder holding `train/meta.json`.

The recipe and the provenance of each value ([paper] / [official] / [ours])
are in `configs/common.py::training_config`; this stage keeps it as is:
lr 0.01, 100k steps, global batch 8, N = 3 current frames, crop 465,
random scale 1.0-1.3, flip, balanced crop, bootstrapped CE of the hardest
15% pixels ramped over the first half, own predictions from the middle.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, variant='cfbi', runlocal=False)
  config = common.training_config(args.variant, args.runlocal)
  config.data.source = 'youtubevos'
  return config
