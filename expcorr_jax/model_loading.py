"""One way in for trained models: a checkpoint -> task, network and params.

  loaded = model_loading.load('/tmp/uec_local')            # a workdir
  loaded = model_loading.load('.../checkpoints/200')       # one step
  loaded = model_loading.load('exposure-errors.pth', model='uec')

`load` is what `inference.Corrector.from_checkpoint`, the `correct` and
`evaluate` CLIs and the ERL stages (loading the frozen stage before) all
use. The path is:
Any of them may be local or in a bucket (`gs://...`, see
`data_prep/storage.py`).
- a training workdir, its `checkpoints/` folder or one step's folder: the
  method is the one its saved config records (`config.model`), found by
  `tasks.get_task`; the network is built from that saved config by the
  task's own `create_model`, so it is exactly the network that was trained;
- an official weights file (`.pth`), which records no method: `model=`
  (or `config.model`) names it, and the task's `InferenceHooks.load_official`
  reads the params and the network settings its weights' shapes imply.

Giving `model=` (or a `config`) for a training checkpoint is a check: a
checkpoint of another method is refused, naming the method it holds.
`overrides` replace network settings (module fields, e.g.
encoder_height=256). Params are checked to fit the network and to be
finite before anything runs.
"""

import dataclasses
import os
from typing import Any, Mapping

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from data_prep import storage
from expcorr_jax import checkpointing
from expcorr_jax import tasks
from expcorr_jax.tasks import contract

_OFFICIAL_SUFFIX = '.pth'


