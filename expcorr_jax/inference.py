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

Each kind of model has a `_Method` entry in `_METHODS` (its module class, how
to load official weights and to apply it, whether it needs a reference). A
training checkpoint's model is built from its saved config, whose
`model_<field>` entries set the module's fields (e.g. `model_encoder_height`
-> `UEC.encoder_height`, `model_nc` -> `RECNet.nc`); an official `.pth`
sets them from its weights' shapes (a RECNet of any width and depth).
"""

import collections
import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax import checkpointing
from expcorr_jax import torch_checkpoint
from expcorr_jax.models import recnet
from expcorr_jax.models import uec

# Executables kept (shared by all correctors); each is small, but a folder of
# photos of many sizes should not hold one per size forever.
_MAX_COMPILED = 16
_INTEGER_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_DTYPES_TEXT = 'uint8, uint16 or float (in [0, 1])'
# Float pixels this far outside [0, 1] are float rounding (e.g. 1.0000001
# after a float resize) and are clipped; anything farther is refused.
_FLOAT_RANGE_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class _Method:
  """What inference needs to know about one kind of model.

  Attributes:
    module_type: the Flax module class.
    needs_reference: whether the model corrects towards a reference image.
    load_official: path of an official `.pth` checkpoint -> (params, module
      fields read off the weights, e.g. RECNet's width).
    example_inputs: (image, reference or None) shapes for `init`, used to
      check that loaded params fit the model.
    apply: (module, params, images, reference) -> corrected images; images
      NHWC float32 in [0, 1], reference 1HWC float32 or None.
    check_size: (module, height, width) -> None; raises ValueError for image
      sizes the model cannot process.
  """
  module_type: type[nn.Module]
  needs_reference: bool
  load_official: Callable[[str], tuple[Any, dict[str, Any]]]
  example_inputs: tuple[tuple[int, ...], tuple[int, ...] | None]
  apply: Callable[..., jax.Array]
  check_size: Callable[[nn.Module, int, int], None]


def _uec_apply(module: uec.UEC, params: Any, images: jax.Array,
               reference: jax.Array) -> jax.Array:
  """The official inference: three passes towards the reference."""
  return module.apply({'params': params}, images, reference, 3,
                      method=uec.UEC.multi_pass)


# The encoder's first conv (7x7, stride 2, padding 1) needs 5 columns.
_UEC_MIN_ENCODER_WIDTH = 5


def _uec_check_size(module: uec.UEC, height: int, width: int) -> None:
  """UEC resizes inputs to (encoder_height, width alike): not too narrow."""
  size = uec.encoder_size(height, width, module.encoder_height)
  if size[1] < _UEC_MIN_ENCODER_WIDTH:
    raise ValueError(
        f'A {height}x{width} image is too narrow for UEC: its exposure encoder '
        f'sees it resized to {size[0]}x{size[1]}, and needs at least '
        f'{_UEC_MIN_ENCODER_WIDTH} columns (width/height >= '
        f'{_UEC_MIN_ENCODER_WIDTH}/{module.encoder_height}).')


def _recnet_load_official(path: str) -> tuple[Any, dict[str, Any]]:
  """Params and RECNet(nc, num_blocks, ...) of an official state_dict."""
  state_dict = torch_checkpoint.load_state_dict(path)
  return recnet.params_from_torch(state_dict), recnet.infer_config(state_dict)


def _recnet_apply(module: recnet.RECNet, params: Any, images: jax.Array,
                  reference: None) -> jax.Array:
  """The network's corrected image (its mask and features are dropped)."""
  del reference
  return module.apply({'params': params}, images).output


def _any_size(module: nn.Module, height: int, width: int) -> None:
  del module, height, width


_METHODS: dict[str, _Method] = {
    'uec': _Method(
        module_type=uec.UEC,
        needs_reference=True,
        load_official=lambda path: (uec.load_official(path), {}),
        example_inputs=((1, 32, 32, 3), (1, 32, 32, 3)),
        apply=_uec_apply,
        check_size=_uec_check_size),
    'recnet': _Method(
        module_type=recnet.RECNet,
        needs_reference=False,
        load_official=_recnet_load_official,
        example_inputs=((1, 16, 16, 3), None),
        apply=_recnet_apply,
        check_size=_any_size),
}
SUPPORTED_MODELS = tuple(sorted(_METHODS))


def _method(name: str) -> _Method:
  if name not in _METHODS:
    raise ValueError(f'Inference does not support model {name!r} yet; '
                     f'supported: {list(SUPPORTED_MODELS)}.')
  return _METHODS[name]


def _method_name_of(module: nn.Module) -> str:
  for name, method in _METHODS.items():
    if isinstance(module, method.module_type):
      return name
  raise ValueError(f'Inference does not support {type(module).__name__} '
                   f'models yet; supported: {list(SUPPORTED_MODELS)}.')


def _module_fields(module_type: type[nn.Module]) -> list[str]:
  return [f.name for f in dataclasses.fields(module_type)
          if f.init and f.name not in ('parent', 'name')]


def _build_module(name: str, config: dict[str, Any],
                  overrides: dict[str, Any]) -> nn.Module:
  """The module of a training config, whose `model_<field>` set its fields.

  E.g. config['model_encoder_height'] becomes UEC(encoder_height=...);
  `overrides` (field names) win over the config.
  """
  module_type = _method(name).module_type
  fields = _module_fields(module_type)
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f'Unknown {module_type.__name__} settings {unknown}; '
                     f'valid: {fields}.')
  kwargs = {f: config[f'model_{f}'] for f in fields if f'model_{f}' in config}
  kwargs.update(overrides)
  return module_type(**kwargs)


