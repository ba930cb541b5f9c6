"""Exposure correction of photos with a trained or official model.

  from expcorr_jax import inference
  corrector = inference.Corrector.from_checkpoint('workdir', model='uec')
  out = corrector(images, reference=ref)

  corrector = inference.Corrector.from_checkpoint('recnet.pth', model='recnet')
  out = corrector(images)

`images` is HxWx3 or NxHxWx3, uint8, uint16 or float in [0, 1] (float
rounding up to 1e-5 outside is clipped, anything more is refused); `out` is a
float32 numpy array in [0, 1] of the same shape. A UEC corrector needs a
reference (HxWx3 of any size) whose exposure the output should match; RECNet
takes none. Both run at full resolution at any size: UEC is pixel-wise after
its exposure encoder, and RECNet's instance norm and channel attention are
global over the image, so tiling would change its result.

Each distinct (shape, dtype) of the inputs compiles once: a folder of photos
from one camera compiles once and every later photo reuses that executable
(kept in a small LRU cache that correctors of equal models share).
The integer-to-float conversion runs on the device, so uint8 photos cross to
an accelerator at a quarter of the float32 size.

A model is corrected by its method's task (`expcorr_jax/tasks/<method>.py`,
found by name: `tasks.get_task`): `Task.correct` applies it, and its
`InferenceHooks` give the network class, how to load official weights and
which sizes it cannot take. A training checkpoint's model is built from its
saved config, whose `model_<field>` entries set the module's fields (e.g.
`model_encoder_height` -> `UEC.encoder_height`, `model_nc` -> `RECNet.nc`);
an official `.pth` sets them from its weights' shapes (a RECNet of any width
and depth).
"""

import collections
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax import checkpointing
from expcorr_jax import pixels
from expcorr_jax import tasks
from expcorr_jax.tasks import contract

# Executables kept (shared by all correctors); each is small, but a folder of
# photos of many sizes should not hold one per size forever.
_MAX_COMPILED = 16
_DTYPES_TEXT = 'uint8, uint16 or float (in [0, 1])'
# Float pixels this far outside [0, 1] are float rounding (e.g. 1.0000001
# after a float resize) and are clipped; anything farther is refused.
_FLOAT_RANGE_TOLERANCE = 1e-5
_MODELS_PACKAGE = 'expcorr_jax.models.'


def _task(name: str) -> contract.Task:
  """The task of method `name`, which must support inference."""
  try:
    task = tasks.get_task(name)
  except ValueError as e:
    raise ValueError(f'Inference does not support model {name!r}: {e}') from e
  if task.inference is None:
    raise ValueError(f'Inference does not support model {name!r}: its '
                     'checkpoints are not correctors.')
  return task


def _method_of(model: nn.Module) -> str:
  """The method of a built-in network: models/<method>.py's class."""
  module_name = type(model).__module__
  if module_name.startswith(_MODELS_PACKAGE):
    return module_name[len(_MODELS_PACKAGE):]
  raise ValueError(
      f'Inference does not support {type(model).__name__} models as such: '
      'pass method=<the task\'s name or module path> to Corrector.')


def _check_params(task: contract.Task, module: nn.Module, params: Any) -> None:
  """Raises ValueError naming the mismatch if params do not fit `module`."""
  expected = jax.eval_shape(
      lambda: task.init_params(module, jax.random.key(0)))
  expected_shapes = jax.tree.map(lambda a: tuple(a.shape), expected)
  try:
    actual_shapes = jax.tree.map(lambda a: tuple(np.shape(a)), params)
  except (TypeError, ValueError) as e:
    raise ValueError(f'params are not a tree of arrays: {e}') from e
  if actual_shapes != expected_shapes:
    flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected_shapes,
                                                             is_leaf=_is_shape))
    flat_actual = dict(jax.tree_util.tree_leaves_with_path(actual_shapes,
                                                           is_leaf=_is_shape))
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


