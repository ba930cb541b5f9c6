"""SSIM with a Gaussian window, for losses and evaluation metrics.

SSIM (Wang et al. 2004) per pixel and per channel:

  ((2 mu_x mu_y + C1) (2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1) (s_x^2 + s_y^2 + C2))

with local means / (co)variances from a normalised 11x11 Gaussian window
(sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = `max_val` (the data range),
and variances as E[x^2] - E[x]^2 (biased, as every common implementation).
Channels are handled independently and the map is averaged over pixels and
channels (and the batch, unless per_image=True).

Implementations in the literature differ in the border handling, which moves
the score by up to ~0.01, so the padding is explicit:
  - 'zero': pad window // 2 zeros so the map keeps the image size; the
    official RECNet training loss (pytorch-ssim style `F.conv2d(padding=5)`).
  - 'valid': only windows fully inside the image (map shrinks by
    window_size - 1); scikit-image / the classic MATLAB & cv2 evaluation code
    (cv2.filter2D followed by a [5:-5] crop is exactly this).
Grayscale is just one channel: pass (H, W), (H, W, 1) or (N, H, W, 1); to
score colour images on luma, convert to Y first and pass the result.
Computed in the input dtype (float32 for JAX defaults); cast uint8 images to
float and set max_val=255 (or scale to [0, 1]) before calling.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['gaussian_window', 'ssim', 'ssim_map']

_PADDINGS = ('zero', 'valid')


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Normalised 2-D Gaussian window (size, size), float32.

  The 1-D taps exp(-(i - size // 2)^2 / (2 sigma^2)) are normalised to sum 1
  and the 2-D window is their outer product, as pytorch-ssim / cv2 build it.
  """
  g = gaussian_taps(size, sigma).astype(np.float64)
  return np.outer(g, g).astype(np.float32)


def gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """The normalised 1-D Gaussian taps the 2-D window is the outer product of."""
  offsets = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-offsets ** 2 / (2.0 * sigma ** 2))
  return (g / g.sum()).astype(np.float32)


def _separable_filter(images: jax.Array, taps: np.ndarray) -> jax.Array:
  """'valid' 2-D filtering by the outer product of `taps`, as shifted sums.

  Equal to a depthwise conv with the 2-D window, but an order of magnitude
  faster on CPUs (XLA's grouped convolutions are slow there) and exact in
  float32 (no matmul whose precision depends on the backend).
  """
  return _filter_with_adjoint(images, tuple(float(t) for t in taps))


def _shifted_sums(images: jax.Array, taps: tuple[float, ...]) -> jax.Array:
  size = len(taps)
  height = images.shape[1] - size + 1
  rows = sum(t * images[:, i:i + height] for i, t in enumerate(taps))
  width = images.shape[2] - size + 1
  return sum(t * rows[:, :, i:i + width] for i, t in enumerate(taps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _filter_with_adjoint(images, taps):
  return _shifted_sums(images, taps)


def _filter_fwd(images, taps):
  return _shifted_sums(images, taps), None


def _filter_bwd(taps, unused_residuals, g):
  """The adjoint: the cotangent zero-padded by size - 1, filtered by the
  reversed taps. Autodiff of the shifted slices instead adds size^2 padded
  copies, which XLA:CPU runs several times slower (a RECNet training step
  spent ~160 ms there)."""
  pad = len(taps) - 1
  g = jnp.pad(g, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return (_shifted_sums(g, taps[::-1]),)


_filter_with_adjoint.defvjp(_filter_fwd, _filter_bwd)


def _as_nhwc(x: jax.Array) -> tuple[jax.Array, int]:
  """Adds batch / channel axes: (H, W), (H, W, C) or (N, H, W, C)."""
  x = jnp.asarray(x)
  if x.ndim == 2:
    return x[None, :, :, None], 2
  if x.ndim == 3:
    return x[None], 3
  if x.ndim == 4:
    return x, 4
  raise ValueError(f'expected (H, W), (H, W, C) or (N, H, W, C), got {x.shape}')


@functools.partial(jax.jit, static_argnames=('window_size', 'sigma', 'padding'))
def ssim_map(x: jax.Array, y: jax.Array, *, max_val: float = 1.0,
             window_size: int = 11, sigma: float = 1.5, padding: str = 'zero',
             k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """Per-pixel, per-channel SSIM map, shaped (N, H', W', C).

  Args:
    x, y: images of the same shape, (H, W), (H, W, C) or (N, H, W, C), float.
    max_val: data range L (1.0 for [0, 1] images, 255.0 for [0, 255]).
    window_size: side of the Gaussian window (odd).
    sigma: the window's standard deviation.
    padding: 'zero' (H' = H, zero padding window // 2) or 'valid'
      (H' = H - window_size + 1); see the module docstring.
    k1, k2: stabilisers, C1 = (k1 L)^2, C2 = (k2 L)^2.

  Returns:
    The SSIM map; inputs without a batch / channel axis get size-1 axes.
  """
  if padding not in _PADDINGS:
    raise ValueError(f'padding must be one of {_PADDINGS}, got {padding!r}')
  if jnp.shape(x) != jnp.shape(y):
    raise ValueError(f'shapes differ: {jnp.shape(x)} vs {jnp.shape(y)}')
  x, _ = _as_nhwc(x)
  y, _ = _as_nhwc(y)
  dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
  x, y = x.astype(dtype), y.astype(dtype)
  if padding == 'valid' and min(x.shape[1:3]) < window_size:
    raise ValueError(f'image {x.shape[1:3]} smaller than the {window_size}x'
                     f'{window_size} window with padding="valid"')
  pad = window_size // 2 if padding == 'zero' else 0
  # One filtering pass over the five statistics of every channel.
  stack = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)
  if pad:
    stack = jnp.pad(stack, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  filtered = _separable_filter(stack, gaussian_taps(window_size, sigma))
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(filtered, 5, axis=-1)
  mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
  var_x, var_y, cov = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  return (((2 * mu_xy + c1) * (2 * cov + c2)) /
          ((mu_xx + mu_yy + c1) * (var_x + var_y + c2)))


def ssim(x: jax.Array, y: jax.Array, *, max_val: float = 1.0,
         window_size: int = 11, sigma: float = 1.5, padding: str = 'zero',
         per_image: bool = False, k1: float = 0.01, k2: float = 0.03
         ) -> jax.Array:
  """Mean SSIM of two images or batches (see `ssim_map` for the arguments).

  Args:
    per_image: for (N, H, W, C) inputs, return (N,) means instead of one mean
      over the batch (equal-size images, so the batch mean is the mean of
      these).

  Returns:
    A scalar (or (N,) with per_image), 1.0 for identical images.
  """
  m = ssim_map(x, y, max_val=max_val, window_size=window_size, sigma=sigma,
               padding=padding, k1=k1, k2=k2)
  if per_image:
    return jnp.mean(m, axis=(1, 2, 3))
  return jnp.mean(m)
