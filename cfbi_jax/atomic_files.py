"""Atomic file writing, which every file the project writes goes through.

Evaluation outputs (`output_files`), checkpoint configs (`checkpoint`),
exported artifacts (`export`), run summaries and the bench reports are
written to a hidden temporary file in the destination folder, then
`os.replace`d onto the final name. An interrupted run therefore never leaves
a truncated file under a final name, so a present file counts as complete
(what lets evaluation skip finished sequences on resume). Parent folders are
created as needed.
"""

import contextlib
import json
import os
import uuid
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` on success.

  The temporary name is hidden ('.'-prefixed) and keeps the extension, so
  writers that infer the format from it still work. On error it is removed
  and `path` is left as it was; an `OSError` that names no file (a full
  disk) is raised again naming `path`.

  Args:
    path: final file name.

  Yields:
    The temporary file name to write.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  stem, ext = os.path.splitext(os.path.basename(path))
  tmp = os.path.join(directory, f'.{stem}.{uuid.uuid4().hex[:12]}.tmp{ext}')
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    if isinstance(e, OSError) and e.errno is not None and not e.filename:
      # A write error (full disk...) names no file: name the output.
      raise OSError(e.errno, os.strerror(e.errno), path) from e
    raise


def write_json(path: str, obj, **dump_kwargs) -> None:
  """Writes `obj` as JSON (`json.dump` keyword arguments pass through)."""
  with atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      json.dump(obj, f, **dump_kwargs)
