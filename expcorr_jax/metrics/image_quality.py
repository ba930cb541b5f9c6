"""PSNR and SSIM of uint8 RGB images, as the exposure-correction papers report.

- PSNR on RGB [0, 255].
- SSIM with an 11x11 Gaussian window (sigma 1.5), 'valid' windows only
  (MATLAB / cv2.filter2D + [5:-5] crop style, which the RECNet and FECNet
  evaluation code use), on the three RGB channels ('rgb'), or on the
  grayscale image (BT.601 luma rounded to integers, 'gray'). SSIM variants
  differ by up to ~0.01, so every report names the one it used
  (`SSIM_VARIANTS`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax.metrics import ssim as ssim_lib

SSIM_VARIANTS = {
    'rgb': 'gaussian11_sigma1.5_rgb_valid',
    'gray': 'gaussian11_sigma1.5_gray-bt601-rounded_valid',
}
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
  """SSIM of two uint8 RGB images; `color` 'rgb' or 'gray' (see module)."""
  if color == 'gray':
    output, target = to_gray(output), to_gray(target)
  elif color != 'rgb':
    raise ValueError(f"color must be 'rgb' or 'gray', got {color!r}")
  with jax.default_matmul_precision('highest'):
    return float(_ssim_uint8(output, target))
