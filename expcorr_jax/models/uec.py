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

Speed. The encoder works on 256-high copies, so nearly all the work is h at
full resolution: 2 * (3*64 + 64*64 + 64*3) FLOPs per pixel and pass, ~27
kFLOP per pixel for three passes, ~223 GFLOP for a 4K image. Computed layer by
layer over the whole image (`pixel_tile='off'`, the straightforward way), every
64-channel activation of a 4K image is a 2 GB array streamed through memory,
and a CPU spends its time waiting for it. By default (`pixel_tile='auto'`) a
CPU runs h and the blend tile by tile over the flattened pixels (`lax.map`),
so the activations of a tile stay in the cache, which makes inference several
times faster (benchmarks/uec_inference.py); other backends run the same
formulation on the whole image at once. The results agree with the
straightforward way to float32 rounding (~1e-7), gradients included.
"""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax.weights import unpickling

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
ENCODER_HEIGHT = 256
NUM_PARAMS = 19388
# Largest tile, in pixels, of the full-resolution corrector on a CPU: its
# 64-channel activations (8192 x 64 float32, 2 MiB) stay in the L2/L3 cache.
# Chosen with `benchmarks/uec_inference.py --tiles=...` (flat from 2k to 32k).
CPU_PIXEL_TILE = 8192


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


def _pixel_tiling(num_pixels: int, max_tile: int) -> tuple[int, int]:
  """(number of tiles, tile size) of equal tiles of about `max_tile` pixels.

  Equal tiles, rounded up to a multiple of 8 pixels, pad the image by less
  than 8 pixels per tile, where tiles of exactly `max_tile` could pad by
  almost a whole tile.
  """
  num_tiles = _ceil_div(num_pixels, max_tile)
  if num_tiles == 1:
    return 1, num_pixels
  tile = _ceil_div(_ceil_div(num_pixels, num_tiles), 8) * 8
  return _ceil_div(num_pixels, tile), tile


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _matmul(x: Array, kernel: Array, precision, dtype) -> Array:
  """x @ kernel, with operands cast to `dtype` (if any), accumulated in f32."""
  if dtype is None:
    return jnp.dot(x, kernel, precision=precision)
  return jnp.dot(x.astype(dtype), kernel.astype(dtype), precision=precision,
                 preferred_element_type=jnp.float32)


def _corrector_blends(params: dict[str, Any], pixels: Array,
                      lams: tuple[Array, ...], precision,
                      dtype) -> tuple[Array, ...]:
  """clamp(lam * h(pixels) + (1 - lam) * pixels, 0, 1) for each lam.

  The maths of `Corrector` then `UEC.correct_once`, for pixels (..., 3) and
  lambdas that broadcast against them. The first layer, with only 3 inputs,
  is three broadcast multiply-adds that XLA fuses with its bias and
  activation, rather than a matmul whose 64-channel output makes one more
  pass through memory (1.1-1.4x faster on a CPU, measured). Computing h once for several
  lambdas is what training needs.
  """
  enc, mid, dec = params['encoder'], params['mid_conv'], params['decoder']
  w = enc['kernel']
  # Summed in the order that rounds as XLA's CPU matmul does (bit for bit with
  # jax 0.10 on x86-64), so that the tiled and straightforward ways agree.
  h = (pixels[..., 2:3] * w[2]
       + (pixels[..., 1:2] * w[1] + pixels[..., 0:1] * w[0])) + enc['bias']
  h = nn.leaky_relu(h, 0.01)
  h = nn.leaky_relu(_matmul(h, mid['kernel'], precision, dtype) + mid['bias'],
                    0.01)
  h = _matmul(h, dec['kernel'], precision, dtype) + dec['bias']
  return tuple(jnp.clip(lam * h + (1 - lam) * pixels, 0, 1) for lam in lams)


def tiled_blends(params: dict[str, Any], images: Array,
                 lams: tuple[Array, ...], max_tile: int | None,
                 precision=_HIGHEST, dtype=None) -> tuple[Array, ...]:
  """One correction of `images` per lambda (each (batch,)), tile by tile.

  The pixels of each image are flattened and cut into equal tiles of about
  `max_tile` pixels (the last padded with zeros, whose outputs are dropped);
  `lax.map` runs the corrector on one tile at a time, so that its 64-channel
  activations never leave the cache. Tiles never straddle images, so an
  image's result does not depend on the rest of the batch. max_tile=None
  computes the whole batch at once. Differentiable; the backward pass also
  runs tile by tile.

  Args:
    params: the `Corrector`'s params ('encoder', 'mid_conv', 'decoder').
    images: (batch, height, width, 3).
    lams: blend weights, each of shape (batch,).
    max_tile: the most pixels per tile, or None for no tiling.
    precision: matmul precision.
    dtype: dtype of the matmul operands (e.g. bfloat16 on a GPU); None keeps
      the images' dtype. Activations and accumulation stay float32.

  Returns:
    One array like `images` per lambda.
  """
  batch, height, width, channels = images.shape
  num_pixels = height * width
  pixels = images.reshape(batch, num_pixels, channels)
  num_tiles, tile = _pixel_tiling(num_pixels, max_tile or num_pixels)
  if max_tile is None or num_tiles * batch == 1:
    outs = _corrector_blends(params, pixels,
                             tuple(lam[:, None, None] for lam in lams),
                             precision, dtype)
    return tuple(out.reshape(images.shape) for out in outs)
  padding = num_tiles * tile - num_pixels
  if padding:
    pixels = jnp.pad(pixels, ((0, 0), (0, padding), (0, 0)))
  tiles = pixels.reshape(batch * num_tiles, tile, channels)
  # Each tile lies in one image: its lambdas are that image's.
  tile_lams = jnp.repeat(jnp.stack(lams, axis=-1), num_tiles, axis=0)

  def one_tile(args):
    tile_pixels, lam = args
    return _corrector_blends(params, tile_pixels,
                             tuple(lam[i] for i in range(len(lams))),
                             precision, dtype)

  # Under differentiation, keep only each tile's input and recompute its
  # activations in the backward pass, in the cache, rather than store them
  # all in memory: training steps ran ~1.15-1.3x faster (uec_train.py).
  outs = jax.lax.map(jax.checkpoint(one_tile), (tiles, tile_lams))
  return tuple(out.reshape(batch, num_tiles * tile, channels)[:, :num_pixels]
               .reshape(images.shape) for out in outs)


class UEC(nn.Module):
  """The full UEC network; see the module docstring for the maths.

  Attributes:
    encoder_height: height the exposure encoder resizes to (256 officially).
    precision: matmul/conv precision; HIGHEST keeps GPU results at float32
      accuracy (TF32 would not match the checkpoints' reference outputs).
    pixel_tile: how the full-resolution corrector runs: 'auto' (tiles of
      CPU_PIXEL_TILE pixels when JAX's default backend is a CPU, the whole
      batch at once elsewhere), a positive int (tiles of at most that many
      pixels), or 'off' (the straightforward layer-by-layer `Corrector` over
      the whole image, the reference the others are tested against).
    corrector_dtype: dtype of the corrector's matmul operands except with
      pixel_tile='off'; None keeps float32. bfloat16 is for GPUs, where it
      stays within 1/255 of float32 (check with the inference benchmark).
  """
  encoder_height: int = ENCODER_HEIGHT
  precision: Any = _HIGHEST
  pixel_tile: int | str = 'auto'
  corrector_dtype: Any = None

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

  def correct_once(self, images: Array, lam: Array) -> Array:
    """One correction: clamp(lambda * h(x) + (1 - lambda) * x, 0, 1)."""
    if self._fast_path():
      return self._blends(images, (lam,))[0]
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
    if self._fast_path():  # All three first passes from one h(x), per tile.
      features_target = self.encode(target, size)
      lams = tuple(self.predictor(features_input, self.encode(r, size))
                   for r in (ref_lo, ref_hi))
      lams += (self.predictor(features_input, features_target),)
      out_lo, out_hi, x = self._blends(images, lams)
      for _ in range(num_passes - 1):
        lam = self.predictor(self.encode(x, size), features_target)
        x = self.correct_once(x, lam)
      return x, out_lo, out_hi
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

  def _fast_path(self) -> bool:
    """Whether h runs through `tiled_blends` (not during init: no params)."""
    if self.pixel_tile == 'off' or self.is_initializing():
      return False
    if self.pixel_tile != 'auto' and not (
        isinstance(self.pixel_tile, int) and self.pixel_tile > 0):
      raise ValueError(f"pixel_tile={self.pixel_tile!r}: use 'auto', 'off' "
                       'or a positive number of pixels')
    return True

  def _blends(self, images: Array, lams: tuple[Array, ...]
              ) -> tuple[Array, ...]:
    max_tile = self.pixel_tile
    if max_tile == 'auto':
      max_tile = CPU_PIXEL_TILE if jax.default_backend() == 'cpu' else None
    return tiled_blends(self.variables['params']['corrector'], images, lams,
                        max_tile, self.precision, self.corrector_dtype)

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
  return params_from_torch(unpickling.load_state_dict(path))
