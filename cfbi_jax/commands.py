"""The command lines: `evaluate` and `train`.

`python evaluate.py` / `cfbi-evaluate` and `python train.py` / `cfbi-train`
(an installed package's console scripts, `pyproject.toml`) run these. Each
checks its config flag first (`cli.prepare_config_flag`: unknown fields
named, config files found from any folder), then parses absl flags and
runs `evaluation.run` or `trainer.train`, all under `cli.run` (user errors
in one line, exit code 2; `--verbose` for the traceback).
"""

import sys
from typing import Any, Callable, Dict

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cfbi_jax import cli

_EVALUATE_USAGE = """Evaluate a model directory (any model family) on DAVIS,
YouTube-VOS or your own video.

    cfbi-evaluate      (the bundled model on 20 synthetic test videos)
    cfbi-evaluate --config=configs/eval.py:variant=cfbi_resnet101,dataset=davis2017 \\
        --config.checkpoint=DIR --config.data.root=ROOT --config.output_dir=OUT
    cfbi-evaluate --config=configs/video.py --config.video=PATH \\
        --config.masks=PNG_OR_DIR --config.checkpoint=DIR --config.output_dir=OUT
"""

_TRAIN_USAGE = """Train a model: `model=NAME` after the config file, one of
`cfbi_jax.models.training_models()` (cfbi, cfbip, feelvos, videomatch and
any family you register).

    cfbi-train --config=configs/ytvos.py:model=cfbi \\
        --config.data.root=youtube-vos --workdir=runs/cfbi_ytvos
"""


def _usage(text: str) -> None:
  """absl prints the main module's docstring for --help; a console script
  has none, so it gets the command's usage."""
  main = sys.modules.get('__main__')
  if main is not None and not main.__doc__:
    main.__doc__ = text


def _config_command(
    usage: str,
    config_file: str,
    config_help: str,
    body: Callable[[Any, Dict[str, Any]], None],
    define_flags: Callable[[], Dict[str, Any]] = dict,
    on_interrupt: str = 'nothing unfinished is kept',
) -> None:
  """Runs a command whose work is `body(config, flag values)`.

  Args:
    usage: the `--help` text of a console script (`_usage`).
    config_file: the default config file, relative to the repository.
    config_help: the config flag's help.
    body: the work, given the config and `{name: value}` of the flags
      `define_flags` returned.
    define_flags: defines the command's other absl flags; returns them by
      name.
    on_interrupt: what is kept and how to resume (`cli.run`).
  """
  _usage(usage)

  def work():
    default = cli.prepare_config_flag(sys.argv, 'config', config_file)
    config = config_flags.DEFINE_config_file(
        'config', default, config_help, lock_config=True
    )
    extra = define_flags()

    def main(argv):
      if len(argv) > 1:
        raise ValueError(f'unexpected arguments: {argv[1:]}')
      logging.set_verbosity(logging.WARNING)  # Orbax logs every restore.
      body(config.value, {name: flag.value for name, flag in extra.items()})

    try:
      app.run(main)
    except SystemExit as done:
      # absl ends --help with exit code 1; asking for help is no error.
      if done.code == 1 and set(sys.argv[1:]) & _HELP_FLAGS:
        raise SystemExit(0) from None
      raise

  cli.run(work, on_interrupt=on_interrupt)


# absl's help flags.
_HELP_FLAGS = {
    '--help',
    '-help',
    '-h',
    '-?',
    '--helpshort',
    '--helpfull',
    '--helpxml',
}

# Modules of the `[train]` extra (pyproject.toml) that training imports.
_TRAIN_EXTRA_MODULES = (
    'tensorflow',
    'tensorflow_datasets',
    'clu',
    'tensorboard',
)


def _import_trainer():
  """`cfbi_jax.trainer`, or a one-line error naming the missing extra
  (checked before any work: the input pipeline is imported up front)."""
  try:
    from cfbi_jax import input_pipeline  # pylint: disable=g-import-not-at-top,unused-import
    from cfbi_jax import trainer  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as error:
    if (error.name or '').split('.')[0] not in _TRAIN_EXTRA_MODULES:
      raise
    raise ValueError(
        f'cfbi-train needs the training extras ({error.name} is not '
        'installed): pip install "cfbi-jax[train]"'
    ) from error
  return trainer


def _distributed_flags() -> Dict[str, Any]:
  """`--distributed` and `--heartbeat_timeout_s`, of train and evaluate."""
  return {
      'distributed': flags.DEFINE_bool(
          'distributed',
          False,
          "Multi-host run: join JAX's distributed runtime first "
          '(coordinator and process ids come from the TPU / SLURM / Open '
          'MPI environment or the JAX_COORDINATOR_ADDRESS, '
          'JAX_NUM_PROCESSES, JAX_PROCESS_ID variables; see the README).',
      ),
      'heartbeat_timeout_s': flags.DEFINE_integer(
          'heartbeat_timeout_s',
          100,
          'With --distributed: seconds after which a process that stopped '
          'answering counts as dead and the others exit with an error.',
      ),
  }


def _join(values: Dict[str, Any]) -> None:
  """Joins the distributed runtime when `--distributed` asks for it."""
  if values['distributed']:
    from cfbi_jax import backend  # pylint: disable=g-import-not-at-top

    backend.initialize_distributed(values['heartbeat_timeout_s'])


def evaluate() -> None:
  """Evaluates a model (see `configs/eval.py` and `configs/video.py`)."""

  def body(config, values):
    _join(values)
    from cfbi_jax import evaluation  # pylint: disable=g-import-not-at-top

    evaluation.run(config)

  _config_command(
      _EVALUATE_USAGE,
      'configs/eval.py',
      'Evaluation config file.',
      body,
      _distributed_flags,
      on_interrupt='the sequences finished so far are kept in the output '
      'folder; the same command segments the rest',
  )


def train() -> None:
  """Trains a model (see `configs/ytvos.py` and the other training configs)."""

  def define_flags():
    return {
        'workdir': flags.DEFINE_string(
            'workdir', None, 'Run directory.', required=True
        ),
        **_distributed_flags(),
    }

  def body(config, values):
    _join(values)
    trainer = _import_trainer()
    if not config.data.root and config.data.source != 'tfds':
      raise ValueError('--config.data.root (the dataset folder) is required')
    result = trainer.train_and_write(config, values['workdir'])
    if result['terminated']:  # SIGTERM: the step was saved, then stopped.
      raise cli.Terminated()

  _config_command(
      _TRAIN_USAGE,
      'configs/ytvos.py',
      'Training config file.',
      body,
      define_flags,
      on_interrupt='the checkpoints written so far are kept '
      'in the workdir; the same command resumes from the last one',
  )


def convert() -> None:
  """`cfbi-convert`: `python -m cfbi_jax.convert`."""
  from cfbi_jax import convert as converter  # pylint: disable=g-import-not-at-top

  cli.run(lambda: converter.main(sys.argv[1:]))


def export() -> None:
  """`cfbi-export`: `python -m cfbi_jax.inference.export`."""
  from cfbi_jax.inference import export as exporter  # pylint: disable=g-import-not-at-top

  cli.run(exporter.main)
