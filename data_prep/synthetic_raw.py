"""Synthetic RAW captures: photos turned back into sensor data, stored as DNG.

The embedded sample dataset has no real RAW files, so it makes some: a photo
(8-bit sRGB) is pushed backwards through a camera pipeline into the Bayer
mosaic a fictional camera would have recorded, and written as a real DNG file.
The DNG is then decoded by `raw_render.decode_raw` (LibRaw) like any RAW photo,
so the sample exercises exactly the code path real datasets take.

The fictional camera ("expcorr Synthetic RGGB-14"):

* Sensitivities: `CAMERA_FROM_SRGB` says how much of each linear sRGB primary
  each camera channel sees once white balanced. Its rows sum to one (white
  stays white) and it has no negative entries, so any in-gamut colour stays
  within the sensor's range; the overlap between channels (camera colour is
  less saturated than sRGB) is what real colour matrices undo.
* Daylight (D65) neutral `DAYLIGHT_NEUTRAL` = (1/2, 1, 2/3): white-balance
  gains R 2.0, G 1.0, B 1.5, so raw data is greenish as real raw data is.
* `COLOR_MATRIX_1` (the DNG ColorMatrix1, XYZ -> camera, D65) follows from the
  two: diag(neutral) @ CAMERA_FROM_SRGB @ XYZ->sRGB. It comes out close to
  real cameras' matrices (diagonal 0.5..1.2, negative off-diagonal terms).
* 14-bit data: black level 512, white level 16383.

How LibRaw develops such a DNG, and why the forward model below inverts it
exactly (up to rounding, demosaicing and noise): it multiplies the camera
matrix by the sRGB -> XYZ matrix, scales each row to sum to one, and inverts
the result into its camera -> sRGB matrix; it white-balances with 1/neutral
normalised so the smallest multiplier is 1 and maps (white - black) to full
scale. With the green neutral at 1 and the others below it, a white photo
pixel becomes raw green at the white level and decodes to 65535 again, so the
EV 0 decode has the photo's brightness. Another as-shot neutral models the
same scene under another light source (a von Kries change in camera space),
which the as-shot white balance undoes.
"""

import dataclasses
import fractions
import os
import struct

import numpy as np

from data_prep import raw_render
from data_prep import storage

CAMERA_MAKE = 'expcorr'
CAMERA_MODEL = 'Synthetic RGGB-14'
BLACK_LEVEL = 512
WHITE_LEVEL = 16383
ILLUMINANT_D65 = 21  # EXIF LightSource code used by CalibrationIlluminant1.
# Neutrals are stored as RATIONALs; the forward model uses these same values.
_NEUTRAL_DENOMINATOR = 10000
_MATRIX_DENOMINATOR = 10000

# Linear sRGB -> CIE XYZ, D65 white (IEC 61966-2-1).
SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805],
                        [0.2126, 0.7152, 0.0722],
                        [0.0193, 0.1192, 0.9505]])
CAMERA_FROM_SRGB = np.array([[0.70, 0.25, 0.05],
                             [0.12, 0.76, 0.12],
                             [0.03, 0.22, 0.75]])
DAYLIGHT_NEUTRAL = (0.5, 1.0, 2.0 / 3.0)
COLOR_MATRIX_1 = np.round(
    np.diag(DAYLIGHT_NEUTRAL) @ CAMERA_FROM_SRGB @ np.linalg.inv(SRGB_TO_XYZ)
    * _MATRIX_DENOMINATOR) / _MATRIX_DENOMINATOR


@dataclasses.dataclass(frozen=True)
class SensorNoise:
  """Poisson-Gaussian sensor noise at one ISO.

  Attributes:
    electrons_at_white: photo-electrons that fill a pixel to the white level;
      fewer means a higher ISO and more shot noise.
    read_noise_dn: standard deviation of the Gaussian read noise, in raw units.
  """
  electrons_at_white: float
  read_noise_dn: float


