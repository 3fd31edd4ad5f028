"""Train CFBI / CFBI+.

    python train.py --config=configs/ytvos.py --config.data.root=ROOT --workdir=DIR

A thin entry point over `cfbi_jax.trainer.train`; see the config
files for the recipe and the README for multi-host launches. Errors in
the input or the config end in one line (`--verbose` for the traceback;
`cfbi_jax.cli`). The trained
model is also written to `DIR/model` for `evaluate.py --config.checkpoint`.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cfbi_jax import cli
from cfbi_jax import trainer

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.',
                               required=True)
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Multi-host run: call jax.distributed.initialize() first (coordinator '
    'and process ids come from the TPU / SLURM / Open MPI environment or '
    'the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID '
    'variables; see the README).')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 100,
    'With --distributed: seconds after which a process that stopped '
    'answering counts as dead and the others exit with an error.')


def main(argv, config_flag):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    from cfbi_jax import backend  # pylint: disable=g-import-not-at-top
    backend.initialize_distributed(_HEARTBEAT.value)
  config = config_flag.value
  if not config.data.root and config.data.source != 'tfds':
    raise ValueError('--config.data.root (the dataset folder) is required')
  result = trainer.train(config, _WORKDIR.value)
  if result['steps'] == config.train.steps:
    trainer.export_model(result, config.model,
                         os.path.join(_WORKDIR.value, 'model'))


def _run():
  default = cli.prepare_config_flag(sys.argv, 'config', 'configs/ytvos.py')
  config_flag = config_flags.DEFINE_config_file(
      'config', default, 'Training config file.', lock_config=True)
  app.run(lambda argv: main(argv, config_flag))


if __name__ == '__main__':
  cli.run(_run)
