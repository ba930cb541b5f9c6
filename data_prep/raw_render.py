"""Decode a RAW photo once to linear sRGB, then render any exposure from it.

Why decode once: LibRaw's own exposure shift is clamped to 0.25x..8x and rawpy
brightens automatically unless told not to. Decoding to linear light (demosaic,
black and white level, as-shot white balance, camera-to-sRGB matrix; gamma 1,
no auto-brightening) and applying each EV ourselves is both exact and fast:
rendering another EV is a lookup table over the 16-bit linear values.

Rendering an EV: scale by 2^EV, clip at 1.0 (the sensor's saturation, so
over-exposure loses highlight detail as a camera does), optionally apply a
camera-like tone curve, apply the sRGB transfer, quantise to 8 or 16 bits.
Without the tone curve (the default) a render is radiometrically invertible:
`srgb_decode(render) / 2^EV` recovers linear light wherever it did not clip.
"""

import dataclasses
import os
from typing import Any, Iterable

import numpy as np
import rawpy

LINEAR_MAX = 65535  # LibRaw's 16-bit output maps sensor saturation here.
TONE_CURVES = ('none', 'camera')
BIT_DEPTHS = (8, 16)


class RawDecodeError(Exception):
  """A RAW file could not be decoded (corrupt, truncated or unsupported)."""


@dataclasses.dataclass(frozen=True)
class LinearImage:
  """A decoded RAW photo in linear sRGB light.

  Attributes:
    rgb16: uint16 HxWx3, linear sRGB primaries, 65535 = sensor saturation.
    metadata: JSON-serialisable facts about the decode (black/white levels,
      white balance, sizes, ...), written into manifests.
  """
  rgb16: np.ndarray
  metadata: dict[str, Any]

  @property
  def height(self) -> int:
    return self.rgb16.shape[0]

  @property
  def width(self) -> int:
    return self.rgb16.shape[1]

  def linear(self) -> np.ndarray:
    """Linear light as float32 in [0, 1]."""
    return self.rgb16.astype(np.float32) / LINEAR_MAX


def srgb_encode(linear: np.ndarray) -> np.ndarray:
  """The sRGB transfer function (IEC 61966-2-1), linear [0,1] -> encoded."""
  linear = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
  return np.where(linear <= 0.0031308, 12.92 * linear,
                  1.055 * np.power(linear, 1.0 / 2.4) - 0.055)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
  """Inverse of `srgb_encode`: encoded [0,1] -> linear light."""
  encoded = np.clip(np.asarray(encoded, dtype=np.float64), 0.0, 1.0)
  return np.where(encoded <= 0.04045, encoded / 12.92,
                  np.power((encoded + 0.055) / 1.055, 2.4))


def camera_tone_curve(encoded: np.ndarray) -> np.ndarray:
  """A mild filmic S-curve on encoded values (0 -> 0, 1 -> 1, monotonic).

  Cameras add contrast on top of the sRGB transfer; this option imitates it.
  It is not part of the default because it breaks the simple radiometric
  relation between renders of different EVs.
  """
  steepness = 4.0
  def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-steepness * (v - 0.5)))
  low, high = sigmoid(0.0), sigmoid(1.0)
  return (sigmoid(np.asarray(encoded, np.float64)) - low) / (high - low)


def _check_render_args(bits: int, tone_curve: str) -> None:
  if bits not in BIT_DEPTHS:
    raise ValueError(f'bits must be 8 or 16, got {bits!r}.')
  if tone_curve not in TONE_CURVES:
    raise ValueError(
        f'tone_curve must be one of {TONE_CURVES}, got {tone_curve!r}.')


def encode_exposed(linear: np.ndarray, gain: np.ndarray | float, *,
                   bits: int = 8, tone_curve: str = 'none') -> np.ndarray:
  """Linear light times `gain` (2^EV, a number or per pixel), clipped at
  saturation, sRGB-encoded (optionally tone-curved) and quantised: THE
  rendering of an exposure, shared by uniform and mixed exposures."""
  _check_render_args(bits, tone_curve)
  encoded = srgb_encode(np.minimum(linear * gain, 1.0))
  if tone_curve == 'camera':
    encoded = camera_tone_curve(encoded)
  max_code = 2**bits - 1
  codes = np.round(encoded * max_code)
  return codes.astype(np.uint8 if bits == 8 else np.uint16)