def quantize_neutral(neutral) -> tuple[float, float, float]:
  """The neutral as a DNG RATIONAL stores it; requires green = 1 = largest."""
  values = tuple(float(fractions.Fraction(v).limit_denominator(
      _NEUTRAL_DENOMINATOR)) for v in neutral)
  if len(values) != 3 or values[1] != 1.0 or not all(
      0.0 < v <= 1.0 for v in values):
    raise ValueError(
        f'The as-shot neutral must be (R, 1, B) with 0 < R, B <= 1, got '
        f'{neutral!r}: LibRaw normalises white balance to the smallest '
        'multiplier, so any other neutral changes the decoded brightness.')
  return values


def camera_from_linear_srgb(color_matrix: np.ndarray = COLOR_MATRIX_1
                           ) -> np.ndarray:
  """White-balanced camera RGB from linear sRGB, as LibRaw derives it.

  LibRaw's camera -> sRGB matrix is the inverse of this one, so building the
  mosaic with it makes the decode invert the forward model.
  """
  cam_rgb = np.asarray(color_matrix, np.float64) @ SRGB_TO_XYZ
  return cam_rgb / cam_rgb.sum(axis=1, keepdims=True)


def linear_to_camera(linear: np.ndarray, neutral=DAYLIGHT_NEUTRAL,
                     color_matrix: np.ndarray = COLOR_MATRIX_1) -> np.ndarray:
  """Linear sRGB HxWx3 -> raw camera RGB in [0, 1] of the sensor's range."""
  neutral = np.asarray(quantize_neutral(neutral))
  camera = np.asarray(linear, np.float64) @ camera_from_linear_srgb(
      color_matrix).T
  return np.clip(camera * neutral, 0.0, 1.0)


def bayer_mosaic(camera: np.ndarray) -> np.ndarray:
  """Samples HxWx3 camera RGB on an RGGB Bayer pattern -> HxW."""
  height, width, _ = camera.shape
  rows = np.arange(height)[:, None] % 2
  cols = np.arange(width)[None, :] % 2
  channel = rows + cols  # RGGB: (0,0) R=0, (0,1) and (1,0) G=1, (1,1) B=2.
  return np.take_along_axis(camera, channel[..., None], axis=2)[..., 0]


def photo_to_raw(photo: np.ndarray, *, neutral=DAYLIGHT_NEUTRAL,
                 exposure: float = 1.0,
                 noise: SensorNoise | None = None,
                 rng: np.random.Generator | None = None,
                 black_level: int = BLACK_LEVEL,
                 white_level: int = WHITE_LEVEL) -> np.ndarray:
  """Inverts the camera pipeline: uint8 sRGB photo -> uint16 RGGB mosaic.

  Args:
    photo: uint8 HxWx3 sRGB.
    neutral: the as-shot camera neutral (R, 1, B) of the capture.
    exposure: multiplies the photo's linear light before the sensor, which
      clips at saturation (a camera's exposure choice; 1 keeps the photo's).
    noise: the sensor noise to add, or None for a noise-free mosaic.
    rng: random source of the noise (required with `noise`).
    black_level: raw value of no light.
    white_level: raw value of saturation.

  Returns:
    uint16 HxW raw values in [0, white_level].
  """
  photo = np.asarray(photo)
  if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
    raise ValueError(f'Expected a uint8 HxWx3 photo, got {photo.dtype} '
                     f'{photo.shape}.')
  if not exposure > 0:
    raise ValueError(f'exposure must be positive, got {exposure!r}.')
  linear = raw_render.srgb_decode(photo / 255.0) * exposure
  signal = np.minimum(bayer_mosaic(linear_to_camera(linear, neutral)), 1.0)
  span = white_level - black_level
  if noise is not None:
    if rng is None:
      raise ValueError('Sensor noise needs a seeded `rng`.')
    electrons = rng.poisson(signal * noise.electrons_at_white)
    signal = electrons / noise.electrons_at_white + rng.normal(
        0.0, noise.read_noise_dn / span, size=signal.shape)
  raw = np.round(black_level + signal * span)
  return np.clip(raw, 0, white_level).astype(np.uint16)


