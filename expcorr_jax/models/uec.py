"""UEC: unsupervised exposure correction with a reference image (ECCV 2024).

The network matches the official PyTorch code (see ../shared/notes/methods.md),
so that the released checkpoints load through `params_from_torch` and give the
same numbers:

  features(x) = [std, mean, max over space](relu(conv3x3/2(relu(conv7x7/2(x)))))
  lambda = fc4([tanh(fc3(features(x))), tanh(fc3(features(ref)))])
  pass(x) = clamp(lambda * h(x) + (1 - lambda) * x, 0, 1)

where h is a per-pixel MLP 3 -> 64 -> 64 -> 3 (the official 1x1 convs) run at
full resolution, and the features are computed on copies of x and ref resized
to (256, int(256 * w / h)) of x. The paper writes the blend the other way
round (lambda * x + (1 - lambda) * h(x)); the code, and so the checkpoints, use
the form above. Inference chains three passes with the same reference.

Use:

  model = UEC()
  params = load_official('radiometry.pth')   # or model.init(...)['params']
  out = model.apply({'params': params}, images, references)        # 3 passes
  one = model.apply({'params': params}, x, ref, method=UEC.single_pass)

Images are NHWC float32 in [0, 1]; references NHWC of any size, one per image
or a single one for the whole batch.
"""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax import torch_checkpoint

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
ENCODER_HEIGHT = 256
NUM_PARAMS = 19388


def encoder_size(height: int, width: int,
                 encoder_height: int = ENCODER_HEIGHT) -> tuple[int, int]:
  """The (height, width) that the exposure encoder sees for an input.

  The official code keeps the input's aspect ratio and truncates:
  (256, int(256 * w / h)). Integer arithmetic gives Python's exact result.
  """
  return encoder_height, int(encoder_height * width / height)


def _interpolation(in_size: int, out_size: int):
  """Source indices and weights of PyTorch's bilinear (align_corners=False).

  Half-pixel centres, src = (dst + 0.5) * in / out - 0.5, clamped at 0 (not
  at in - 1: past the last pixel both taps are the last pixel), no
  antialiasing. Computed in float32 as PyTorch's CPU kernel does.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5),
                   np.float32(0))
  i0 = np.minimum(src.astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (src - i0.astype(np.float32)).astype(np.float32)
  return i0, i1, w1


def resize_bilinear(images: Array, height: int, width: int) -> Array:
  """Resizes NHWC images as `F.interpolate(mode='bilinear')` does by default.

  That is align_corners=False, no antialiasing. `jax.image.resize` antialiases
  when downsampling (its triangle kernel widens with the scale), which the
  official encoder input does not. With antialias=False it uses the same
  taps and border handling (renormalising the weights that fall inside) and
  agrees to ~2e-6, but computes coordinates differently; this version
  reproduces PyTorch's float32 coordinates, with one gather and lerp per axis
  and no matmul whose precision would depend on the backend.
  """
  in_h, in_w = images.shape[1], images.shape[2]
  i0, i1, w1 = _interpolation(in_h, height)
  w1 = jnp.asarray(w1, images.dtype)[None, :, None, None]
  images = (jnp.take(images, i0, axis=1) * (1 - w1)
            + jnp.take(images, i1, axis=1) * w1)
  i0, i1, w1 = _interpolation(in_w, width)
  w1 = jnp.asarray(w1, images.dtype)[None, None, :, None]
  return (jnp.take(images, i0, axis=2) * (1 - w1)
          + jnp.take(images, i1, axis=2) * w1)


def _torch_kernel_init():
  """PyTorch's default weight init, U(+-1/sqrt(fan_in)), for fresh training."""
  return nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def _torch_bias_init(fan_in: int):
  """PyTorch's default bias init, U(+-1/sqrt(fan_in))."""
  bound = 1 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _dense(features: int, fan_in: int, precision, name: str) -> nn.Dense:
  return nn.Dense(features, precision=precision, name=name,
                  kernel_init=_torch_kernel_init(),
                  bias_init=_torch_bias_init(fan_in))


class ExposureEncoder(nn.Module):
  """Two strided convs, then per-channel (unbiased std, mean, max) -> 96."""
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, images: Array) -> Array:
    x = images
    for name, in_ch, k in (('conv1', 3, 7), ('conv2', 32, 3)):
      x = nn.Conv(32, (k, k), strides=2, padding=((1, 1), (1, 1)),
                  precision=self.precision, name=name,
                  kernel_init=_torch_kernel_init(),
                  bias_init=_torch_bias_init(in_ch * k * k))(x)
      x = nn.relu(x)
    std = jnp.std(x, axis=(1, 2), ddof=1)
    mean = jnp.mean(x, axis=(1, 2))
    peak = jnp.max(x, axis=(1, 2))
    return jnp.concatenate([std, mean, peak], axis=-1)