def _as_array(x: Any, what: str) -> np.ndarray | jax.Array:
  """A numpy or JAX array with a supported dtype; float64 becomes float32."""
  if not isinstance(x, (np.ndarray, jax.Array)):
    x = np.asarray(x)
  dtype = np.dtype(x.dtype)
  if pixels.is_integer_pixels(dtype):
    return x
  if jnp.issubdtype(dtype, jnp.floating):
    if dtype == np.float64:
      x = x.astype(np.float32)
    xp = np if isinstance(x, np.ndarray) else jnp
    lo, hi = float(xp.min(x)), float(xp.max(x))
    tol = _FLOAT_RANGE_TOLERANCE
    if not (x.size == 0 or (lo >= -tol and hi <= 1 + tol)):  # NaN fails too.
      raise ValueError(f'{what} are {dtype} with values in [{lo}, {hi}]; '
                       'float images must lie in [0, 1] (clip them, or pass '
                       'the uint8/uint16 pixels).')
    if lo < 0 or hi > 1:  # Rounding from a float resize or colour transform.
      x = xp.clip(x, 0, 1)
    return x
  raise ValueError(f'{what} have dtype {dtype}; expected {_DTYPES_TEXT}.')


class Corrector:
  """Corrects photos with one model and its params; see the module docstring.

  Attributes:
    model: the Flax module.
    params: its params, on the default device.
    model_name: the method's name, e.g. 'uec' or 'recnet' (its task's).
    needs_reference: whether calls must pass a reference image.
    num_compilations: how many executables this corrector compiled so far:
      one per distinct (images shape, dtype, reference shape, dtype), fewer
      where a corrector of an equal model compiled them already.
  """

  def __init__(self, model: nn.Module, params: Any,
               method: str | None = None):
    """Wraps `model` and its `params` (e.g. `uec.load_official(path)`).

    Args:
      model: the network.
      params: its params.
      method: the task's name or module path (`tasks.get_task`); None for a
        network of `expcorr_jax/models/<method>.py`, whose method it is.

    Raises:
      ValueError: the model kind is not supported, the params do not fit,
        or some are NaN or infinite.
    """
    self.model_name = _method_of(model) if method is None else method
    self._task = _task(self.model_name)
    module_type = self._task.inference.module_type
    if not isinstance(model, module_type):
      raise ValueError(f'A {type(model).__name__} is not a '
                       f'{self.model_name!r} network ({module_type.__name__}).')
    _check_params(self._task, model, params)
    checkpointing.check_finite(params, 'The params')
    self.model = model
    self.params = jax.device_put(params)
    self.needs_reference = self._task.needs_reference
    self.num_compilations = 0

  @classmethod
  def from_checkpoint(cls, path: str | os.PathLike[str], model: str = 'uec',
                      **overrides: Any) -> 'Corrector':
    """A corrector from a checkpoint of this project or an official `.pth`.

    Args:
      path: an official PyTorch `.pth` file, or a training workdir, its
        `checkpoints/` folder or one step's folder (the latest step unless a
        step folder is given).
      model: the method whose checkpoint it is, e.g. 'uec' or 'recnet' (a
        task name or module path, as `config.model`).
      **overrides: model settings (module fields, e.g. encoder_height=256)
        that replace those of the saved training config, or those read off
        an official checkpoint's weights.

    Raises:
      FileNotFoundError: nothing at `path`.
      ValueError: `model` is unsupported, the checkpoint holds another model,
        or the weights do not fit the model.
    """
    hooks = _task(model).inference
    path = os.fspath(path)
    if path.lower().endswith('.pth'):
      if not os.path.isfile(path):
        raise FileNotFoundError(f'No checkpoint file {path}.')
      if hooks.load_official is None:
        raise ValueError(f'{model!r} has no official weights to read from '
                         f'{path}; give a training workdir instead.')
      params, fields = hooks.load_official(path)
      checkpointing.check_finite(params, path)
      config = {f'model_{k}': v for k, v in fields.items()}
    else:
      if not os.path.exists(path):
        raise FileNotFoundError(
            f'No checkpoint at {path}: give an official .pth file, a training '
            'workdir, its checkpoints/ folder or a step folder.')
      params, config, _ = checkpointing.load_params(path)
      saved = config.get('model')
      if saved is None:
        raise ValueError(f'{path} has no model name in its saved config.')
      if saved != model:
        raise ValueError(
            f'{path} holds a {saved!r} checkpoint, not {model!r}: load it '
            f'with model={saved!r}.')
    return cls(contract.build_module(hooks.module_type, config, overrides),
               params, method=model)

  def __call__(self, images: Any, reference: Any = None) -> np.ndarray:
    """Corrects HxWx3 or NxHxWx3 images; returns float32 in [0, 1] alike.

    Args:
      images: uint8, uint16 or float pixels in [0, 1]; any height and width.
      reference: for UEC, one HxWx3 image (any size, same dtypes) whose
        exposure every output should match; None for reference-free models.

    Raises:
      ValueError: a shape, dtype, value range or missing/extra reference,
        with what was expected.
    """
    images = _as_array(images, 'images')
    if images.ndim not in (3, 4) or images.shape[-1] != 3 or 0 in images.shape:
      raise ValueError(f'images have shape {images.shape}; expected HxWx3 or '
                       'NxHxWx3 RGB with N, H, W >= 1.')
    single = images.ndim == 3
    batch = images[None] if single else images
    if self._task.inference.check_size is not None:
      self._task.inference.check_size(self.model, batch.shape[1],
                                      batch.shape[2])
    if self.needs_reference:
      if reference is None:
        raise ValueError(f'{self.model_name} needs a reference image: call '
                         'corrector(images, reference=HxWx3 image).')
      reference = _as_array(reference, 'reference pixels')
      if (reference.ndim != 3 or reference.shape[-1] != 3 or
          0 in reference.shape):
        raise ValueError(f'The reference has shape {reference.shape}; '
                         'expected one HxWx3 RGB image with H, W >= 1.')
      reference = reference[None]
    elif reference is not None:
      raise ValueError(f'{self.model_name} takes no reference image.')
    out = self._executable(batch, reference)(self.params, batch, reference)
    out = np.array(out)  # A writable host copy.
    return out[0] if single else out

  def _executable(self, images, reference):
    """The compiled function for these input shapes and dtypes (LRU cache).

    The cache is shared by correctors of equal models (params are arguments,
    not constants), so a second corrector of the same architecture, e.g. for
    another checkpoint, reuses the executables.
    """
    key = (self._task, self.model, _avals(self.params), _avals(images),
           _avals(reference))
    if key in _EXECUTABLES:
      _EXECUTABLES.move_to_end(key)
      return _EXECUTABLES[key]
    compiled = _jitted(self._task, self.model).lower(self.params, images,
                                         reference).compile()
    self.num_compilations += 1
    _EXECUTABLES[key] = compiled
    if len(_EXECUTABLES) > _MAX_COMPILED:
      _EXECUTABLES.popitem(last=False)
    return compiled


# (model, params, images, reference avals) -> executable, least recent first.
_EXECUTABLES: collections.OrderedDict[Any, Any] = collections.OrderedDict()


def _avals(tree: Any) -> Any:
  """A hashable description of a tree's structure, shapes and dtypes."""
  leaves, structure = jax.tree.flatten(tree)
  return structure, tuple((np.shape(x), np.dtype(x.dtype)) for x in leaves)


@functools.lru_cache(maxsize=None)
def _jitted(task: contract.Task, model: nn.Module):
  """The jitted correction for one model: ints to floats, then its method."""

  def correct(params, images, reference):
    images = pixels.to_float(images)
    if reference is not None:
      reference = pixels.to_float(reference)
    return task.apply_correction(model, params, images, reference)
  return jax.jit(correct)
