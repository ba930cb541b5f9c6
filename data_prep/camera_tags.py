"""The camera that took a RAW photo: make and model, best effort.

rawpy does not expose them. Most RAW formats (DNG, NEF, CR2, ARW, KDC, ...)
are TIFF containers, so the first directory's Make (271) and Model (272) tags
are read directly with Pillow's TIFF tag parser, without opening the image
(Pillow's image opener refuses TIFFs whose pixels it cannot decode, CFA DNGs
among them). Other formats fall back to Pillow's EXIF reader. Unknown values
are 'unknown'; nothing here raises.
"""

import os
import warnings

from PIL import Image
from PIL import TiffImagePlugin

_MAKE, _MODEL = 271, 272
_UNKNOWN = 'unknown'


def camera_label(camera: dict[str, str]) -> str:
  """'Make Model' from {'make', 'model'}; '' where both are unknown."""
  parts = [camera.get(key, _UNKNOWN) for key in ('make', 'model')]
  parts = [part for part in parts if part and part != _UNKNOWN]
  if len(parts) == 2 and parts[1].lower().startswith(parts[0].lower()):
    parts = parts[1:]  # 'Canon' + 'Canon EOS 5D' -> 'Canon EOS 5D'.
  return ' '.join(parts)


def _clean(value) -> str:
  if isinstance(value, bytes):
    value = value.decode('ascii', 'replace')
  if isinstance(value, tuple) and value:
    value = value[0]
  return value.strip('\x00 \t\r\n') if isinstance(value, str) else ''


def tiff_make_model(path: str | os.PathLike[str]) -> dict[str, str]:
  """Make and model from a TIFF-based file's first IFD ('unknown' if not)."""
  camera = {'make': _UNKNOWN, 'model': _UNKNOWN}
  try:
    # Local by design: RAWs are read where LibRaw reads them (a bucket's
    # manual_dir is copied down first, `build._prepare_through_staging`).
    with open(path, 'rb') as f:
      directory = TiffImagePlugin.ImageFileDirectory_v2(f.read(8))
      f.seek(directory.next)
      directory.load(f)
    for key, tag in (('make', _MAKE), ('model', _MODEL)):
      value = _clean(directory.get(tag))
      if value:
        camera[key] = value
  except Exception:  # pylint: disable=broad-except  # Best effort by design.
    pass
  return camera


def exif_make_model(path: str | os.PathLike[str]) -> dict[str, str]:
  """Make and model through Pillow's EXIF reader ('unknown' if not)."""
  camera = {'make': _UNKNOWN, 'model': _UNKNOWN}
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      with Image.open(path) as image:
        exif = image.getexif()
    for key, tag in (('make', _MAKE), ('model', _MODEL)):
      value = _clean(exif.get(tag))
      if value:
        camera[key] = value
  except Exception:  # pylint: disable=broad-except  # Best effort by design.
    pass
  return camera


def camera_make_model(path: str | os.PathLike[str]) -> dict[str, str]:
  """{'make', 'model'} of a RAW file from its TIFF tags or EXIF."""
  camera = tiff_make_model(path)
  if _UNKNOWN in camera.values():
    fallback = exif_make_model(path)
    camera = {key: value if value != _UNKNOWN else fallback[key]
              for key, value in camera.items()}
  return camera


def camera_name(path: str | os.PathLike[str]) -> str:
  """'Make Model' of a RAW file, '' where unknown; never raises."""
  return camera_label(camera_make_model(path))