class MethodMismatchError(ValueError):
  """A checkpoint holds another method than the one asked for.

  Attributes:
    path: the checkpoint.
    saved: the method it holds (None if its config records none).
    expected: the method asked for.
  """

  def __init__(self, path: str, saved: str | None, expected: str,
               asked_by: str):
    self.path, self.saved, self.expected = path, saved, expected
    super().__init__(
        f'{path} holds a {saved!r} checkpoint, not {expected!r} (as '
        f'{asked_by} says): '
        + ('give that method\'s config, or leave the method out: a training '
           'checkpoint names its own.' if saved else
           'its saved config names no method; it is not a training '
           'checkpoint of this project.'))


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A loaded checkpoint.

  Attributes:
    task: the method.
    model: its network, built by `task.create_model(config)`.
    params: the trained params (numpy), checked to fit `model` and finite.
    config: the config the network was built from: the checkpoint's saved
      config, or for an official file the given config (or just `model`)
      with the settings read off its weights.
    facts: what a report records of the checkpoint: 'checkpoint' (the
      absolute path) and, for a training checkpoint, 'checkpoint_step'.
  """
  task: contract.Task
  model: nn.Module
  params: Any
  config: ml_collections.ConfigDict
  facts: dict[str, Any]

  def correction_params(self) -> Any:
    """The params `task.correct` runs with (`Task.correction_params`).

    For a method whose correction also needs frozen params (ERL stage 2
    needs its stage-1 auto-encoder) they are loaded here, once, as the
    checkpoint's config names them.
    """
    if self.task.correction_params is None:
      return self.params
    return self.task.correction_params(self.params,
                                       self.task.load_frozen(self.config))


def is_official_file(path: str | os.PathLike[str]) -> bool:
  """Whether `path` names an official weights file rather than a workdir."""
  return os.fspath(path).lower().endswith(_OFFICIAL_SUFFIX)


def saved_config(path: str | os.PathLike[str], *,
                 model: str | None = None) -> tuple[dict[str, Any], int]:
  """(saved config, step) of a training checkpoint; reads no params.

  For checks before a run loads anything (which method, which settings).

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    MethodMismatchError: `model` is given and the checkpoint holds another.
  """
  path = _absolute(path)
  saved, step, _ = checkpointing.read_config(path)
  saved_method = saved.get('model')
  if model is not None and saved_method != model:
    raise MethodMismatchError(path, saved_method, model, 'model=')
  return saved, step


def load(path: str | os.PathLike[str], *, model: str | None = None,
         config: ml_collections.ConfigDict | None = None,
         overrides: Mapping[str, Any] | None = None) -> LoadedModel:
  """The task, network and params of a checkpoint (see the module).

  Args:
    path: a training workdir, its `checkpoints/` folder, a step folder, or
      an official `.pth` file.
    model: the method, needed for an official file only; for a training
      checkpoint a check against the method its config records.
    config: a run's config (the evaluate CLI's --config): its `model` is
      checked like `model=`; for an official file its other fields complete
      the settings the weights give. Network settings (`model_*`) it holds
      that differ from a training checkpoint's are logged, and the
      checkpoint's are used.
    overrides: network settings (module fields without the `model_`
      prefix) that replace the checkpoint's.

  Raises:
    FileNotFoundError: nothing at `path`.
    MethodMismatchError: the checkpoint holds another method.
    ValueError: no method for an official file, a method without official
      weights or checkpoints that are not correctors, an unknown override,
      or params that do not fit the network or are not finite.
  """
  path = _absolute(path)
  config_method = None if config is None else config.get('model')
  if None not in (config_method, model) and config_method != model:
    raise ValueError(f'model={model!r} and config.model={config_method!r} '
                     'disagree: give one.')
  expected = model if model is not None else config_method
  if is_official_file(path):
    task, params, build_config = _load_official(path, expected, config)
    facts: dict[str, Any] = {'checkpoint': path}
  else:
    params, saved, step = checkpointing.load_params(path)
    saved_method = saved.get('model')
    if expected is not None and saved_method != expected:
      raise MethodMismatchError(path, saved_method, expected,
                                'model=' if model is not None else '--config')
    if saved_method is None:
      raise ValueError(f'{path} has no model name in its saved config; it is '
                       'not a training checkpoint of this project.')
    task = tasks.get_task(saved_method)
    if config is not None:
      _log_setting_differences(config, saved)
    build_config = ml_collections.ConfigDict(saved)
    facts = {'checkpoint': path, 'checkpoint_step': step}
  overrides = dict(overrides or {})
  for field, value in overrides.items():
    build_config[f'model_{field}'] = value
  network = task.create_model(build_config)
  fields = contract.module_fields(type(network))
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f'Unknown {type(network).__name__} settings {unknown}; '
                     f'valid: {fields}.')
  check_params(task, network, params)
  return LoadedModel(task, network, params, build_config, facts)


def _absolute(path: str | os.PathLike[str]) -> str:
  return os.fspath(storage.path(path))


def _load_official(path: str, method: str | None,
                   config: ml_collections.ConfigDict | None
                   ) -> tuple[contract.Task, Any, ml_collections.ConfigDict]:
  """(task, params, config with the weights' settings) of an official file."""
  if not storage.path(path).is_file():
    raise FileNotFoundError(f'No checkpoint file {path}.')
  if method is None:
    raise ValueError(f'{path} is an official weights file, which records no '
                     'method: name it (model=<method> in Python, --model or '
                     '--config on the command line).')
  task = tasks.get_task(method)
  if task.inference is None or task.inference.load_official is None:
    raise ValueError(f'{method!r} has no official weights to read from '
                     f'{path}; give a training workdir instead.')
  params, fields = task.inference.load_official(path)
  checkpointing.check_finite(params, path)
  build_config = ml_collections.ConfigDict(
      {'model': method} if config is None else config.to_dict())
  for field, value in fields.items():
    build_config[f'model_{field}'] = value
  return task, params, build_config


def _log_setting_differences(config: ml_collections.ConfigDict,
                             saved: Mapping[str, Any]) -> None:
  """Warns where a run's config names other network settings than saved."""
  different = {key: (config[key], value) for key, value in saved.items()
               if key.startswith('model_') and key in config
               and config[key] != value}
  if different:
    logging.warning(
        'The checkpoint was trained with other model settings than the '
        'config names; using the checkpoint\'s: %s.', ', '.join(
            f'{key}={value!r} (config: {mine!r})'
            for key, (mine, value) in different.items()))


def check_params(task: contract.Task, module: nn.Module, params: Any) -> None:
  """Raises ValueError naming the mismatch if params do not fit `module`."""
  expected = jax.eval_shape(
      lambda: task.init_params(module, jax.random.key(0)))
  expected_shapes = jax.tree.map(lambda a: tuple(a.shape), expected)
  try:
    actual_shapes = jax.tree.map(lambda a: tuple(np.shape(a)), params)
  except (TypeError, ValueError) as e:
    raise ValueError(f'params are not a tree of arrays: {e}') from e
  if actual_shapes == expected_shapes:
    return
  flat_expected = dict(jax.tree_util.tree_leaves_with_path(
      expected_shapes, is_leaf=_is_shape))
  flat_actual = dict(jax.tree_util.tree_leaves_with_path(
      actual_shapes, is_leaf=_is_shape))
  text = jax.tree_util.keystr
  missing = sorted(text(k) for k in set(flat_expected) - set(flat_actual))
  extra = sorted(text(k) for k in set(flat_actual) - set(flat_expected))
  wrong = sorted(f'{text(k)} {flat_actual[k]} (expected {flat_expected[k]})'
                 for k in set(flat_actual) & set(flat_expected)
                 if flat_actual[k] != flat_expected[k])
  raise ValueError(
      f'The params do not fit a {type(module).__name__} model: missing '
      f'{missing}, unexpected {extra}, wrong shapes {wrong}.')


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(d, int) for d in x)
