"""What every command line shares: user errors as one line, exit code 2.

`train.py`, `evaluate.py`, `python -m cfbi_jax.convert` and
`python -m cfbi_jax.inference.export` run their work through `run`:

* an error of the user's making (bad data, mask, config field or value,
  unreadable or mismatched checkpoint, unwritable output, full disk) ends
  the command with `error: <what is wrong, the file or field, what to do>`
  on stderr and exit code 2, without a traceback. The process ends there
  (`os._exit`): outputs are written atomically, so nothing half-written
  is left, and background threads print nothing more;
* `--verbose` on the command line (or `CFBI_VERBOSE=1`) shows the
  traceback instead;
* Ctrl-C (SIGINT) or SIGTERM ends it with one line on stderr, saying what
  is kept and how to resume (the command's `on_interrupt`), and exit code
  130 or 143 (128 + the signal); what was being written is never left
  looking finished (atomic outputs; a sequence counts as finished only
  once its inputs' fingerprint is written after its outputs);
* `prepare_config_flag` checks `--config.<field>` overrides against the
  config file before absl parses them, and names an unknown field with the
  closest valid one (ml_collections would print three chained
  tracebacks); a relative config path is also found from the repository,
  so the entry points run from any folder.

What counts as a user error: `ValueError` (our own checks raise it and its
subclasses, `datasets.DatasetError`, `CheckpointError`...), a missing file
or folder, a permission refusal, and an `OSError` while writing (full disk,
file too large). Anything else is a bug and keeps its traceback.
"""

import difflib
import errno
import importlib.util
import os
import signal
import sys
import threading
from typing import Callable, List, Optional, Sequence

from cfbi_jax import project_files

VERBOSE_FLAG = '--verbose'
USER_EXIT_CODE = 2
_WRITE_ERRNOS = (
    errno.ENOSPC,
    errno.EFBIG,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
)


def is_user_error(error: BaseException) -> bool:
  """True for the errors `run` reports in one line (module docstring)."""
  if isinstance(
      error,
      (
          ValueError,
          FileNotFoundError,
          NotADirectoryError,
          IsADirectoryError,
          PermissionError,
      ),
  ):
    return True
  return isinstance(error, OSError) and error.errno in _WRITE_ERRNOS


def one_line(error: BaseException) -> str:
  """The error's message on one line, with the file named when known."""
  text = ' '.join(str(error).split()) or type(error).__name__
  if isinstance(error, OSError) and error.errno is not None:
    text = os.strerror(error.errno)
    if error.filename:
      text = f'{error.filename}: {text}'
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      text += ' (free space there or choose another output folder)'
  return text


def _config_overrides(argv: Sequence[str], flag: str) -> List[str]:
  """Field paths given as `--<flag>.a.b=v` or `--<flag>.a.b v`."""
  prefix = f'--{flag}.'
  return [
      arg[len(prefix) :].split('=', 1)[0]
      for arg in argv
      if arg.startswith(prefix)
  ]


def load_config_file(spec: str):
  """`path.py[:arg]` -> the file's `get_config(arg)` (as config_flags does).

  Raises:
    FileNotFoundError: no such config file.
  """
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'config file {path} not found (give a path to '
        'a .py file with get_config(), e.g. '
        'configs/eval.py)'
    )
  project_files.make_configs_importable()
  module_spec = importlib.util.spec_from_file_location('_cfbi_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _field_paths(config, prefix: str = '') -> List[str]:
  paths = []
  for key, value in config.items():
    path = prefix + key
    paths.append(path)
    if hasattr(value, 'items'):
      paths.extend(_field_paths(value, path + '.'))
  return paths


def prepare_config_flag(argv: List[str], flag: str, default_file: str) -> str:
  """Checks `--<flag>` and its overrides before absl parses them.

  A relative config path that is not found from the working folder but is
  a project file (`project_files.find`: the checkout's or the installed
  copy) is rewritten (in `argv`) to its absolute path, so the entry points
  run from any folder.

  Args:
    argv: the command line (changed in place).
    flag: the config flag's name (`config`).
    default_file: the flag's default config file, relative to the
      repository (`configs/eval.py`).

  Returns:
    The default config file as an absolute path.

  Raises:
    FileNotFoundError: the config file does not exist.
    ValueError: an override names an unknown field (with the closest one).
  """
  default = spec = project_files.find(default_file)
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{flag}='):
      spec = arg.split('=', 1)[1]
      path, colon, rest = spec.partition(':')
      found = project_files.find(path)
      if not os.path.isfile(path) and os.path.isfile(found):
        spec = f'{found}{colon}{rest}'
        argv[i] = f'--{flag}={spec}'
  fields = _config_overrides(argv, flag)
  config = load_config_file(spec)  # Also checks that the file exists.
  known = _field_paths(config)
  for field in fields:
    if field not in known:
      close = difflib.get_close_matches(field, known, n=1, cutoff=0.5)
      hint = (
          f'; did you mean --{flag}.{close[0]}?'
          if close
          else '; the fields are listed in the config file'
      )
      raise ValueError(f'unknown config field --{flag}.{field}{hint}')
  return default


def _without_closed_loop_noise(hook):
  """`sys.unraisablehook` that drops asyncio's 'Event loop is closed'.

  When a checkpoint read fails, orbax closes its event loop while other
  reads are in flight; their tensorstore callbacks then raise this on
  their own threads, at any moment, and each prints a traceback. It says
  nothing about the command, so it is dropped from the start (no race with
  the one-line report); every other unraisable exception goes to `hook`.
  """

  def quiet(unraisable):
    error = unraisable.exc_value
    if not (
        isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
    ):
      hook(unraisable)

  return quiet


class Terminated(BaseException):
  """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


def _stop(code: int, line: str) -> None:
  """Prints `line` alone and ends the process with `code` (no traceback,
  nothing more from background threads)."""
  sys.excepthook = lambda *args: None
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None
  print(line, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)  # pylint: disable=protected-access


def run(
    main: Callable[[], None],
    argv: Optional[List[str]] = None,
    on_interrupt: str = 'nothing unfinished is kept',
) -> None:
  """Runs `main()`, reporting user errors in one line (module docstring).

  Args:
    main: the command's work (absl flag parsing included).
    argv: the command line (`sys.argv`, from which `--verbose` is removed).
    on_interrupt: what is kept and how to resume, for the line printed on
      Ctrl-C or SIGTERM.
  """
  argv = sys.argv if argv is None else argv
  verbose = VERBOSE_FLAG in argv or os.environ.get('CFBI_VERBOSE') == '1'
  while VERBOSE_FLAG in argv:
    argv.remove(VERBOSE_FLAG)
  sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    main()
  except KeyboardInterrupt:
    if verbose:
      raise
    _stop(128 + signal.SIGINT, f'interrupted (Ctrl-C): {on_interrupt}')
  except Terminated:
    if verbose:
      raise
    _stop(128 + signal.SIGTERM, f'terminated (SIGTERM): {on_interrupt}')
  except Exception as error:  # pylint: disable=broad-except
    if verbose or not is_user_error(error):
      raise
    # Reads still in flight when a checkpoint failed (tensorstore callbacks
    # into orbax's closed event loop) print tracebacks of their own on
    # their threads: from here on nothing but the message is printed.
    _stop(
        USER_EXIT_CODE,
        f'error: {one_line(error)}\n'
        f'(run again with {VERBOSE_FLAG} for the traceback)',
    )
