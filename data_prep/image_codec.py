"""Encoding and decoding of 8- and 16-bit RGB images as bytes or files.

Pillow handles JPEG, 8-bit PNG and EXIF orientation, but it cannot write a
16-bit RGB PNG and silently truncates one to 8 bits on reading. OpenCV (the
field's standard image I/O library) handles 16-bit PNG and TIFF, so 16-bit
data goes through it; everything else goes through Pillow. Arrays are always
RGB, HxWx3, uint8 or uint16.

`decode_image` is the project's one image normalisation: the builders, the
training pipeline, evaluation, the correct CLI and every image read go
through it, so an unusual file is converted the same way everywhere:
  - grayscale (8 or 16 bit): the gray value copied to R, G and B;
  - RGBA / LA: the alpha channel dropped (not composited);
  - palette (P) and CMYK: converted to RGB by Pillow;
  - EXIF orientation applied (as viewers show the photo);
  - 16-bit PNG / TIFF kept as uint16 (Pillow would truncate them).
Images whose header claims more pixels than the cap (`max_pixels`, the
`EXPCORR_MAX_PIXELS` environment variable, 250 million by default, about
0.75 GB decoded) are refused before any pixel is decoded, so a hostile or
broken header cannot exhaust memory.
"""

import io
import os

import cv2
import numpy as np
from PIL import Image
from PIL import ImageOps

from data_prep import storage

cv2.setNumThreads(1)  # Decoding runs in data-loader workers: stay single-threaded.

# Pillow's own guard against decompression bombs is far below a 100 MP
# photo; `max_pixels` is the project's cap, checked first.
Image.MAX_IMAGE_PIXELS = 1 << 30

MAX_PIXELS_ENV = 'EXPCORR_MAX_PIXELS'
DEFAULT_MAX_PIXELS = 250_000_000


class ImageDecodeError(Exception):
  """Bytes or a file could not be decoded as an image."""


def max_pixels() -> int:
  """The pixel cap: $EXPCORR_MAX_PIXELS, else `DEFAULT_MAX_PIXELS`."""
  value = os.environ.get(MAX_PIXELS_ENV)
  if value is None:
    return DEFAULT_MAX_PIXELS
  try:
    cap = int(value)
  except ValueError:
    cap = 0
  if cap <= 0:
    raise ValueError(f'{MAX_PIXELS_ENV}={value!r} must be a positive integer '
                     '(the largest number of pixels an image may have).')
  return cap


def header_size(data: bytes) -> tuple[int, int] | None:
  """(width, height) from an image's header, decoding no pixel; None if the
  header is not one Pillow (or, for PNG, this function) can read."""
  if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) >= 24:
    return (int.from_bytes(data[16:20], 'big'),
            int.from_bytes(data[20:24], 'big'))
  try:
    with Image.open(io.BytesIO(data)) as image:
      return image.size
  except Exception:  # pylint: disable=broad-except
    return None


def _check_pixel_cap(data: bytes) -> None:
  size = header_size(data)
  cap = max_pixels()
  if size is not None and size[0] * size[1] > cap:
    raise ImageDecodeError(
        f'its header claims {size[0]}x{size[1]} = {size[0] * size[1]:,} '
        f'pixels, over the cap of {cap:,}; refused before decoding. If the '
        f'image is genuine, raise the cap: {MAX_PIXELS_ENV}=<pixels>.')


def _as_rgb(array: np.ndarray) -> np.ndarray:
  if array.ndim == 2:
    return np.repeat(array[..., None], 3, axis=-1)
  if array.ndim == 3 and array.shape[-1] == 4:
    return array[..., :3]
  if array.ndim == 3 and array.shape[-1] == 3:
    return array
  raise ImageDecodeError(f'Unsupported image layout {array.shape}.')


