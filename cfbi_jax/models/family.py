"""`Family`: everything the project needs to know about one model family.

A model family (CFBI with CFBI+, FEELVOS, VideoMatch, or one of yours) is a
module class that follows the per-frame contract (`cfbi_jax.vos.VOSModel`)
plus one `Family` record at the end of its file:

    FAMILY = family.Family(
        name='mine', module=Mine,
        variants={'mine_resnet101': {}, 'tiny_mine': {'resnet_width': 8}},
        eval_fields=('global_chunk_mb',))

and one line in `models/__init__.py`. The rest of the package (checkpoints,
conversion, training configs, evaluation, streaming, export) asks the
record, through `models`, and names no family. What is written once here,
for every family:

* `model_config(variant)`: the `config.model` block of a variant, the
  module constructor's defaults with the variant's changes on top, plus
  the fields that are not the module's (`MODEL_ONLY_FIELDS`: `name`,
  `variant`, and `bgr`, the input channel order the weights were trained
  with);
* `build(model_config)`: the module (the one place a config meets a model);
  a field the constructor does not take is an error, lists become tuples
  where the default is a tuple;
* `DTYPES`: the compute-dtype names every family accepts.

Variants are named `<model>_<backbone>` (`cfbi_resnet101`) and
`tiny_<model>` (the test-sized model); the training configs take
`model=<model>` (`training_models`).
"""

import dataclasses
import inspect
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import ml_collections
from flax import nnx

# Compute / matching dtypes by config name.
DTYPES = {
    'float32': jnp.float32,
    'float16': jnp.float16,
    'bfloat16': jnp.bfloat16,
}

# Fields of `config.model` that are not constructor fields of the module:
# the family, the variant, and the input channel order the weights expect
# (True: the official models' BGR, notes §3).
MODEL_ONLY_FIELDS = ('name', 'variant', 'bgr')
DEFAULT_BGR = True
# Written by versions before the registry and ignored on load.
_LEGACY_FIELDS = ('max_objects',)

# A checkpoint name rule: regex on the dotted NNX path -> replacement (a
# string or a function of the match). Applied in order (`convert.py`).
Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]


def _no_overrides(variant: str, dataset: str) -> Dict[str, Any]:
  del variant, dataset
  return {}


def _no_training_overrides(model_config: Mapping[str, Any]) -> Dict[str, Any]:
  del model_config
  return {}


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family.

  Attributes:
    name: `config.model.name`.
    module: the `nnx.Module` class (a `vos.VOSModel`); its constructor's
      keyword defaults are the family's reference settings and `rngs` its
      only required argument.
    variants: variant name -> the constructor fields it changes.
    eval_fields: constructor fields that change how the model evaluates
      but not its weights (a caller may override them when loading;
      `bgr` is always one).
    checkpoint_rules, checkpoint_aliases: the official state-dict names
      (`convert.py`); for a family without official weights, the DeepLab
      names (`backbone.CHECKPOINT_RULES`), so a backbone loads.
    official_weights: whether official weights of the whole model exist
      (False: `convert.py --backbone_only` only).
    init_hooks: `config.init.<switch>` -> function of a fresh module.
    dataset_overrides: `(variant, dataset) -> fields` that the official
      evaluation scripts set for that dataset.
    training_overrides: `model_config -> fields` that training changes
      (e.g. more matching chunks for the training crops).
    own_predictions: whether training feeds the model its own previous
      predictions (CFBI's sequential training) rather than the ground
      truth (`config.train.own_predictions`).
    renamed_fields: old field name -> new, for model directories written
      before a rename (`upgrade`).
    recipe: the family's paper training recipe, as changes to the shared
      one (CFBI's, `configs/common.py::training_config`): flattened config
      paths (`'optim.lr'`) -> values. The training configs apply it by
      default (`recipe=paper`; `recipe=cfbi` keeps the shared recipe);
      `train.steps` and `train.batch_size` in it are the paper's budget,
      which the small-world configs (the synthetic benchmark, `runlocal`)
      leave at their own values.
  """

  name: str
  module: type
  variants: Mapping[str, Mapping[str, Any]]
  eval_fields: Tuple[str, ...] = ()
  checkpoint_rules: Sequence[Rule] = ()
  checkpoint_aliases: Sequence[Rule] = ()
  official_weights: bool = False
  init_hooks: Mapping[str, Callable[[nnx.Module], Any]] = dataclasses.field(
      default_factory=dict
  )
  dataset_overrides: Callable[[str, str], Dict[str, Any]] = _no_overrides
  training_overrides: Callable[[Mapping[str, Any]], Dict[str, Any]] = (
      _no_training_overrides
  )
  own_predictions: bool = False
  renamed_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
  recipe: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def upgrade(
      self, model_config: Mapping[str, Any]
  ) -> ml_collections.ConfigDict:
    """A stored `config.model` block with renamed fields under their
    current names and the fields of older versions dropped."""
    fields = dict(model_config)
    for old, new in self.renamed_fields.items():
      if old in fields:
        fields.setdefault(new, fields.pop(old))
    for key in _LEGACY_FIELDS:
      fields.pop(key, None)
    return ml_collections.ConfigDict(fields)

  def defaults(self) -> Dict[str, Any]:
    """The module constructor's keyword defaults."""
    return {
        name: p.default
        for name, p in inspect.signature(
            self.module.__init__
        ).parameters.items()
        if p.default is not inspect.Parameter.empty
    }

  def model_config(self, variant: str) -> ml_collections.ConfigDict:
    """The `config.model` block of `variant` (module docstring)."""
    if variant not in self.variants:
      raise ValueError(
          f'unknown variant {variant!r} of {self.name}; '
          f'expected one of {tuple(self.variants)}'
      )
    fields = self.defaults()
    unknown = sorted(set(self.variants[variant]) - set(fields))
    if unknown:
      raise ValueError(
          f'variant {variant!r} sets {unknown}, which '
          f'{self.module.__name__} does not take'
      )
    fields.update(self.variants[variant])
    fields.update(name=self.name, variant=variant, bgr=DEFAULT_BGR)
    return ml_collections.ConfigDict(fields)

  def all_eval_fields(self) -> Tuple[str, ...]:
    """`eval_fields` plus `bgr`."""
    return tuple(self.eval_fields) + ('bgr',)

  def build(
      self, model_config: Mapping[str, Any], *, rngs: Optional[nnx.Rngs] = None
  ) -> nnx.Module:
    """The module of a `config.model` block (seed 0 without `rngs`).

    Raises:
      ValueError: naming the fields the constructor does not take.
    """
    fields = dict(self.upgrade(model_config))
    for key in MODEL_ONLY_FIELDS:
      fields.pop(key, None)
    defaults = self.defaults()
    unknown = sorted(set(fields) - set(defaults))
    if unknown:
      raise ValueError(
          f'unknown model config fields of {self.name}: ' f'{unknown}'
      )
    for key, value in fields.items():
      if isinstance(defaults[key], tuple):
        fields[key] = _as_tuple(value)
    return self.module(**fields, rngs=rngs or nnx.Rngs(0))


def _as_tuple(value: Any) -> Any:
  """Lists (from JSON or a ConfigDict) as tuples, nested ones too."""
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuple(v) for v in value)
  return value


def bgr(model_config: Mapping[str, Any]) -> bool:
  """The input channel order of a `config.model` block (BGR where a
  directory written before the field existed does not say)."""
  value = dict(model_config).get('bgr')
  return DEFAULT_BGR if value is None else bool(value)
