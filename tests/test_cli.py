"""User errors on the command line: one line, exit code 2, nothing lost.

* `evaluate.py` / `train.py` with an unknown `--config.<field>` name it and
  the closest valid field, from another working folder too;
* a model directory cut short (a truncated array file, a deleted one, a
  truncated `_METADATA`, a truncated `model_config.json`) or of another
  version gives a `CheckpointError` naming the folder and what to do; through
  `evaluate.py` it is one line with exit code 2 and no traceback (none
  from orbax's background reads either), the output folder untouched;
  `--verbose` shows the traceback;
* a write that fails without naming a file (a full disk) is raised again
  naming the output, and reported in one line; through `evaluate.py`
  under a file-size limit too, with exit code 2 and no half-written file;
* asyncio's 'Event loop is closed', raised on other threads by reads still
  in flight after a checkpoint read failed, prints nothing at any moment
  (it raced the one-line report); other unraisable errors still print.
"""

import errno
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from cfbi_jax import atomic_files
from cfbi_jax import checkpoint
from cfbi_jax import cli
from tests import synthetic_clips
from tests import synthetic_layouts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(REPO, 'models', 'tiny_cfbi_synthetic')


def command(script, *args, cwd):
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, script), *args],
      cwd=cwd,
      capture_output=True,
      text=True,
      check=False,
      env=dict(os.environ, PYTHONPATH=REPO),
  )
  return out.returncode, out.stdout + out.stderr


