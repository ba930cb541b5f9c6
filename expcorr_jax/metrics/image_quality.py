"""PSNR and SSIM of uint8 RGB images, as the exposure-correction papers report.

- PSNR on RGB [0, 255].
- SSIM with an 11x11 Gaussian window (sigma 1.5), 'valid' windows only
  (MATLAB / cv2.filter2D + [5:-5] crop style, which the RECNet and FECNet
  evaluation code use), on the three RGB channels ('rgb'), or on the
  grayscale image (BT.601 luma rounded to integers, 'gray'). SSIM variants
  differ by up to ~0.01, so every report names the one it used
  (`SSIM_VARIANTS`).
- PyIQA's two SSIMs, as the UEC authors evaluated (their README): `ssimc`
  ('rgb_pyiqa': as 'rgb', but the contrast-structure term is clipped at 0)
  and `ssim` (`ssim_y`: the same on the luma PyIQA computes). Every
  protocol reports `ssim_y` beside its own SSIM. Matched against PyIQA
  0.1.16 on real photos (tests/test_ssim.py, goldens in tests/data).
"""

import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax.metrics import ssim as ssim_lib

SSIM_VARIANTS = {
    'rgb': 'gaussian11_sigma1.5_rgb_valid',
    'gray': 'gaussian11_sigma1.5_gray-bt601-rounded_valid',
}
SSIM_VARIANTS['rgb_pyiqa'] = (  # PyIQA's `ssimc` (0.1.16).
    'pyiqa-ssimc: gaussian11_sigma1.5_rgb_valid_float64_nonnegative-cs')
# PyIQA's `ssim` (0.1.16), reported as `ssim_y` by every protocol.
SSIM_Y_VARIANT = ('pyiqa-ssim: gaussian11_sigma1.5_y-yiq-float32-rounded_'
                  'valid_float64_nonnegative-cs')
SSIM_VARIANT = SSIM_VARIANTS['rgb']  # The default.
BT601_LUMA = np.array([0.299, 0.587, 0.114])


def psnr(output: np.ndarray, target: np.ndarray) -> float:
  """PSNR in dB of two uint8 images (inf when identical)."""
  mse = np.mean((output.astype(np.float64) - target.astype(np.float64))**2)
  return float('inf') if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def luma(image: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float64 BT.601 luma 0.299 R + 0.587 G + 0.114 B in [0, 255]."""
  return image.astype(np.float64) @ BT601_LUMA


def to_gray(image: np.ndarray) -> np.ndarray:
  """uint8 RGB -> uint8 luma, `luma` rounded to integers."""
  return np.clip(np.round(luma(image)), 0, 255).astype(np.uint8)


def pyiqa_luma(image: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float64 luma as PyIQA's `ssim` computes it.

  PyIQA reads images as float32 in [0, 1], takes the Y of YIQ (0.299 R +
  0.587 G + 0.114 B) in float32, scales it by 255 and rounds it to an
  integer (`to_y_channel(img, 255, 'yiq')`).
  """
  unit = image.astype(np.float32) / np.float32(255)
  y = unit @ BT601_LUMA.astype(np.float32)
  return np.round(y * np.float32(255)).astype(np.float64)


def _filter_valid(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """A separable 'valid' filter of an HxW float64 image."""
  k = len(taps)
  rows = sum(taps[i] * image[i:image.shape[0] - k + 1 + i] for i in range(k))
  return sum(taps[i] * rows[:, i:rows.shape[1] - k + 1 + i]
             for i in range(k))


def _pyiqa_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """PyIQA's SSIM map of two HxW float64 images in [0, 255].

  In float64 as PyIQA computes it: the 11x11 Gaussian window (sigma 1.5),
  'valid' windows, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, and the
  contrast-structure term clipped at 0 (PyIQA's `relu`), so an
  anti-correlated window scores 0, not below.
  """
  if min(x.shape) < 11:
    raise ValueError(f'SSIM needs images of at least 11x11, got {x.shape}.')
  taps = ssim_lib.gaussian_taps(11, 1.5).astype(np.float64)
  mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
  var_x = _filter_valid(x * x, taps) - mu_x * mu_x
  var_y = _filter_valid(y * y, taps) - mu_y * mu_y
  cov = _filter_valid(x * y, taps) - mu_x * mu_y
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  cs = np.maximum((2 * cov + c2) / (var_x + var_y + c2), 0)
  return (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs


def ssim_y(output: np.ndarray, target: np.ndarray) -> float:
  """PyIQA's `ssim` of two uint8 RGB images: on `pyiqa_luma` (the SSIM
  column of a table made with PyIQA, as UEC's)."""
  return float(np.mean(_pyiqa_ssim_map(pyiqa_luma(output),
                                       pyiqa_luma(target))))


def masked_psnr(output: np.ndarray, target: np.ndarray,
                mask: np.ndarray) -> float:
  """PSNR over the pixels where `mask` (HxW) is True; NaN if none are."""
  if not mask.any():
    return float('nan')
  return psnr(output[mask], target[mask])


@jax.jit
def _ssim_map_uint8(output, target):
  return ssim_lib.ssim_map(output.astype(jnp.float32),
                           target.astype(jnp.float32), max_val=255.0,
                           padding='valid')[0]


def masked_ssim(output: np.ndarray, target: np.ndarray, mask: np.ndarray,
                color: str = 'rgb') -> float:
  """SSIM (as `ssim`) averaged over the windows centred where `mask` is
  True (the 'valid' map is the image less 5 pixels per side); NaN if none."""
  if color not in ('rgb', 'gray'):
    raise ValueError(f"Region SSIM is 'rgb' or 'gray', not {color!r}.")
  if color == 'gray':
    output, target = to_gray(output), to_gray(target)
  inner = mask[5:-5, 5:-5]
  if not inner.any():
    return float('nan')
  with jax.default_matmul_precision('highest'):
    ssim_map = np.asarray(_ssim_map_uint8(output, target))
  return float(ssim_map.mean(axis=-1)[inner].mean())


@jax.jit
def _ssim_uint8(output, target):
  return ssim_lib.ssim(output.astype(jnp.float32), target.astype(jnp.float32),
                       max_val=255.0, padding='valid')


def ssim(output: np.ndarray, target: np.ndarray, color: str = 'rgb') -> float:
  """SSIM of two uint8 RGB images; `color` one of `SSIM_VARIANTS`: 'rgb',
  'gray' (see module) or 'rgb_pyiqa' (PyIQA's `ssimc`: as 'rgb' with the
  contrast-structure term clipped at 0, in float64)."""
  if color == 'rgb_pyiqa':
    output, target = output.astype(np.float64), target.astype(np.float64)
    return float(np.mean([_pyiqa_ssim_map(output[..., c], target[..., c])
                          for c in range(output.shape[-1])]))
  if color == 'gray':
    output, target = to_gray(output), to_gray(target)
  elif color != 'rgb':
    raise ValueError(f'color must be one of {sorted(SSIM_VARIANTS)}, got '
                     f'{color!r}')
  with jax.default_matmul_precision('highest'):
    return float(_ssim_uint8(output, target))
