"""The model families, keyed by `config.model.name`.

Each family is one module of this package that holds everything the
project knows about it: `cfbi.py` (CFBI and CFBI+), `feelvos.py` (FEELVOS)
and `videomatch.py` (VideoMatch). Each module defines:

* `NAME`, `VARIANTS`, `model_config(variant)`: its named settings;
* `from_config(model_config, rngs=...)`: the module (a
  `frame_step.VOSModel`), the only place a config meets it;
* `EVAL_FIELDS`: fields that change evaluation but not the weights;
* `dataset_overrides(variant, dataset)`: flags of its official evaluation
  scripts per dataset;
* `CHECKPOINT_RULES`, `CHECKPOINT_ALIASES`: the official state-dict names
  (`OFFICIAL_WEIGHTS = False` where only a backbone can be converted);
* `INIT_HOOKS`: `config.init` switch -> function of a fresh module.

The rest of the package (`checkpoint`, `convert`, `trainer`,
`evaluation`) asks these functions and names no model. Adding a family is
one file here plus its entry in `FAMILIES`. A `config.model` without a
`name` (model directories written before the registry) is CFBI.
"""

import types
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import ml_collections
from flax import nnx

from cfbi_jax.models import cfbi
from cfbi_jax.models import feelvos
from cfbi_jax.models import videomatch

FAMILIES: Dict[str, types.ModuleType] = {
    module.NAME: module for module in (cfbi, feelvos, videomatch)}

VARIANTS: Tuple[str, ...] = tuple(v for family_module in FAMILIES.values()
                                  for v in family_module.VARIANTS)


def family(model_config: Mapping[str, Any]) -> types.ModuleType:
  """The family module of a `config.model` block (by its `name`)."""
  name = dict(model_config).get('name') or cfbi.NAME
  if name not in FAMILIES:
    raise ValueError(f'unknown model name {name!r}; expected one of '
                     f'{sorted(FAMILIES)}')
  return FAMILIES[name]


def build(model_config: Mapping[str, Any], *,
          rngs: Optional[nnx.Rngs] = None) -> nnx.Module:
  """The module of a `config.model` block."""
  return family(model_config).from_config(model_config, rngs=rngs)


def model_config(variant: str) -> ml_collections.ConfigDict:
  """The `config.model` block of a named variant of any family."""
  for family_module in FAMILIES.values():
    if variant in family_module.VARIANTS:
      return family_module.model_config(variant)
  raise ValueError(f'unknown variant {variant!r}; expected one of {VARIANTS}')


def eval_fields(model_config: Mapping[str, Any]) -> Tuple[str, ...]:
  """Fields that may change at load time without new weights."""
  return tuple(family(model_config).EVAL_FIELDS)


def dataset_overrides(model_config: Mapping[str, Any],
                      dataset: str) -> Dict[str, Any]:
  """The official evaluation flags of the model's variant on `dataset`."""
  return family(model_config).dataset_overrides(
      dict(model_config).get('variant', ''), dataset)


def init_hooks(model_config: Mapping[str, Any]
               ) -> Dict[str, Callable[[nnx.Module], Any]]:
  """`config.init` switch -> hook, for the model's family."""
  return dict(family(model_config).INIT_HOOKS)