# --- DNG (TIFF) writing -----------------------------------------------------

_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _SRATIONAL = 1, 2, 3, 4, 5, 10
# struct format of one number; a (S)RATIONAL is two of them.
_FORMATS = {_BYTE: 'B', _ASCII: 'B', _SHORT: 'H', _LONG: 'I', _RATIONAL: 'I',
            _SRATIONAL: 'i'}


def _rationals(values, denominator: int, signed: bool) -> list[int]:
  flat = []
  for value in values:
    fraction = fractions.Fraction(float(value)).limit_denominator(denominator)
    if not signed and fraction < 0:
      raise ValueError(f'RATIONAL values must be >= 0, got {value}.')
    flat += [fraction.numerator, fraction.denominator]
  return flat


def _entry(tag: int, kind: int, values) -> tuple[int, int, int, bytes]:
  """One IFD entry as (tag, type, count, packed value bytes)."""
  if kind == _ASCII:
    values = list(values.encode('ascii') + b'\0')
  values = list(values)
  count = len(values) // 2 if kind in (_RATIONAL, _SRATIONAL) else len(values)
  data = struct.pack(f'<{len(values)}{_FORMATS[kind]}', *values)
  return tag, kind, count, data


def dng_bytes(cfa: np.ndarray, *, neutral=DAYLIGHT_NEUTRAL,
              black_level: int = BLACK_LEVEL, white_level: int = WHITE_LEVEL,
              color_matrix: np.ndarray = COLOR_MATRIX_1,
              iso: int | None = None) -> bytes:
  """Encodes an RGGB mosaic as an uncompressed little-endian DNG 1.4 file.

  IFD 0 holds the raw image (one strip of 16-bit samples) and the tags a raw
  developer needs; an EXIF IFD holds the ISO when given. No preview image, so
  the file is barely larger than its pixels.

  Args:
    cfa: HxW raw values on an RGGB pattern (e.g. from `photo_to_raw`).
    neutral: AsShotNeutral; must be the neutral the mosaic was made with.
    black_level: BlackLevel tag.
    white_level: WhiteLevel tag.
    color_matrix: ColorMatrix1 (XYZ -> camera under D65), 3x3.
    iso: ISOSpeedRatings, or None to leave it out.

  Returns:
    The file's bytes; the same arguments always give the same bytes.
  """
  cfa = np.ascontiguousarray(cfa, dtype='<u2')
  if cfa.ndim != 2:
    raise ValueError(f'Expected an HxW mosaic, got shape {cfa.shape}.')
  height, width = cfa.shape
  pixels = cfa.tobytes()
  neutral = quantize_neutral(neutral)

  def main_ifd(strip_offset: int, exif_offset: int | None):
    entries = [
        _entry(254, _LONG, [0]),  # NewSubFileType: the main image.
        _entry(256, _LONG, [width]),
        _entry(257, _LONG, [height]),
        _entry(258, _SHORT, [16]),  # BitsPerSample.
        _entry(259, _SHORT, [1]),  # Compression: none.
        _entry(262, _SHORT, [32803]),  # PhotometricInterpretation: CFA.
        _entry(271, _ASCII, CAMERA_MAKE),
        _entry(272, _ASCII, CAMERA_MODEL),
        _entry(273, _LONG, [strip_offset]),  # StripOffsets.
        _entry(274, _SHORT, [1]),  # Orientation: top-left.
        _entry(277, _SHORT, [1]),  # SamplesPerPixel.
        _entry(278, _LONG, [height]),  # RowsPerStrip.
        _entry(279, _LONG, [len(pixels)]),  # StripByteCounts.
        _entry(284, _SHORT, [1]),  # PlanarConfiguration: chunky.
        _entry(305, _ASCII, 'expcorr_jax data_prep.synthetic_raw'),
        _entry(33421, _SHORT, [2, 2]),  # CFARepeatPatternDim.
        _entry(33422, _BYTE, [0, 1, 1, 2]),  # CFAPattern: R G / G B.
        _entry(50706, _BYTE, [1, 4, 0, 0]),  # DNGVersion.
        _entry(50707, _BYTE, [1, 1, 0, 0]),  # DNGBackwardVersion.
        _entry(50708, _ASCII, f'{CAMERA_MAKE} {CAMERA_MODEL}'),
        _entry(50714, _LONG, [black_level]),  # BlackLevel.
        _entry(50717, _LONG, [white_level]),  # WhiteLevel.
        _entry(50721, _SRATIONAL, _rationals(  # ColorMatrix1.
            np.ravel(color_matrix), _MATRIX_DENOMINATOR, signed=True)),
        _entry(50728, _RATIONAL, _rationals(  # AsShotNeutral.
            neutral, _NEUTRAL_DENOMINATOR, signed=False)),
        _entry(50778, _SHORT, [ILLUMINANT_D65]),  # CalibrationIlluminant1.
    ]
    if exif_offset is not None:
      entries.append(_entry(34665, _LONG, [exif_offset]))  # ExifIFD.
    return entries

  exif = [_entry(34855, _SHORT, [int(iso)])] if iso else []  # ISOSpeedRatings.
  # Block sizes do not depend on the offsets: measure with placeholders.
  main_size = len(_ifd_block(main_ifd(0, 0 if exif else None), 8))
  exif_offset = 8 + main_size
  exif_block = _ifd_block(exif, exif_offset) if exif else b''
  strip_offset = exif_offset + len(exif_block)
  main_block = _ifd_block(
      main_ifd(strip_offset, exif_offset if exif else None), 8)
  header = b'II' + struct.pack('<HI', 42, 8)  # Little-endian TIFF, IFD at 8.
  return header + main_block + exif_block + pixels


