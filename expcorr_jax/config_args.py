"""Config arguments: the `:runlocal,erl` after a config file's path.

  python -m expcorr_jax.main --config=configs/uec.py:runlocal,erl ...

`get_config(arg)` receives 'runlocal,erl'; `parse_arg(arg, runlocal=False,
erl=False)` turns it into a ConfigDict(runlocal=True, erl=True). As in
big_vision: items are separated by commas, a bare name sets a boolean to
True, `name=value` sets any argument, and each value takes the type of the
argument's default. Unknown names are refused with the known ones listed, so
a typo never silently does nothing.
"""

import importlib.util
import os
from typing import Any

import ml_collections

_TRUE = ('1', 'true', 'yes', 'on')
_FALSE = ('0', 'false', 'no', 'off')


def _convert(name: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    raise ValueError(f'Config argument {name} is a boolean, not {text!r}.')
  if default is None or isinstance(default, str):
    return text
  try:
    return type(default)(text)
  except ValueError as e:
    raise ValueError(f'Config argument {name} takes a '
                     f'{type(default).__name__}, not {text!r}.') from e


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """The arguments of `arg` over the defaults `spec` (see the module).

  Raises:
    ValueError: an unknown name, a bare name of a non-boolean argument, or a
      value of the wrong type.
  """
  result = dict(spec)
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    name, has_value, text = item.partition('=')
    name = name.strip()
    if name not in spec:
      raise ValueError(f'Unknown config argument {name!r} in {arg!r}; '
                       f'known: {sorted(spec)}.')
    if has_value:
      result[name] = _convert(name, text.strip(), spec[name])
    elif isinstance(spec[name], bool):
      result[name] = True
    else:
      raise ValueError(f'Config argument {name} needs a value: {name}=...')
  return ml_collections.ConfigDict(result)


def load_config(path: str | os.PathLike[str],
                arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as `--config=PATH:ARG` gives it.

  Config files live in `configs/`, which is no package, so they are loaded
  by path (for tests, benchmarks and scripts; the CLIs use
  `ml_collections.config_flags`).
  """
  # Local by design: a config file is Python code imported from disk.
  path = os.fspath(path)
  name = '_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f'No config file {path}.')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