def _check_params(name: str, module: nn.Module, params: Any) -> None:
  """Raises ValueError naming the mismatch if params do not fit `module`."""
  image_shape, reference_shape = _method(name).example_inputs
  inputs = [jnp.zeros(image_shape, jnp.float32)]
  if reference_shape is not None:
    inputs.append(jnp.zeros(reference_shape, jnp.float32))
  expected = jax.eval_shape(
      lambda: module.init(jax.random.key(0), *inputs))['params']
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
  if dtype in _INTEGER_SCALES:
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


def _to_unit_float(x: jax.Array) -> jax.Array:
  """uint8/uint16 -> float32 in [0, 1] (on the device); floats -> float32."""
  scale = _INTEGER_SCALES.get(np.dtype(x.dtype))
  if scale is None:
    return x.astype(jnp.float32)
  return x.astype(jnp.float32) / scale


class Corrector:
  """Corrects photos with one model and its params; see the module docstring.

  Attributes:
    model: the Flax module.
    params: its params, on the default device.
    model_name: 'uec' or 'recnet' (the key of `_METHODS`).
    needs_reference: whether calls must pass a reference image.
    num_compilations: how many executables this corrector compiled so far:
      one per distinct (images shape, dtype, reference shape, dtype), fewer
      where a corrector of an equal model compiled them already.
  """

  def __init__(self, model: nn.Module, params: Any):
    """Wraps `model` and its `params` (e.g. `uec.load_official(path)`).

    Raises:
      ValueError: the model kind is not supported, or the params do not fit.
    """
    self.model_name = _method_name_of(model)
    self._method = _METHODS[self.model_name]
    _check_params(self.model_name, model, params)
    self.model = model
    self.params = jax.device_put(params)
    self.needs_reference = self._method.needs_reference
    self.num_compilations = 0

  @classmethod
  def from_checkpoint(cls, path: str | os.PathLike[str], model: str = 'uec',
                      **overrides: Any) -> 'Corrector':
    """A corrector from a checkpoint of this project or an official `.pth`.

    Args:
      path: an official PyTorch `.pth` file, or a training workdir, its
        `checkpoints/` folder or one step's folder (the latest step unless a
        step folder is given).
      model: the kind of model the checkpoint holds: 'uec' or 'recnet'.
      **overrides: model settings (module fields, e.g. encoder_height=256)
        that replace those of the saved training config, or those read off
        an official checkpoint's weights.

    Raises:
      FileNotFoundError: nothing at `path`.
      ValueError: `model` is unsupported, the checkpoint holds another model,
        or the weights do not fit the model.
    """
    _method(model)
    path = os.fspath(path)
    if path.lower().endswith('.pth'):
      if not os.path.isfile(path):
        raise FileNotFoundError(f'No checkpoint file {path}.')
      params, fields = _method(model).load_official(path)
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
    return cls(_build_module(model, config, overrides), params)

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
    self._method.check_size(self.model, batch.shape[1], batch.shape[2])
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
    key = (self.model, _avals(self.params), _avals(images),
           _avals(reference))
    if key in _EXECUTABLES:
      _EXECUTABLES.move_to_end(key)
      return _EXECUTABLES[key]
    compiled = _jitted(self.model).lower(self.params, images,
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
def _jitted(model: nn.Module):
  """The jitted correction for one model: ints to floats, then its method."""
  method = _METHODS[_method_name_of(model)]

  def correct(params, images, reference):
    images = _to_unit_float(images)
    if reference is not None:
      reference = _to_unit_float(reference)
    return method.apply(model, params, images, reference)
  return jax.jit(correct)
