"""What depends on the JAX backend, decided in one place.

* `is_cpu()`: the one backend test. Code that takes a different form on
  the CPU (where tests and CI run) than on GPU/TPU (the first-class
  targets) asks this and nothing else, so the GPU path is never bent to
  help the CPU.
* `use_compilation_cache(directory)`: JAX's persistent compilation cache,
  which `evaluate.py` and `train.py` turn on by default (config field
  `compilation_cache_dir`), so a repeat run of the same model and shapes
  skips XLA compilation.
"""

import os

import jax

# Where compiled programs are kept unless the config says otherwise.
DEFAULT_COMPILATION_CACHE_DIR = os.path.join('~', '.cache', 'cfbi_jax',
                                             'jax_compilation_cache')


def is_cpu() -> bool:
  """True when JAX computes on the host CPU."""
  return jax.default_backend() == 'cpu'


def use_compilation_cache(directory: str) -> str:
  """Turns on JAX's persistent compilation cache in `directory`.

  Call it before the first compilation of the process (the entry points
  do): JAX fixes the cache at its first compile. An explicit
  `JAX_COMPILATION_CACHE_DIR` in the environment wins over `directory`.

  Args:
    directory: cache folder ('~' expanded, created by JAX); '' disables.

  Returns:
    The folder in use, or '' when the cache is off.
  """
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  if not directory:
    return ''
  directory = os.path.abspath(os.path.expanduser(directory))
  jax.config.update('jax_compilation_cache_dir', directory)
  return directory
