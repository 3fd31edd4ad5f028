"""Where the config files and the bundled model are: checkout or installed.

In a checkout they are the repository's `configs/` and `models/`, beside
the `cfbi_jax` package. `pip install .` ships the same files inside the
package, as `cfbi_jax/configs` and `cfbi_jax/bundled_models`
(`pyproject.toml`). `find(relative)` looks in that order, so the entry
points and the configs work from any folder either way;
`bundled_models()` names the models shipped that way.
"""

import importlib
import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_PACKAGE)
# Top-level folder in a checkout -> its copy in an installed package.
_INSTALLED = {'configs': 'configs', 'models': 'bundled_models'}


def find(relative: str) -> str:
  """A project path such as `configs/eval.py` or `models/tiny_cfbi_synthetic`.

  Args:
    relative: path relative to the repository root.

  Returns:
    The checkout's path if it exists, else the installed copy's (which may
    not exist either: the caller reports it).
  """
  in_checkout = os.path.join(_CHECKOUT, relative)
  if os.path.exists(in_checkout):
    return in_checkout
  top, _, rest = relative.partition('/')
  return os.path.join(_PACKAGE, _INSTALLED.get(top, top), rest)


def make_configs_importable() -> None:
  """Lets config files run `from configs import common` when installed.

  In a checkout `configs` is the repository folder (on `sys.path` as the
  scripts' folder or the working folder); installed it is
  `cfbi_jax.configs`, registered here under its checkout name.
  """
  if 'configs' in sys.modules:
    return
  if os.path.isdir(os.path.join(_CHECKOUT, 'configs')):
    if _CHECKOUT not in sys.path:
      sys.path.append(_CHECKOUT)
    return
  sys.modules['configs'] = importlib.import_module('cfbi_jax.configs')


def bundled_models() -> dict:
  """`{name: folder}` of the models shipped with the project (each a model
  directory under `models/`)."""
  root = find('models')
  if not os.path.isdir(root):
    return {}
  return {
      name: os.path.join(root, name)
      for name in sorted(os.listdir(root))
      if os.path.isfile(os.path.join(root, name, 'model_config.json'))
  }
