"""Seeded random weights for module tests, without JAX initialisers.

`tiny_cfbi(**fields)` is the tiny CFBI of the loop tests: JAX's init (seed
0) with non-zero matching biases, so background and objects differ.

`random_model(make, seed)` builds `make()` abstractly and fills every
variable from NumPy by its name. Random (not initial) values make tests
stronger: the init GCT gamma = 0 turns GCT into the identity, and init
frozen-BN buffers make BN the identity (hiding the MobileNetV2 padding
quirk). Skipping JAX's initialisers also avoids one XLA compile per
parameter shape on CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfbi_jax import models


def tiny_cfbi(**fields):
  """`tiny_cfbi` with `fields` changed, seed 0, biases -0.3 (bg), 0.2 (fg)."""
  config = models.model_config('tiny_cfbi')
  config.update(fields)
  module = models.build(config, rngs=nnx.Rngs(0))
  module.bg_bias[...] = jnp.full_like(module.bg_bias[...], -0.3)
  module.fg_bias[...] = jnp.full_like(module.fg_bias[...], 0.2)
  return module


def randn(rng, *shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def random_model(make, seed):
  """`make()` with every Param/BatchStat drawn from `default_rng(seed)`."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  rng = np.random.default_rng(seed)
  filled = []
  for path, leaf in leaves:
    name = [k.key for k in path if hasattr(k, 'key')][-1]
    shape = leaf.shape
    if name == 'kernel':
      value = randn(rng, *shape, scale=np.sqrt(2.0 / np.prod(shape[:-1])))
    elif name in ('weight', 'scale', 'alpha'):
      value = 1 + randn(rng, *shape, scale=0.1)
    elif name in ('bias', 'beta', 'running_mean'):
      value = randn(rng, *shape, scale=0.3)
    elif name == 'gamma':
      value = randn(rng, *shape, scale=0.5)
    elif name == 'running_var':
      value = rng.uniform(0.5, 1.5, shape)
    else:
      raise ValueError(f'no fill rule for {name} at {path}')
    filled.append(jnp.asarray(value, leaf.dtype))
  return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, filled))
