"""Helpers shared by the config files: parsing of `--config=file.py:arg`.

`parse_arg('variant=cfbi_resnet101,dataset=davis2017', variant='', ...)`
returns a ConfigDict of the declared keys with their defaults overridden;
an undeclared key is an error. No side effects; imported by configs only.
"""

import ml_collections


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """Parses 'k=v,k2=v2' (or 'flag' for booleans) against `defaults`."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    if not item:
      continue
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; expected one of '
                       f'{sorted(defaults)}')
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ('', '1', 'true', 'yes')
    else:
      out[key] = type(default)(value)
  return out
