"""What depends on the JAX backend, decided in one place.

* `is_cpu()`: the one backend test. Code that takes a different form on
  the CPU (where tests and CI run) than on GPU/TPU (the first-class
  targets) asks this and nothing else, so the GPU path is never bent to
  help the CPU.
* `tracing_for(platform)`: within it, `is_cpu()` answers for `platform`
  instead of the machine's backend, so a CPU machine can trace (and lower)
  the exact program a GPU would run (`bench/step_cost.py`).
* `use_compilation_cache(directory)`: JAX's persistent compilation cache,
  which `evaluate.py` and `train.py` turn on by default (config field
  `compilation_cache_dir`), so a repeat run of the same model and shapes
  skips XLA compilation.
* `initialize_distributed(heartbeat_timeout_s)`: joins a multi-process run
  (`train.py --distributed`), with cross-process CPU collectives.
"""

import contextlib
import os
from typing import Iterator, Optional

import jax
from absl import logging

# Where compiled programs are kept unless the config says otherwise.
DEFAULT_COMPILATION_CACHE_DIR = os.path.join(
    '~', '.cache', 'cfbi_jax', 'jax_compilation_cache'
)


# Set by `tracing_for`: the platform traced for, instead of the backend's.
_TRACING_FOR: Optional[str] = None


def is_cpu() -> bool:
  """True when JAX computes on the host CPU (or `tracing_for('cpu')`)."""
  if _TRACING_FOR is not None:
    return _TRACING_FOR == 'cpu'
  return jax.default_backend() == 'cpu'


@contextlib.contextmanager
def tracing_for(platform: str) -> Iterator[None]:
  """Traces the form of the code that `platform` runs.

  Inside the block, `is_cpu()` answers for `platform` ('cpu', 'cuda',
  'rocm' or 'tpu'), whatever this machine computes on. Only tracing reads
  it: lower the traced function with `lowering_platforms=(platform,)` to
  get that platform's program, or for the CPU to compile and inspect it
  here.

  Args:
    platform: the platform whose code form to trace.
  """
  global _TRACING_FOR
  if platform not in ('cpu', 'cuda', 'rocm', 'tpu'):
    raise ValueError(f'unknown platform {platform!r}')
  before, _TRACING_FOR = _TRACING_FOR, platform
  try:
    yield
  finally:
    _TRACING_FOR = before


def use_compilation_cache(directory: str) -> str:
  """Turns on JAX's persistent compilation cache in `directory`.

  Call it before the first compilation of the process (the entry points
  do): JAX fixes the cache at its first compile. A multi-process run on
  CPU keeps it off (see the comment in the body). An explicit
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
  if jax.process_count() > 1 and is_cpu():
    # Measured with jax 0.10.2: a CPU step read back from the cache hung in
    # its first collective across processes (gloo), while the same step
    # compiled afresh ran. GPU and TPU runs keep the cache.
    logging.warning('compilation cache off: a multi-process CPU run')
    return ''
  directory = os.path.abspath(os.path.expanduser(directory))
  jax.config.update('jax_compilation_cache_dir', directory)
  return directory


def initialize_distributed(heartbeat_timeout_s: int = 100) -> None:
  """Joins a multi-process run; call it before anything touches a device.

  The coordinator and this process's id come from the TPU / SLURM / Open
  MPI environment (JAX's cluster detection) or, on hosts without a
  scheduler, from `JAX_COORDINATOR_ADDRESS` (`host:port` of process 0),
  `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`. JAX itself reads only the first
  of these three; the other two are read here.
  The CPU client's collectives across processes are set to JAX's gloo
  implementation: without it a CPU step that reduces over devices of
  several processes cannot run. It touches only the CPU client, so GPU and
  TPU runs take the same code path and their own collectives.

  Args:
    heartbeat_timeout_s: seconds without a heartbeat after which the
      coordination service declares a process dead; every other process
      then ends with "Terminating process because the JAX distributed
      service detected fatal errors" instead of waiting forever in a
      collective. JAX's default is 100.
  """
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  ids = {}
  for key, variable in (
      ('num_processes', 'JAX_NUM_PROCESSES'),
      ('process_id', 'JAX_PROCESS_ID'),
  ):
    value = os.environ.get(variable, '')
    if value:
      if not value.isdigit():
        raise ValueError(f'{variable}={value!r}: expected a whole number')
      ids[key] = int(value)
  jax.distributed.initialize(
      heartbeat_timeout_seconds=heartbeat_timeout_s, **ids
  )