def _ifd_block(entries, start: int) -> bytes:
  """An IFD placed at file offset `start`, followed by its long values.

  Values longer than 4 bytes go after the IFD, each at an even offset as TIFF
  requires; so does the block's end.
  """
  entries = sorted(entries, key=lambda e: e[0])  # TIFF: ascending tags.
  values_start = start + 2 + 12 * len(entries) + 4
  ifd = bytearray(struct.pack('<H', len(entries)))
  values = bytearray()
  for tag, kind, count, data in entries:
    if len(data) <= 4:
      field = data.ljust(4, b'\0')
    else:
      field = struct.pack('<I', values_start + len(values))
      values += data + b'\0' * (len(data) % 2)
    ifd += struct.pack('<HHI', tag, kind, count) + field
  ifd += struct.pack('<I', 0)  # No next IFD.
  return bytes(ifd + values)


def write_dng(path: str | os.PathLike[str], cfa: np.ndarray, **kwargs) -> None:
  """Writes `dng_bytes(cfa, **kwargs)` to `path` atomically."""
  storage.write_bytes(path, dng_bytes(cfa, **kwargs))


def photo_to_dng_bytes(photo: np.ndarray, *, neutral=DAYLIGHT_NEUTRAL,
                       exposure: float = 1.0,
                       noise: SensorNoise | None = None, seed=0,
                       iso: int | None = None) -> bytes:
  """A photo's synthetic capture as DNG bytes: `photo_to_raw` + `dng_bytes`.

  Prefer this to calling the two separately: it keeps the mosaic's neutral
  and the AsShotNeutral tag the same, which the decode's accuracy relies on.

  Args:
    photo: uint8 HxWx3 sRGB.
    neutral: the as-shot camera neutral (R, 1, B).
    exposure: multiplier of the photo's linear light (see `photo_to_raw`).
    noise: sensor noise, or None for a noise-free capture.
    seed: seed of the noise (an int or a sequence of ints); unused without it.
    iso: the ISO to record in the file, or None.
  """
  rng = np.random.default_rng(seed) if noise is not None else None
  cfa = photo_to_raw(photo, neutral=neutral, exposure=exposure, noise=noise,
                     rng=rng)
  return dng_bytes(cfa, neutral=neutral, iso=iso)
