"""The model families, keyed by `config.model.name`.

Each family is one file of this package ending in a `family.Family`
record: `cfbi.py` (CFBI and CFBI+), `feelvos.py` (FEELVOS) and
`videomatch.py` (VideoMatch). Adding a family is that file plus its line in
`FAMILIES` below (or `register(FAMILY)` at run time). The rest of the
package (`checkpoint`, `convert`, `trainer`, `evaluation`, the configs)
asks the functions here and names no family. A `config.model` without a
`name` (model directories written before the registry) is CFBI.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import ml_collections
from flax import nnx

from cfbi_jax.models import cfbi
from cfbi_jax.models import family as family_lib
from cfbi_jax.models import feelvos
from cfbi_jax.models import videomatch

Family = family_lib.Family

FAMILIES: Dict[str, Family] = {}


def register(record: Family) -> Family:
  """Adds a family (its name must be new, and so must its variants)."""
  if record.name in FAMILIES:
    raise ValueError(f'a model family named {record.name!r} exists')
  taken = sorted(set(record.variants) & set(variants()))
  if taken:
    raise ValueError(f'variants {taken} of {record.name} exist already')
  FAMILIES[record.name] = record
  return record


def unregister(name: str) -> None:
  """Removes a family added with `register` (tests)."""
  FAMILIES.pop(name)


def variants() -> Tuple[str, ...]:
  """Every variant of every registered family."""
  return tuple(v for record in FAMILIES.values() for v in record.variants)


def family_of(model_config: Mapping[str, Any]) -> Family:
  """The family of a `config.model` block (by its `name`)."""
  name = dict(model_config).get('name') or cfbi.FAMILY.name
  if name not in FAMILIES:
    raise ValueError(
        f'unknown model name {name!r}; expected one of ' f'{sorted(FAMILIES)}'
    )
  return FAMILIES[name]


def family_of_variant(variant: str) -> Family:
  """The family that has `variant`."""
  for record in FAMILIES.values():
    if variant in record.variants:
      return record
  raise ValueError(
      f'unknown variant {variant!r}; expected one of ' f'{variants()}'
  )


def build(
    model_config: Mapping[str, Any], *, rngs: Optional[nnx.Rngs] = None
) -> nnx.Module:
  """The module of a `config.model` block."""
  return family_of(model_config).build(model_config, rngs=rngs)


def model_config(variant: str) -> ml_collections.ConfigDict:
  """The `config.model` block of a named variant of any family."""
  return family_of_variant(variant).model_config(variant)


def eval_fields(model_config: Mapping[str, Any]) -> Tuple[str, ...]:
  """Fields that may change at load time without new weights."""
  return family_of(model_config).all_eval_fields()


def dataset_overrides(
    model_config: Mapping[str, Any], dataset: str
) -> Dict[str, Any]:
  """The official evaluation flags of the model's variant on `dataset`."""
  return family_of(model_config).dataset_overrides(
      dict(model_config).get('variant', ''), dataset
  )


def init_hooks(
    model_config: Mapping[str, Any],
) -> Dict[str, Callable[[nnx.Module], Any]]:
  """`config.init` switch -> hook, for the model's family."""
  return dict(family_of(model_config).init_hooks)


def training_models() -> Tuple[str, ...]:
  """The `model=` names of the training configs: `m` for every tiny
  variant `tiny_m` (`cfbi`, `cfbip`, `feelvos`, `videomatch`, ...)."""
  return tuple(v[len('tiny_') :] for v in variants() if v.startswith('tiny_'))


def training_model_config(variant: str) -> ml_collections.ConfigDict:
  """`model_config(variant)` with the family's training changes."""
  config = model_config(variant)
  record = family_of(config)
  config.update(record.training_overrides(config))
  return config


# The families of this package, one line each.
register(cfbi.FAMILY)
register(feelvos.FAMILY)
register(videomatch.FAMILY)
