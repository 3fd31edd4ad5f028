"""The command lines: `evaluate` and `train`.

`python evaluate.py` / `cfbi-evaluate` and `python train.py` / `cfbi-train`
(an installed package's console scripts, `pyproject.toml`) run these. Each
checks its config flag first (`cli.prepare_config_flag`: unknown fields
named, config files found from any folder), then parses absl flags and
runs `evaluation.run` or `trainer.train`, all under `cli.run` (user errors
in one line, exit code 2; `--verbose` for the traceback).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cfbi_jax import cli


_EVALUATE_USAGE = """Evaluate CFBI / CFBI+: DAVIS, YouTube-VOS or your own video.

    cfbi-evaluate      (the bundled model on 20 synthetic test videos)
    cfbi-evaluate --config=configs/eval.py:variant=cfbi_resnet101,dataset=davis2017 \\
        --config.checkpoint=DIR --config.data.root=ROOT --config.output_dir=OUT
    cfbi-evaluate --config=configs/video.py --config.video=PATH \\
        --config.masks=PNG_OR_DIR --config.checkpoint=DIR --config.output_dir=OUT
"""

_TRAIN_USAGE = """Train CFBI / CFBI+.

    cfbi-train --config=configs/ytvos.py:variant=cfbi \\
        --config.data.root=youtube-vos --workdir=runs/cfbi_ytvos
"""


def _usage(text: str) -> None:
  """absl prints the main module's docstring for --help; a console script
  has none, so it gets the command's usage."""
  main = sys.modules.get('__main__')
  if main is not None and not main.__doc__:
    main.__doc__ = text


def evaluate() -> None:
  """Evaluates a model (see `configs/eval.py` and `configs/video.py`)."""
  _usage(_EVALUATE_USAGE)

  def work():
    from cfbi_jax import evaluation  # pylint: disable=g-import-not-at-top
    default = cli.prepare_config_flag(sys.argv, 'config', 'configs/eval.py')
    config = config_flags.DEFINE_config_file(
        'config', default, 'Evaluation config file.', lock_config=True)

    def main(argv):
      if len(argv) > 1:
        raise ValueError(f'unexpected arguments: {argv[1:]}')
      logging.set_verbosity(logging.WARNING)  # Orbax logs every restore.
      evaluation.run(config.value)

    app.run(main)

  cli.run(work)


def train() -> None:
  """Trains a model (see `configs/ytvos.py` and the other training configs)."""
  _usage(_TRAIN_USAGE)

  def work():
    default = cli.prepare_config_flag(sys.argv, 'config', 'configs/ytvos.py')
    config = config_flags.DEFINE_config_file(
        'config', default, 'Training config file.', lock_config=True)
    workdir = flags.DEFINE_string('workdir', None, 'Run directory.',
                                  required=True)
    distributed = flags.DEFINE_bool(
        'distributed', False,
        'Multi-host run: join JAX\'s distributed runtime first (coordinator '
        'and process ids come from the TPU / SLURM / Open MPI environment '
        'or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID '
        'variables; see the README).')
    heartbeat = flags.DEFINE_integer(
        'heartbeat_timeout_s', 100,
        'With --distributed: seconds after which a process that stopped '
        'answering counts as dead and the others exit with an error.')

    def main(argv):
      if len(argv) > 1:
        raise ValueError(f'unexpected arguments: {argv[1:]}')
      logging.set_verbosity(logging.WARNING)
      if distributed.value:
        from cfbi_jax import backend  # pylint: disable=g-import-not-at-top
        backend.initialize_distributed(heartbeat.value)
      from cfbi_jax import trainer  # pylint: disable=g-import-not-at-top
      c = config.value
      if not c.data.root and c.data.source != 'tfds':
        raise ValueError('--config.data.root (the dataset folder) is '
                         'required')
      result = trainer.train(c, workdir.value)
      if result['steps'] == c.train.steps:
        trainer.export_model(result, c.model,
                             os.path.join(workdir.value, 'model'))

    app.run(main)

  cli.run(work)


def convert() -> None:
  """`cfbi-convert`: `python -m cfbi_jax.convert`."""
  from cfbi_jax import convert as converter  # pylint: disable=g-import-not-at-top
  cli.run(lambda: converter.main(sys.argv[1:]))


def export() -> None:
  """`cfbi-export`: `python -m cfbi_jax.export`."""
  from cfbi_jax import export as exporter  # pylint: disable=g-import-not-at-top
  cli.run(exporter.main)
