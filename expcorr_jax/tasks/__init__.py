"""Methods by name: the one lookup from `config.model` to its task.

  task = tasks.get_task('uec')                # expcorr_jax/tasks/uec.py
  task = tasks.get_task('my_lab.my_method')    # a module of your own package
  regulariser = tasks.get_regulariser('erl')   # expcorr_jax/tasks/erl.py

A bare name is the module `expcorr_jax.tasks.<name>`; a name with a dot is
imported as it stands, so a method can live outside this repository. The
module's `TASK` (a `contract.Task`) or `REGULARISER` (a
`contract.Regulariser`) is returned; its `name` must be the name it was
found by. See `contract.py` for what they hold. This is the only lookup
from a name to a method: checkpoints record `config.model`, and loading
one (`model_loading.load`) comes back here.
"""

import importlib
import pkgutil
from typing import Any

from expcorr_jax.tasks import contract


def _module_name(name: str) -> str:
  return name if '.' in name else f'{__name__}.{name}'


def _builtin_names(attribute: str) -> list[str]:
  """Built-in modules that define `attribute`, for error messages."""
  found = []
  for info in pkgutil.iter_modules(__path__):
    module = importlib.import_module(f'{__name__}.{info.name}')
    if hasattr(module, attribute):
      found.append(info.name)
  return sorted(found)


def _find(name: str, attribute: str, kind: type[Any], what: str) -> Any:
  if not isinstance(name, str) or not name:
    raise ValueError(f'{what} name must be a non-empty string, got {name!r}.')
  module_name = _module_name(name)
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name is None or not module_name.startswith(e.name):
      raise  # The module exists but one of its own imports is missing.
    raise ValueError(
        f'Unknown {what} {name!r}: no module {module_name}. Built-in: '
        f'{_builtin_names(attribute)}; or give the dotted path of a module '
        f'of your own that defines {attribute}.') from e
  found: Any = getattr(module, attribute, None)
  if not isinstance(found, kind):
    raise ValueError(f'{module_name} defines no {attribute} '
                     f'({kind.__module__}.{kind.__name__}); it is not a '
                     f'{what}. Built-in: {_builtin_names(attribute)}.')
  if found.name != name:
    # Checkpoints and reports record the name; it must find this again.
    raise ValueError(f'{module_name}.{attribute}.name is {found.name!r}, but '
                     f'it is found by the name {name!r}: set its name to '
                     f'{name!r}.')
  return found


def get_task(name: str) -> contract.Task:
  """The task of `config.model` (see the module docstring)."""
  return _find(name, 'TASK', contract.Task, 'model')


def get_regulariser(name: str) -> contract.Regulariser:
  """The regulariser of `config.regulariser.name`."""
  return _find(name, 'REGULARISER', contract.Regulariser, 'regulariser')
