"""Device mesh and shardings for data-parallel training.

One mesh axis, `data`. Batches are split along it
(`NamedSharding(mesh, P('data'))`); parameters, optimizer state and the step
are replicated (`P()`). The global batch is the same whatever the device
count: each host feeds `global_batch / process_count` examples and
`global_array` assembles the host-local pieces into one global `jax.Array`.

The same functions serve one process and several (a multi-host run, which
calls `backend.initialize_distributed()` first; see README): `replicate`
places values every process holds onto the whole mesh (`jax.device_put`
cannot reach other processes' devices), and `host_value` reads a
replicated array back from this process's own copy, without communication.
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
  return jax.make_mesh(
      (n,), ('data',), axis_types=(AxisType.Auto,), devices=jax.devices()[:n]
  )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_array(local: Any, mesh: jax.sharding.Mesh) -> Any:
  """Host-local numpy batch (pytree) -> global arrays sharded on `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local,
  )


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Values every process holds -> arrays replicated over all of `mesh`.

  Args:
    tree: pytree of arrays (numpy or `jax.Array`, PRNG keys included), the
      same value in every process.
    mesh: the (possibly multi-process) mesh.

  Returns:
    The tree with each leaf a global `jax.Array` of sharding `P()`.
  """
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    ):
      return jax.random.wrap_key_data(
          put(jax.random.key_data(x)), impl=jax.random.key_impl(x)
      )
    value = host_value(x)
    return jax.make_array_from_callback(
        value.shape, sharding, lambda index: value[index]
    )

  return jax.tree.map(put, tree)


def host_value(tree: Any) -> Any:
  """Replicated (or single-process) arrays -> numpy, from the local copy."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return np.asarray(x)

  return jax.tree.map(get, tree)
