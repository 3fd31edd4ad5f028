"""Peak memory of this process, for run summaries and the bench scripts.

On backends that report it (GPU/TPU) this is the first device's
`peak_bytes_in_use`; on CPU, where JAX reports nothing, the process's peak
resident set size (which also counts host-side Python and data).
"""

import resource
from typing import Tuple

import jax


def peak_memory() -> Tuple[float, str]:
  """`(megabytes, kind)` with kind 'device' or 'host RSS'."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'host RSS'
