"""User errors on the command line: one line, exit code 2, nothing lost.

* `evaluate.py` / `train.py` with an unknown `--config.<field>` name it and
  the closest valid field, from another working folder too;
* a model directory cut short (a truncated array file, a deleted one, a
  truncated `_METADATA`, a truncated `model_config.json`) gives a
  `CheckpointError` naming the folder and what to do; through
  `evaluate.py` it is one line with exit code 2 and no traceback (none
  from orbax's background reads either), the output folder untouched;
  `--verbose` shows the traceback;
* a write that fails without naming a file (a full disk) is raised again
  naming the output, and reported in one line.
"""

import errno
import glob
import os
import shutil
import subprocess
import sys

import pytest

from cfbi_jax import checkpoint
from cfbi_jax import cli
from cfbi_jax import outputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(REPO, 'models', 'tiny_cfbi_synthetic')


def command(script, *args, cwd):
  out = subprocess.run([sys.executable, os.path.join(REPO, script), *args],
                       cwd=cwd, capture_output=True, text=True, check=False,
                       env=dict(os.environ, PYTHONPATH=REPO))
  return out.returncode, out.stdout + out.stderr


def broken_copies(tmp_path):
  """{case: model directory}: the bundled model, damaged four ways."""
  def largest(directory):
    files = [f for f in glob.glob(os.path.join(directory, '*', 'model', '**'),
                                  recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)

  def truncate(path):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)

  cases = {
      'truncated array file': lambda d: truncate(largest(d)),
      'deleted array file': lambda d: os.remove(largest(d)),
      'truncated _METADATA': lambda d: truncate(
          glob.glob(os.path.join(d, '*', 'model', '_METADATA'))[0]),
      'truncated model_config.json': lambda d: truncate(
          os.path.join(d, checkpoint.CONFIG_FILE)),
  }
  out = {}
  for i, (case, damage) in enumerate(cases.items()):
    directory = str(tmp_path / f'model{i}')
    shutil.copytree(BUNDLED, directory)
    damage(directory)
    out[case] = directory
  return out


def test_damaged_checkpoints_are_named(tmp_path):
  for case, directory in broken_copies(tmp_path).items():
    with pytest.raises(checkpoint.CheckpointError) as raised:
      checkpoint.load_model(directory)
    message = str(raised.value)
    assert directory in message and 'again' in message, (case, message)


def test_evaluate_reports_a_damaged_checkpoint_in_one_line(tmp_path):
  directory = broken_copies(tmp_path)['truncated array file']
  output = tmp_path / 'out'
  output.mkdir()
  (output / 'keep.txt').write_text('earlier results')
  args = (f'--config.checkpoint={directory}', f'--config.output_dir={output}')
  rc, text = command('evaluate.py', *args, cwd=str(tmp_path))
  errors = [line for line in text.splitlines() if line.startswith('error:')]
  assert rc == cli.USER_EXIT_CODE, text[-2000:]
  assert 'Traceback' not in text, text[-2000:]
  assert len(errors) == 1 and directory in errors[0]
  assert 'truncated or missing' in errors[0]
  assert os.listdir(output) == ['keep.txt']
  rc, text = command('evaluate.py', *args, '--verbose', cwd=str(tmp_path))
  assert rc != 0 and 'Traceback' in text and 'CheckpointError' in text


@pytest.mark.parametrize('script', ['evaluate.py', 'train.py'])
def test_unknown_config_field_names_the_closest(script, tmp_path):
  field = 'checkpiont' if script == 'evaluate.py' else 'train.stpes'
  extra = [f'--workdir={tmp_path}'] if script == 'train.py' else []
  rc, text = command(script, f'--config.{field}=1', *extra,
                     cwd=str(tmp_path))  # Another folder than the repo.
  assert rc == cli.USER_EXIT_CODE and 'Traceback' not in text, text[-2000:]
  closest = 'checkpoint' if script == 'evaluate.py' else 'train.steps'
  assert (f'unknown config field --config.{field}; did you mean '
          f'--config.{closest}?') in text
  assert sum(line.startswith('error:') for line in text.splitlines()) == 1


def test_full_disk_names_the_output(tmp_path):
  path = str(tmp_path / 'frame.png')
  with pytest.raises(OSError) as raised:
    with outputs.atomic_path(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # No file.
  assert raised.value.filename == path and not os.listdir(tmp_path)
  assert cli.is_user_error(raised.value)
  line = cli.one_line(raised.value)
  assert path in line and 'No space left' in line and 'free space' in line
  assert not cli.is_user_error(RuntimeError('a bug keeps its traceback'))