class DifferencePredictor(nn.Module):
  """Blend weight lambda from the input's and the reference's features."""
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, features_input: Array, features_reference: Array) -> Array:
    """Returns lambda of shape (batch,); unbounded, as in the official code."""
    fc3 = _dense(8, 96, self.precision, 'fc3')  # Shared by both images.
    a = jnp.tanh(fc3(features_input))
    b = jnp.tanh(fc3(features_reference))
    b = jnp.broadcast_to(b, a.shape)
    both = jnp.concatenate([a, b], axis=-1)
    return _dense(1, 16, self.precision, 'fc4')(both)[..., 0]


class Corrector(nn.Module):
  """h: the official 1x1-conv stack, as the per-pixel MLP it is."""
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, images: Array) -> Array:
    x = _dense(64, 3, self.precision, 'encoder')(images)
    x = nn.leaky_relu(x, 0.01)
    x = _dense(64, 64, self.precision, 'mid_conv')(x)
    x = nn.leaky_relu(x, 0.01)
    return _dense(3, 64, self.precision, 'decoder')(x)


class UEC(nn.Module):
  """The full UEC network; see the module docstring for the maths.

  Attributes:
    encoder_height: height the exposure encoder resizes to (256 officially).
    precision: matmul/conv precision; HIGHEST keeps GPU results at float32
      accuracy (TF32 would not match the checkpoints' reference outputs).
  """
  encoder_height: int = ENCODER_HEIGHT
  precision: Any = _HIGHEST

  def setup(self):
    self.image_encoder = ExposureEncoder(self.precision)
    self.predictor = DifferencePredictor(self.precision)
    self.corrector = Corrector(self.precision)

  def __call__(self, images: Array, references: Array,
               num_passes: int = 3) -> Array:
    """Corrected images after `num_passes` passes (3 at inference)."""
    return self.multi_pass(images, references, num_passes)

  def encode(self, images: Array, size: tuple[int, int]) -> Array:
    """Exposure features (batch, 96) of images resized to `size`."""
    return self.image_encoder(resize_bilinear(images, *size))

  def encode_reference(self, references: Array, like: Array) -> Array:
    """Features of the references resized to the encoder size of `like`."""
    return self.encode(references, self._size(like))

  def predict_lambda(self, images: Array, features_reference: Array) -> Array:
    """Blend weight (batch,) for images given the references' features."""
    return self.predictor(self.encode(images, self._size(images)),
                          features_reference)

  def correct_once(self, images: Array, lam: Array) -> Array:
    """One correction: clamp(lambda * h(x) + (1 - lambda) * x, 0, 1)."""
    lam = lam[:, None, None, None]
    out = lam * self.corrector(images) + (1 - lam) * images
    return jnp.clip(out, 0, 1)

  def single_pass(self, images: Array, references: Array) -> Array:
    """One pass, as the monotonicity loss uses it."""
    return self.multi_pass(images, references, 1)

  def multi_pass(self, images: Array, references: Array,
                 num_passes: int = 3) -> Array:
    """`num_passes` passes, lambda re-predicted from each pass's output."""
    return self.intermediates(images, references, num_passes)['outputs'][-1]

  def intermediates(self, images: Array, references: Array,
                    num_passes: int = 3) -> dict[str, Any]:
    """Runs the passes and returns everything each one computed.

    Returns:
      A dict with 'features_reference' (batch or 1, 96), computed once since
      the reference and its size do not change between passes, and per pass
      lists 'features_input' [(batch, 96)], 'lambdas' [(batch,)] and
      'outputs' [(batch, H, W, 3)].
    """
    self._check(images, references)
    size = self._size(images)
    features_reference = self.encode(references, size)
    result = {'features_reference': features_reference, 'features_input': [],
              'lambdas': [], 'outputs': []}
    x = images
    for _ in range(num_passes):
      features = self.encode(x, size)
      lam = self.predictor(features, features_reference)
      x = self.correct_once(x, lam)
      result['features_input'].append(features)
      result['lambdas'].append(lam)
      result['outputs'].append(x)
    return result

  def training_outputs(self, images: Array, target: Array, ref_lo: Array,
                       ref_hi: Array, num_passes: int = 3
                       ) -> tuple[Array, Array, Array]:
    """What the UEC loss needs, computing shared work once.

    Equals (multi_pass(images, target, num_passes), single_pass(images,
    ref_lo), single_pass(images, ref_hi)), but the input's features and h(x)
    of the first pass are computed once for all three instead of three
    times: training runs about a third faster.
    """
    for references in (target, ref_lo, ref_hi):
      self._check(images, references)
    size = self._size(images)
    features_input = self.encode(images, size)
    correction = self.corrector(images)

    def blend(lam):  # A pass on the input, reusing h(input).
      lam = lam[:, None, None, None]
      return jnp.clip(lam * correction + (1 - lam) * images, 0, 1)

    out_lo = blend(self.predictor(features_input, self.encode(ref_lo, size)))
    out_hi = blend(self.predictor(features_input, self.encode(ref_hi, size)))
    features_target = self.encode(target, size)
    x = blend(self.predictor(features_input, features_target))
    for _ in range(num_passes - 1):
      lam = self.predictor(self.encode(x, size), features_target)
      x = self.correct_once(x, lam)
    return x, out_lo, out_hi

  def _size(self, images: Array) -> tuple[int, int]:
    return encoder_size(images.shape[1], images.shape[2], self.encoder_height)

  @staticmethod
  def _check(images: Array, references: Array):
    if images.ndim != 4 or references.ndim != 4:
      raise ValueError(f'images {images.shape} and references '
                       f'{references.shape} must both be NHWC')
    if references.shape[0] not in (1, images.shape[0]):
      raise ValueError(f'{references.shape[0]} references for '
                       f'{images.shape[0]} images: give one per image or one')


