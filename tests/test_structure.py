"""The package's structure: the import graph and what the core imports.

* No import cycle and no upward import in `cfbi_jax` (a plain `ast` scan,
  `tests/import_graph.py`, which also prints the figures).
* The model contract and the training step load no I/O library:
  `import cfbi_jax.vos` / `cfbi_jax.train_step` / `cfbi_jax.masks` in a
  fresh interpreter leaves `av`, `PIL` and `tensorflow` out of
  `sys.modules` (`masks` also leaves out jax).
"""

import os
import subprocess
import sys

import pytest

from tests import import_graph

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_import_cycle_and_no_upward_import():
  figures = import_graph.summary()
  assert figures['cycles'] == []
  assert figures['upward'] == []


def test_the_scan_sees_deferred_and_main_block_imports(tmp_path):
  """The scan is not blind: a `__main__` block importing the module that
  imports it is a cycle and an upward import."""
  package = tmp_path / 'cfbi_jax'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'low.py').write_text(
      "if __name__ == '__main__':\n  from cfbi_jax import high\n"
  )
  (package / 'base.py').write_text('')
  (package / 'high.py').write_text(
      'from cfbi_jax import base\n\n\ndef main():\n'
      '  from cfbi_jax import low\n'
  )
  figures = import_graph.summary(str(tmp_path))
  assert figures['cycles'] == [['cfbi_jax.high', 'cfbi_jax.low']]
  assert figures['upward'] == [('cfbi_jax.low', 'cfbi_jax.high')]


@pytest.mark.parametrize(
    'module,banned',
    [
        ('cfbi_jax.vos', ('av', 'PIL', 'tensorflow')),
        ('cfbi_jax.train_step', ('av', 'PIL', 'tensorflow')),
        ('cfbi_jax.masks', ('av', 'PIL', 'tensorflow', 'jax')),
    ],
)
def test_core_modules_load_no_io(module, banned):
  code = (
      f'import sys, {module}\n'
      f'print(sorted({{m.split(".")[0] for m in sys.modules}} & '
      f'{set(banned)!r}))'
  )
  out = subprocess.run(
      [sys.executable, '-c', code],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
  )
  assert out.stdout.strip() == '[]', out.stdout
