"""Device mesh and shardings for data-parallel training.

One mesh axis, `data`. Batches are split along it
(`NamedSharding(mesh, P('data'))`); parameters, optimizer state and the step
are replicated (`P()`). The global batch is the same whatever the device
count: each host feeds `global_batch / process_count` examples and
`global_array` assembles the host-local pieces into one global `jax.Array`.
Multi-host runs call `jax.distributed.initialize()` first (see README).
"""

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A 1-D `data` mesh over all (or the first `num_devices`) devices."""
  n = num_devices or jax.device_count()
  return jax.make_mesh((n,), ('data',), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_array(local: Any, mesh: jax.sharding.Mesh) -> Any:
  """Host-local numpy batch (pytree) -> global arrays sharded on `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)), local)
