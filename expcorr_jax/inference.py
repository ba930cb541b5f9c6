"""Exposure correction of photos with a trained or official model.

  from expcorr_jax import inference
  corrector = inference.Corrector.from_checkpoint('workdir')
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

A training checkpoint names its method in its saved config, so `model=` is
needed only for an official `.pth` (which records none); given for a
training checkpoint, it is checked. Loading is `model_loading.load`, the
one loader every tool uses: the network is built by the method's task from
the checkpoint's saved config (its `model_<field>` entries, e.g.
`model_encoder_height` -> `UEC.encoder_height`, `model_nc` -> `RECNet.nc`),
or from an official `.pth`'s weights' shapes (a RECNet of any width and
depth).

Each distinct (shape, dtype) of the inputs compiles once: a folder of photos
from one camera compiles once and every later photo reuses that executable
(`corrections`, the one cache of compiled corrections, shared with
evaluation and between correctors of equal models). The integer-to-float
conversion runs on the device, so uint8 photos cross to an accelerator at a
quarter of the float32 size.
"""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax import checkpointing
from expcorr_jax import corrections
from expcorr_jax import model_loading
from expcorr_jax import pixels
from expcorr_jax import tasks
from expcorr_jax.tasks import contract

_DTYPES_TEXT = 'uint8, uint16 or float (in [0, 1])'
# Float pixels this far outside [0, 1] are float rounding (e.g. 1.0000001
# after a float resize) and are clipped; anything farther is refused.
_FLOAT_RANGE_TOLERANCE = 1e-5


def _supported(method: str) -> contract.Task:
  """The task of `method`, which must support inference."""
  try:
    task = tasks.get_task(method)
  except ValueError as e:
    raise ValueError(f'Inference does not support model {method!r}: {e}'
                     ) from e
  return _correctable(task)


def _correctable(task: contract.Task) -> contract.Task:
  """`task`, which must support inference."""
  if task.inference is None:
    raise ValueError(f'Inference does not support model {task.name!r}: its '
                     'checkpoints are not correctors.')
  return task


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

  def __init__(self, model: nn.Module, params: Any, method: str):
    """Wraps `model` and its `params` (e.g. `uec.load_official(path)`).

    Args:
      model: the network.
      params: its params.
      method: the task's name or module path (`tasks.get_task`), e.g.
        'uec'.

    Raises:
      ValueError: the method is unknown or not a corrector, the model is not
        its network, the params do not fit, or some are NaN or infinite.
    """
    task = _supported(method)
    module_type = task.inference.module_type
    if not isinstance(model, module_type):
      raise ValueError(f'A {type(model).__name__} is not a {method!r} '
                       f'network ({module_type.__name__}).')
    model_loading.check_params(task, model, params)
    checkpointing.check_finite(params, 'The params')
    self._wrap(task, model, params)

  def _wrap(self, task: contract.Task, model: nn.Module, params: Any) -> None:
    self._task = task
    self.model_name = task.name
    self.model = model
    self.params = jax.device_put(params)
    self.needs_reference = task.needs_reference
    self.num_compilations = 0

  @classmethod
  def from_checkpoint(cls, path: str | os.PathLike[str],
                      model: str | None = None,
                      **overrides: Any) -> 'Corrector':
    """A corrector from a checkpoint of this project or an official `.pth`.

    Args:
      path: an official PyTorch `.pth` file, or a training workdir, its
        `checkpoints/` folder or one step's folder (the latest step unless a
        step folder is given).
      model: the method of an official `.pth`, e.g. 'uec' or 'recnet' (a
        task name or module path, as `config.model`); for a training
        checkpoint, which records its method, None or a check.
      **overrides: model settings (module fields, e.g. encoder_height=256)
        that replace those of the saved training config, or those read off
        an official checkpoint's weights.

    Raises:
      FileNotFoundError: nothing at `path`.
      ValueError: no method for a `.pth`, an unsupported method, a
        checkpoint of another method than `model`, or weights that do not
        fit the model.
    """
    if model is not None:
      _supported(model)  # A typo is named as such, not as a mismatch.
    loaded = model_loading.load(path, model=model, overrides=overrides)
    corrector = cls.__new__(cls)  # Checked by the loader: no second check.
    corrector._wrap(  # pylint: disable=protected-access
        _correctable(loaded.task), loaded.model, loaded.correction_params())
    return corrector

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
    out, compiled = corrections.run(self._task, self.model, self.params,
                                    batch, reference)
    self.num_compilations += compiled
    out = np.array(out)  # A writable host copy.
    return out[0] if single else out
