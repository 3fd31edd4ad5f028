"""Evaluate CFBI / CFBI+: DAVIS, YouTube-VOS or your own video.

    python evaluate.py --config=configs/eval.py:variant=cfbi_resnet101,dataset=davis2017 \
        --config.checkpoint=DIR --config.data.root=ROOT --config.output_dir=OUT
    python evaluate.py --config=configs/video.py --config.video=PATH \
        --config.masks=PNG_OR_DIR --config.checkpoint=DIR --config.output_dir=OUT

A thin entry point over `cfbi_jax.evaluation.run`; see the config files.
Errors in the input or the config end in one line (`--verbose` for the
traceback; `cfbi_jax.cli`).
"""

import sys

from absl import app
from absl import logging
from ml_collections import config_flags

from cfbi_jax import cli
from cfbi_jax import evaluation


def _run():
  default = cli.prepare_config_flag(sys.argv, 'config', 'configs/eval.py')
  config = config_flags.DEFINE_config_file(
      'config', default, 'Evaluation config file.', lock_config=True)

  def main(argv):
    if len(argv) > 1:
      raise ValueError(f'unexpected arguments: {argv[1:]}')
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step.
    evaluation.run(config.value)

  app.run(main)


if __name__ == '__main__':
  cli.run(_run)