def broken_copies(tmp_path):
  """{case: model directory}: the bundled model, damaged four ways."""

  def largest(directory):
    files = [
        f
        for f in glob.glob(
            os.path.join(directory, '*', 'model', '**'), recursive=True
        )
        if os.path.isfile(f)
    ]
    return max(files, key=os.path.getsize)

  def truncate(path):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)

  cases = {
      'truncated array file': lambda d: truncate(largest(d)),
      'deleted array file': lambda d: os.remove(largest(d)),
      'truncated _METADATA': lambda d: truncate(
          glob.glob(os.path.join(d, '*', 'model', '_METADATA'))[0]
      ),
      'truncated model_config.json': lambda d: truncate(
          os.path.join(d, checkpoint.CONFIG_FILE)
      ),
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
  # A model directory of another version (a field this one does not know).
  newer = str(tmp_path / 'newer')
  shutil.copytree(BUNDLED, newer)
  path = os.path.join(newer, checkpoint.CONFIG_FILE)
  with open(path, encoding='utf-8') as f:
    stored = json.load(f)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(dict(stored, field_of_a_later_version=1), f)
  with pytest.raises(
      checkpoint.CheckpointError,
      match='field_of_a_later_version.*another version',
  ):
    checkpoint.load_model(newer)


@pytest.mark.parametrize(
    'case',
    [
        'truncated array file',
        'deleted array file',
        'truncated _METADATA',
        'truncated model_config.json',
    ],
)
def test_evaluate_reports_a_damaged_checkpoint_in_one_line(case, tmp_path):
  directory = broken_copies(tmp_path)[case]
  output = tmp_path / 'out'
  output.mkdir()
  args = (f'--config.checkpoint={directory}', f'--config.output_dir={output}')
  rc, text = command('evaluate.py', *args, cwd=str(tmp_path))
  errors = [line for line in text.splitlines() if line.startswith('error:')]
  assert rc == cli.USER_EXIT_CODE, text[-2000:]
  assert 'Traceback' not in text, text[-2000:]
  assert len(errors) == 1 and directory in errors[0]
  assert 'truncated' in errors[0] or 'incomplete' in errors[0]
  assert not os.listdir(output)  # Refused before anything is written.
  if case == 'truncated array file':
    rc, text = command('evaluate.py', *args, '--verbose', cwd=str(tmp_path))
    assert rc != 0 and 'Traceback' in text and 'CheckpointError' in text


def test_bundled_model_by_name_from_any_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for name in ('tiny_cfbi_synthetic', 'models/tiny_cfbi_synthetic'):
    assert os.path.samefile(checkpoint.resolve_model_dir(name), BUNDLED)
  assert checkpoint.read_model_config('tiny_cfbi_synthetic').variant == (
      'tiny_cfbi'
  )
  with pytest.raises(
      FileNotFoundError,
      match=(
          'model folder elsewhere/tiny_cfbi_synthetic does not exist: .*bundled '
          r'model by name \(tiny_cfbi_synthetic\)'
      ),
  ):
    checkpoint.resolve_model_dir('elsewhere/tiny_cfbi_synthetic')


def test_a_missing_checkpoint_folder_is_named_missing(tmp_path):
  output = tmp_path / 'out'
  rc, text = command(
      'evaluate.py',
      '--config.checkpoint=/no/such/dir',
      f'--config.output_dir={output}',
      cwd=str(tmp_path),
  )
  errors = [line for line in text.splitlines() if line.startswith('error:')]
  assert rc == cli.USER_EXIT_CODE and 'Traceback' not in text, text[-2000:]
  assert errors == [
      'error: model folder /no/such/dir does not exist: give a '
      'folder written by cfbi-convert or train.py, or a bundled '
      'model by name (tiny_cfbi_synthetic)'
  ]


@pytest.mark.parametrize('script', ['evaluate.py', 'train.py'])
def test_unknown_config_field_names_the_closest(script, tmp_path):
  field = 'checkpiont' if script == 'evaluate.py' else 'train.stpes'
  extra = [f'--workdir={tmp_path}'] if script == 'train.py' else []
  rc, text = command(
      script, f'--config.{field}=1', *extra, cwd=str(tmp_path)
  )  # Another folder than the repo.
  assert rc == cli.USER_EXIT_CODE and 'Traceback' not in text, text[-2000:]
  closest = 'checkpoint' if script == 'evaluate.py' else 'train.steps'
  assert (
      f'unknown config field --config.{field}; did you mean '
      f'--config.{closest}?'
  ) in text
  assert sum(line.startswith('error:') for line in text.splitlines()) == 1


def test_full_disk_names_the_output(tmp_path):
  path = str(tmp_path / 'frame.png')
  with pytest.raises(OSError) as raised:
    with atomic_files.atomic_path(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # No file.
  assert raised.value.filename == path and not os.listdir(tmp_path)
  assert cli.is_user_error(raised.value)
  line = cli.one_line(raised.value)
  assert path in line and 'No space left' in line and 'free space' in line
  assert not cli.is_user_error(RuntimeError('a bug keeps its traceback'))


def test_evaluate_on_a_full_disk_names_the_file(tmp_path):
  """A file-size limit stands in for a full disk: the first output write
  that crosses it fails, and evaluate.py names that file in one line."""
  frames, labels = synthetic_clips.two_squares(num_frames=3)
  folder = tmp_path / 'frames'
  folder.mkdir()
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f'{t:05d}.png')
  Image.fromarray(labels[0]).save(tmp_path / 'first.png')
  output = tmp_path / 'out'

  # The limit is set by a shell (no preexec_fn: forking this multithreaded
  # process to run Python in the child can deadlock): 3 blocks of 512
  # bytes, with SIGXFSZ ignored so that a write gets EFBIG instead.
  command_line = ' '.join(
      shlex.quote(a)
      for a in [
          sys.executable,
          os.path.join(REPO, 'evaluate.py'),
          '--config=configs/video.py',
          f'--config.video={folder}',
          f'--config.masks={tmp_path / "first.png"}',
          f'--config.checkpoint={BUNDLED}',
          f'--config.output_dir={output}',
          '--config.compilation_cache_dir=',
      ]
  )
  out = subprocess.run(
      ['sh', '-c', f"ulimit -f 3; trap '' XFSZ; exec {command_line}"],
      cwd=str(tmp_path),
      capture_output=True,
      text=True,
      check=False,
      env=dict(os.environ, PYTHONPATH=REPO),
  )
  text = out.stdout + out.stderr
  errors = [line for line in text.splitlines() if line.startswith('error:')]
  assert out.returncode == cli.USER_EXIT_CODE, text[-2000:]
  assert 'Traceback' not in text and len(errors) == 1, text[-2000:]
  assert str(output) in errors[0] and 'File too large' in errors[0]
  assert 'free space' in errors[0]
  # Outputs are atomic: no half-written file is left behind.
  written = [f for _, _, files in os.walk(output) for f in files]
  assert written and not [f for f in written if '.tmp' in f], written


_STRAGGLERS = r"""
import sys
from cfbi_jax import cli

class Straggler:
  def __init__(self, message):
    self.message = message
  def __del__(self):  # Raised here, it goes to sys.unraisablehook.
    raise RuntimeError(self.message)

def main():
  Straggler('Event loop is closed')   # Before the error: the race.
  Straggler('a bug of another kind')
  raise ValueError('bad input')

cli.run(main, [])
"""


def test_closed_event_loop_noise_never_prints(tmp_path):
  out = subprocess.run(
      [sys.executable, '-c', _STRAGGLERS],
      cwd=str(tmp_path),
      capture_output=True,
      text=True,
      check=False,
      env=dict(os.environ, PYTHONPATH=REPO),
  )
  text = out.stdout + out.stderr
  assert out.returncode == cli.USER_EXIT_CODE, text
  assert 'Event loop is closed' not in text
  assert text.count('Traceback') == 1 and 'a bug of another kind' in text
  assert 'error: bad input' in text


def test_an_unwritable_output_folder_is_named_before_model_work(tmp_path):
  if os.geteuid() == 0:
    # root writes anywhere: a regular file stands in for the folder.
    output = tmp_path / 'a_file'
    output.write_text('')
  else:
    output = tmp_path / 'read_only'
    output.mkdir()
    output.chmod(0o500)
  rc, text = command(
      'evaluate.py', f'--config.output_dir={output}', cwd=str(tmp_path)
  )
  errors = [line for line in text.splitlines() if line.startswith('error:')]
  assert rc == cli.USER_EXIT_CODE and 'Traceback' not in text, text[-2000:]
  assert len(errors) == 1, text[-2000:]
  assert errors[0].startswith(
      f'error: cannot write to the output folder ' f'{output} ('
  )
  assert 'tmp' not in errors[0].split(str(output))[1]


def test_convert_of_a_missing_file_is_one_line(tmp_path):
  done = subprocess.run(
      [
          sys.executable,
          '-m',
          'cfbi_jax.convert',
          '--variant',
          'cfbi_resnet101',
          '--src',
          'missing.pth',
          '--dst',
          str(tmp_path / 'model'),
      ],
      cwd=str(tmp_path),
      capture_output=True,
      text=True,
      check=False,
      env=dict(os.environ, PYTHONPATH=REPO),
  )
  rc, text = done.returncode, done.stdout + done.stderr
  errors = [line for line in text.splitlines() if line.startswith('error:')]
  assert rc == cli.USER_EXIT_CODE and 'Traceback' not in text, text[-2000:]
  assert errors == [
      'error: missing.pth: no such weights file (give the '
      'official .pth, or a state dict saved as .npz)'
  ]
  assert not os.path.exists(tmp_path / 'model')


@pytest.mark.parametrize(
    'signum,code,word',
    [(2, 130, 'interrupted (Ctrl-C)'), (15, 143, 'terminated (SIGTERM)')],
)
def test_a_signal_during_evaluation_is_one_line(signum, code, word, tmp_path):
  """A real SIGINT / SIGTERM once segmenting has begun: one line saying
  what is kept, exit 128 + signal, and no sequence left looking finished
  without all its outputs; the same command then completes the run.

  No timing: a `sitecustomize` on the child's path makes it send itself
  the signal as the second video starts, after the first is written, however
  fast or loaded the machine. It also restores SIGINT's default handling,
  which a child of a shell's background job inherits as ignored.
  """
  root, out = str(tmp_path / 'DAVIS'), str(tmp_path / 'out')
  synthetic_layouts.write_davis(
      root, num_videos=3, num_frames=12, size=(33, 49)
  )
  hook = tmp_path / 'hook'
  hook.mkdir()
  (hook / 'sitecustomize.py').write_text(f"""
import os, signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from cfbi_jax import evaluation
_segment = evaluation.segment_sequence
def segment_sequence(propagator, seq, config, **kwargs):
  if seq.name == 'video1':
    os.kill(os.getpid(), {int(signum)})
    time.sleep(600)
  return _segment(propagator, seq, config, **kwargs)
evaluation.segment_sequence = segment_sequence
""")
  args = [
      sys.executable,
      os.path.join(REPO, 'evaluate.py'),
  ] + synthetic_layouts.evaluate_args(root, out)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), REPO]))
  first = subprocess.run(
      args,
      cwd=str(tmp_path),
      env=env,
      text=True,
      capture_output=True,
      check=False,
      timeout=600,
  )
  stderr = first.stderr
  assert first.returncode == code, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  assert re.search(r'^1/3 video0: 12 frames', stderr, re.M), stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert last == (
      f'{word}: the sequences finished so far are kept in the '
      'output folder; the same command segments the rest'
  )
  finished = sorted(os.listdir(os.path.join(out, '.inputs')))
  assert finished == ['video0.json'], finished
  assert len(os.listdir(os.path.join(out, 'video0'))) == 12
  env = dict(os.environ, PYTHONPATH=REPO)
  done = subprocess.run(
      args,
      cwd=str(tmp_path),
      env=env,
      text=True,
      capture_output=True,
      check=False,
      timeout=600,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  for seq in ('video0', 'video1', 'video2'):
    assert len(os.listdir(os.path.join(out, seq))) == 12
  # stderr is a pipe, not a terminal: one line per sequence, no bars.
  assert '\r' not in done.stderr and 'it/s' not in done.stderr
  assert re.search(
      r'^3/3 video2: 12 frames, [0-9.]+ frames/s$', done.stderr, re.M
  ), done.stderr[-2000:]