def linear_levels() -> np.ndarray:
  """Every 16-bit linear level as float64 light in [0, 1]."""
  return np.arange(LINEAR_MAX + 1, dtype=np.float64) / LINEAR_MAX


def exposure_lut(ev: float, *, bits: int = 8,
                 tone_curve: str = 'none') -> np.ndarray:
  """The table mapping each 16-bit linear level to its rendered code at `ev`."""
  return encode_exposed(linear_levels(), 2.0**ev, bits=bits,
                        tone_curve=tone_curve)


def expose(image: LinearImage, ev: float, *, bits: int = 8,
           tone_curve: str = 'none') -> np.ndarray:
  """Renders `image` at exposure `ev` (relative to as-shot) as uint8/uint16."""
  return exposure_lut(ev, bits=bits, tone_curve=tone_curve)[image.rgb16]


def render_exposures(image: LinearImage, evs: Iterable[float], *, bits: int = 8,
                     tone_curve: str = 'none') -> dict[float, np.ndarray]:
  """Renders every EV of `evs` from the one decode; keys are the EVs."""
  return {float(ev): expose(image, ev, bits=bits, tone_curve=tone_curve)
          for ev in evs}


def decode_raw(path: str | os.PathLike[str], *,
               half_size: bool = False) -> LinearImage:
  """Decodes a RAW file to linear sRGB with LibRaw, without brightening.

  Args:
    path: any RAW format LibRaw reads (also DNG, as the embedded sample uses).
    half_size: decode at half resolution (2x2 Bayer blocks, no demosaic).

  Returns:
    The linear image and its metadata.

  Raises:
    RawDecodeError: the file is missing, truncated, corrupt or unsupported.
  """
  path = os.fspath(path)
  try:
    with rawpy.imread(path) as raw:
      rgb16 = raw.postprocess(**linear_postprocess_args(half_size=half_size))
      metadata = _raw_metadata(raw)
  except (rawpy.LibRawError, OSError, ValueError) as e:
    raise RawDecodeError(
        f'Cannot decode RAW file {path}: {type(e).__name__}: {e}. The file is '
        'truncated, corrupt or not a RAW format LibRaw supports; re-copy it '
        'or remove it from the input.') from e
  metadata.update(height=int(rgb16.shape[0]), width=int(rgb16.shape[1]),
                  half_size=bool(half_size))
  return LinearImage(rgb16=rgb16, metadata=metadata)


def linear_postprocess_args(*, half_size: bool = False) -> dict[str, Any]:
  """LibRaw settings of the linear decode; tests reuse them for comparison."""
  return dict(
      gamma=(1.0, 1.0),
      no_auto_bright=True,
      bright=1.0,
      output_bps=16,
      use_camera_wb=True,
      use_auto_wb=False,
      output_color=rawpy.ColorSpace.sRGB,
      highlight_mode=rawpy.HighlightMode.Clip,
      # LibRaw's default (0.75) replaces the white level by the file's
      # brightest value when that is above 75% of it, brightening photos
      # without clipped highlights by up to 1.33x: keep the sensor's level.
      adjust_maximum_thr=0.0,
      half_size=half_size,
  )


def _raw_metadata(raw: 'rawpy.RawPy') -> dict[str, Any]:
  other = raw.other
  return {
      'black_level_per_channel': [int(v) for v in raw.black_level_per_channel],
      'white_level': int(raw.white_level),
      'camera_white_balance': [float(v) for v in raw.camera_whitebalance],
      'color_desc': raw.color_desc.decode('ascii', 'replace'),
      'raw_pattern': np.asarray(raw.raw_pattern).tolist(),
      'raw_size': [int(raw.sizes.raw_height), int(raw.sizes.raw_width)],
      'flip': int(raw.sizes.flip),
      'iso': float(other.iso_speed),
      'shutter_s': float(other.shutter_speed),
      'aperture': float(other.aperture),
      'focal_length_mm': float(other.focal_length),
      'timestamp': other.timestamp.isoformat() if other.timestamp else None,
  }
