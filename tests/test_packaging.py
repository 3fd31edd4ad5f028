"""Tests for the package's declared dependencies (`pyproject.toml`).

An inference install (`pip install .`, no extras) must run every inference
entry point. A subprocess imports those entry points and serializes a
`jax.export` artifact (which imports its serializer lazily), then every
third-party distribution it loaded must be a base dependency or something
a base dependency requires: a module that the inference path needs but
only an extra (TensorFlow) happens to bring in fails here.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

from tests import parity_fixtures as pf

# Makes every distribution outside the allowed set (argv[1], JSON)
# unimportable, as in an install of the base dependencies alone, then runs
# argv[2:] as `python argv[2:]` would: optional imports (flax's of
# IPython, say) fall back as they would there, and a needed one fails.
_BASE_INSTALL = """
import importlib.abc, importlib.util, json, runpy, sys
from importlib import metadata
allowed = set(json.loads(sys.argv[1]))
providers = metadata.packages_distributions()
normal = lambda d: d.lower().replace('_', '-')

def uninstalled(name):
  top = name.split('.')[0]
  found = {normal(d) for d in providers.get(top, [])}
  return sorted(found) if found and not found & allowed else None

class Uninstalled(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if uninstalled(name):
      raise ModuleNotFoundError(f'No module named {name!r} (not installed: '
                                f'{uninstalled(name)})', name=name)
    return None

# Probes such as `importlib.util.find_spec('tensorflow')` answer None.
probe = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if uninstalled(name) else probe(name, package))
sys.meta_path.insert(0, Uninstalled())
sys.argv = sys.argv[2:]
if sys.argv[0] == '-c':
  sys.argv = sys.argv[1:]
  exec(compile(sys.argv[0], '<string>', 'exec'), {'__name__': '__main__'})
else:
  runpy.run_path(sys.argv[0], run_name='__main__')
"""

# What the inference path runs: the console scripts' modules, the loop,
# the streaming session, export, and an artifact's serialization.
_INFERENCE_PATH = """
import jax, jax.numpy as jnp
from cfbi_jax import commands, evaluation, cli
from cfbi_jax.inference import export, session, step, videos
exported = jax.export.export(jax.jit(lambda x: x + 1))(
    jax.ShapeDtypeStruct((2,), jnp.float32))
jax.export.deserialize(exported.serialize())
"""


def _name(requirement: str) -> str:
  return (
      re.split(r'[\s\[<>=!~;]', requirement, maxsplit=1)[0]
      .lower()
      .replace('_', '-')
  )


def _closure(names):
  """The distributions `names` require, transitively (no extras)."""
  seen, todo = set(), list(names)
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    try:
      requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
      continue
    todo += [_name(r) for r in requires if 'extra ==' not in r]
  return seen


def run_in_base_install(*argv, cwd=pf.REPO, timeout=300):
  """Runs `python *argv` where only the base dependencies can be imported."""
  with open(os.path.join(pf.REPO, 'pyproject.toml'), 'rb') as f:
    base = [_name(r) for r in tomllib.load(f)['project']['dependencies']]
  return subprocess.run(
      [
          sys.executable,
          '-c',
          _BASE_INSTALL,
          json.dumps(sorted(_closure(base) | {'cfbi-jax'})),
          *argv,
      ],
      capture_output=True,
      text=True,
      cwd=cwd,
      check=False,
      env=dict(
          os.environ,
          JAX_PLATFORMS='cpu',
          PYTHONPATH=pf.REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
      ),
      timeout=timeout,
  )


def test_the_inference_path_needs_only_base_dependencies():
  done = run_in_base_install('-c', _INFERENCE_PATH)
  assert done.returncode == 0, (
      'the inference path needs a distribution that no base dependency of '
      'pyproject.toml brings in (add it to [project].dependencies):\n'
      + done.stderr[-2000:]
  )


def test_training_in_an_inference_install_is_one_line(tmp_path):
  """Without the `[train]` extra: `train.py --help` works (exit 0, no
  TensorFlow), and training ends in one line naming the extra (exit 2)."""
  train = os.path.join(pf.REPO, 'train.py')
  helped = run_in_base_install(train, '--help', cwd=str(tmp_path))
  assert helped.returncode == 0, helped.stderr[-2000:]
  assert 'Train CFBI' in helped.stdout + helped.stderr
  assert 'tensorflow' not in (helped.stdout + helped.stderr).lower()
  done = run_in_base_install(
      train,
      '--config=configs/ytvos.py:runlocal',
      '--config.data.root=ytb',
      f'--workdir={tmp_path / "run"}',
      cwd=str(tmp_path),
  )
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert lines[0].startswith(
      'error: cfbi-train needs the training extras '
  ), lines
  assert lines[0].endswith('pip install "cfbi-jax[train]"')
  assert 'Traceback' not in done.stderr


@pytest.mark.parametrize(
    'command',
    [
        ['evaluate.py'],
        ['train.py'],
        ['-m', 'cfbi_jax.convert'],
        ['-m', 'cfbi_jax.inference.export'],
    ],
)
def test_every_help_exits_zero(command, tmp_path):
  if command[0] != '-m':
    command = [os.path.join(pf.REPO, command[0])]
  done = subprocess.run(
      [sys.executable, *command, '--help'],
      capture_output=True,
      text=True,
      cwd=str(tmp_path),
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=pf.REPO),
      timeout=300,
      check=False,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'usage' in (done.stdout + done.stderr).lower() or '--' in done.stdout


_FROM_ANY_FOLDER = """
import numpy as np
from cfbi_jax import Session, project_files
assert project_files.find('configs/eval.py').endswith('eval.py')
session = Session('tiny_cfbi_synthetic')
frame = np.zeros((33, 49, 3), np.uint8)
mask = np.zeros((33, 49), np.uint8)
mask[5:15, 5:15] = 1
session.push(frame, mask)
print(session.push(frame).shape)
"""


def test_the_readme_routes_install_the_package(tmp_path):
  """Route 1 (the lock, then the package itself, editable) and route 2
  (`pip install .`): `from cfbi_jax import Session` works from another
  folder, and the bundled model and configs are found by name."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('PYTHONPATH', None)
  editable = subprocess.run(
      [sys.executable, '-c', _FROM_ANY_FOLDER],
      cwd=str(tmp_path),
      env=env,
      capture_output=True,
      text=True,
      check=False,
      timeout=300,
  )
  assert editable.returncode == 0, (
      'README route 1 (pip install --no-deps -e . after the lock) was not '
      'followed, or does not work:\n' + editable.stderr[-2000:]
  )
  assert editable.stdout.strip().endswith('(33, 49)')
  target = str(tmp_path / 'site')
  subprocess.run(
      [
          sys.executable,
          '-m',
          'pip',
          'install',
          '--quiet',
          '--no-deps',
          '--no-build-isolation',
          '--target',
          target,
          pf.REPO,
      ],
      check=True,
      capture_output=True,
      timeout=300,
  )
  installed = subprocess.run(
      [
          sys.executable,
          '-I',
          '-c',
          f'import sys; sys.path.insert(0, {target!r}); import cfbi_jax; '
          f'assert cfbi_jax.__file__.startswith({target!r}), cfbi_jax.__file__; '
          + _FROM_ANY_FOLDER,
      ],
      cwd=str(tmp_path),
      env=env,
      capture_output=True,
      text=True,
      check=False,
      timeout=300,
  )
  assert installed.returncode == 0, installed.stderr[-2000:]
  assert installed.stdout.strip().endswith('(33, 49)')