def encode_png(image: np.ndarray, *, compress_level: int = 3) -> bytes:
  """Encodes an HxWx3 uint8 or uint16 RGB array as PNG bytes (lossless)."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'Expected an HxWx3 RGB image, got shape {image.shape}.')
  if image.dtype == np.uint8:
    buffer = io.BytesIO()
    Image.fromarray(image, 'RGB').save(buffer, format='PNG',
                                       compress_level=compress_level)
    return buffer.getvalue()
  if image.dtype == np.uint16:
    ok, encoded = cv2.imencode(
        '.png', np.ascontiguousarray(image[..., ::-1]),
        [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
      raise ValueError('OpenCV failed to encode a 16-bit PNG.')
    return encoded.tobytes()
  raise ValueError(f'Expected uint8 or uint16 pixels, got {image.dtype}.')


def _is_high_bit_depth(data: bytes) -> bool:
  """True for 16-bit PNGs and TIFFs, which Pillow would truncate."""
  if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 24:
    return data[24] == 16  # IHDR bit depth.
  return data[:4] in (b'II*\x00', b'MM\x00*')


def _exif_orientation(data: bytes) -> int:
  try:
    with Image.open(io.BytesIO(data)) as image:
      return int(image.getexif().get(0x0112, 1))
  except Exception:  # pylint: disable=broad-except
    return 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
  """Applies an EXIF orientation (1..8) to an HxWxC array."""
  transforms = {
      2: lambda a: a[:, ::-1],
      3: lambda a: a[::-1, ::-1],
      4: lambda a: a[::-1],
      5: lambda a: np.swapaxes(a, 0, 1),
      6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
      7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
      8: lambda a: np.swapaxes(a, 0, 1)[::-1],
  }
  transform = transforms.get(orientation)
  return np.ascontiguousarray(transform(image)) if transform else image


def decode_image(data: bytes, *, honour_exif: bool = True) -> np.ndarray:
  """Decodes JPEG/PNG/TIFF bytes to HxWx3 RGB uint8 (or uint16 if 16-bit).

  Args:
    data: the encoded file.
    honour_exif: rotate/flip as the EXIF orientation tag says, as viewers do.

  Raises:
    ImageDecodeError: the bytes are empty, not a decodable image, or claim
      more pixels than `max_pixels()`.
  """
  if not data:
    raise ImageDecodeError('the file is empty (0 bytes).')
  _check_pixel_cap(data)
  if _is_high_bit_depth(data):
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8),
                           cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if decoded is None:
      raise ImageDecodeError('Corrupt or unsupported 16-bit PNG/TIFF data.')
    if decoded.dtype not in (np.uint8, np.uint16):
      raise ImageDecodeError(f'Unsupported sample type {decoded.dtype}.')
    decoded = _as_rgb(decoded)
    decoded = np.ascontiguousarray(decoded[..., ::-1])  # BGR -> RGB
    if honour_exif and data[:4] in (b'II*\x00', b'MM\x00*'):
      decoded = _apply_orientation(decoded, _exif_orientation(data))
    return decoded
  try:
    with Image.open(io.BytesIO(data)) as image:
      if honour_exif:
        image = ImageOps.exif_transpose(image)
      if image.mode not in ('RGB', 'L', 'RGBA'):
        image = image.convert('RGB')
      return _as_rgb(np.asarray(image))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ImageDecodeError(f'Corrupt or unsupported image data: {e}') from e


def read_image(path: str | os.PathLike[str], *,
               honour_exif: bool = True) -> np.ndarray:
  """Reads an image file, local or in a bucket; errors name the file."""
  try:
    data = storage.path(path).read_bytes()
    return decode_image(data, honour_exif=honour_exif)
  except (OSError, ImageDecodeError) as e:
    raise ImageDecodeError(f'Cannot read image {os.fspath(path)}: {e}'
                           ) from e


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
  """Writes an 8/16-bit PNG atomically (`storage.write_bytes`): `path` is
  either absent, the old file or the whole new one."""
  storage.write_bytes(path, encode_png(image))