# torch key prefix -> (path in the Flax params, kind).
_TORCH_LAYERS = {
    'image_encoder.conv1': (('image_encoder', 'conv1'), 'conv', (32, 3, 7, 7)),
    'image_encoder.conv2': (('image_encoder', 'conv2'), 'conv', (32, 32, 3, 3)),
    'mExCorrector.ex_block.encoder': (('corrector', 'encoder'), 'conv1x1',
                                      (64, 3, 1, 1)),
    'mExCorrector.ex_block.mid_conv': (('corrector', 'mid_conv'), 'conv1x1',
                                       (64, 64, 1, 1)),
    'mExCorrector.ex_block.decoder': (('corrector', 'decoder'), 'conv1x1',
                                      (3, 64, 1, 1)),
    'mDiffPredictor.fc3': (('predictor', 'fc3'), 'linear', (8, 96)),
    'mDiffPredictor.fc4': (('predictor', 'fc4'), 'linear', (1, 16)),
}


def params_from_torch(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """Converts an official UEC state_dict into this module's params.

  Conv weights go from OIHW to HWIO, 1x1 convs and Linear layers become Dense
  kernels (in, out). Any missing, unexpected or misshapen entry is an error
  that names it, so a wrong checkpoint cannot load silently.
  """
  expected = {}
  for prefix, (_, _, shape) in _TORCH_LAYERS.items():
    expected[f'{prefix}.weight'] = shape
    expected[f'{prefix}.bias'] = (shape[0],)
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected))
  wrong = sorted(f'{k} {tuple(np.shape(state_dict[k]))} (expected {s})'
                 for k, s in expected.items()
                 if k in state_dict and tuple(np.shape(state_dict[k])) != s)
  if missing or unexpected or wrong:
    raise ValueError(
        'not an official UEC state_dict: '
        f'missing keys {missing}, unexpected keys {unexpected}, '
        f'wrong shapes {wrong}')
  params: dict[str, Any] = {}
  for prefix, ((module, layer), kind, _) in _TORCH_LAYERS.items():
    weight = np.asarray(state_dict[f'{prefix}.weight'], np.float32)
    if kind == 'conv':
      kernel = weight.transpose(2, 3, 1, 0)
    elif kind == 'conv1x1':
      kernel = weight[:, :, 0, 0].T
    else:
      kernel = weight.T
    bias = np.asarray(state_dict[f'{prefix}.bias'], np.float32)
    params.setdefault(module, {})[layer] = {
        'kernel': jnp.asarray(np.ascontiguousarray(kernel)),
        'bias': jnp.asarray(bias)}
  return params


def load_official(path: str | os.PathLike) -> dict[str, Any]:
  """Params from an official `.pth` checkpoint (read without torch, safely)."""
  return params_from_torch(torch_checkpoint.load_state_dict(path))
