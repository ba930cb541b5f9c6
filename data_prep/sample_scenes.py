"""The embedded sample dataset: RAW captures made from scikit-image's photos.

Everything else in data_prep starts from RAW files someone has to download.
This module makes a small dataset on any machine, offline: it takes photos
that ship inside the installed scikit-image package, turns each into
synthetic DNG files (`synthetic_raw`: inverse sRGB, inverse colour matrix and
white balance, RGGB mosaic, black level, shot and read noise) and leaves the
rest to the renderer real RAW files go through.

Scenes. Each photo is captured three times, as a photographer would shoot one
subject in different conditions, named `<photo>-<capture>`:

* `day`: daylight white balance, whole frame, ISO 100 (almost no noise).
* `shade`: bluish light, mirrored central crop, ISO 400.
* `lamp`: warm incandescent light, off-centre crop, ISO 1600 (visible noise).

Scene names hold no underscore, so `<scene>_<tag>` file names stay parseable.

Photos: the natural photographs scikit-image bundles (astronaut, coffee,
chelsea, rocket and the left view of stereo_motorcycle), downscaled to a long
side of at most 640 px so the build takes seconds. Microscopy, retina and
telescope images are left out: they are not the photos exposure correction is
for.

Exposure. Each capture is exposed as a camera's average metering would: the
photo's linear light is scaled so its mean luminance is 18% grey, and the
sensor clips what that pushes past saturation. So EV 0 means "well exposed"
in every scene alike, which UEC's evaluation with one fixed reference for all
scenes assumes (the source photos themselves differ by up to 2 stops:
rocket's is dark). Metering moves the photos by -0.6 to +1.5 EV; it clips 3%
of rocket's pixels (its sky) and none elsewhere.

Split: whole photos, never single captures, go to validation, so the splits
share no content. Validation holds `coffee` (an indoor close-up with warm,
saturated colours and a blown-out highlight) and `rocket` (an outdoor daylight
landscape with sky); training keeps a portrait, an animal and a cluttered
indoor scene.
"""

import argparse
import dataclasses
import functools
import os
import pathlib
import tempfile
import zlib
from typing import Callable, Sequence

import numpy as np
from PIL import Image
import skimage.data

from data_prep import raw_render
from data_prep import storage
from data_prep import synthetic_raw

MAX_SIDE = 640
METERING_TARGET = 0.18  # Mean linear luminance of an as-shot exposure.
_LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 / sRGB primaries.
VALIDATION_PHOTOS = ('coffee', 'rocket')
REFERENCE_SCENE = 'astronaut-day'  # A train scene; see well_exposed_reference.


@dataclasses.dataclass(frozen=True)
class _Capture:
  """How one photo is "shot": light, sensor noise and framing.

  Attributes:
    neutral: the camera neutral of the light (R, 1, B), see synthetic_raw.
    iso: recorded in the DNG; `noise` is what it does to the data.
    noise: the sensor noise at that ISO.
    crop: (top, left, bottom, right) as fractions of the photo.
    mirror: flip left-right.
  """
  neutral: tuple[float, float, float]
  iso: int
  noise: synthetic_raw.SensorNoise
  crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
  mirror: bool = False


_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    'astronaut': skimage.data.astronaut,
    'coffee': skimage.data.coffee,
    'chelsea': skimage.data.chelsea,
    'rocket': skimage.data.rocket,
    'motorcycle': lambda: skimage.data.stereo_motorcycle()[0],
}

# A 14-bit sensor: ~20k electrons fill a pixel at ISO 100, a quarter as many
# per stop of ISO; read noise grows a little with gain.
_CAPTURES = {
    'day': _Capture(
        neutral=synthetic_raw.DAYLIGHT_NEUTRAL, iso=100,
        noise=synthetic_raw.SensorNoise(20000.0, 1.5)),
    'shade': _Capture(
        neutral=(0.42, 1.0, 0.78), iso=400,
        noise=synthetic_raw.SensorNoise(5000.0, 2.0),
        crop=(0.08, 0.08, 0.92, 0.92), mirror=True),
    'lamp': _Capture(
        neutral=(0.72, 1.0, 0.4), iso=1600,
        noise=synthetic_raw.SensorNoise(1250.0, 3.5),
        crop=(0.0, 0.15, 0.85, 1.0)),
}

SAMPLE_SCENES = tuple(f'{photo}-{capture}' for photo in _PHOTOS
                      for capture in _CAPTURES)


def _parse_scene(scene: str) -> tuple[str, str]:
  photo, _, capture = scene.rpartition('-')
  if photo not in _PHOTOS or capture not in _CAPTURES:
    raise ValueError(f'Unknown sample scene {scene!r}; the sample scenes are '
                     f'{", ".join(SAMPLE_SCENES)}.')
  return photo, capture


def sample_split(scene: str) -> str:
  """'train' or 'validation': every capture of a photo goes to one split."""
  photo, _ = _parse_scene(scene)
  return 'validation' if photo in VALIDATION_PHOTOS else 'train'


@functools.lru_cache(maxsize=None)
def _load_photo(photo: str) -> np.ndarray:
  """The bundled photo, long side at most MAX_SIDE, even-sized, read-only."""
  image = np.asarray(_PHOTOS[photo](), dtype=np.uint8)[..., :3]
  height, width = image.shape[:2]
  scale = MAX_SIDE / max(height, width)
  if scale < 1:
    size = (round(width * scale), round(height * scale))
    image = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
  # Even sizes, a private copy (frozen below: the cache hands out this one).
  image = np.array(image[:image.shape[0] // 2 * 2, :image.shape[1] // 2 * 2])
  image.flags.writeable = False
  return image


def scene_photo(scene: str) -> np.ndarray:
  """The uint8 sRGB picture a scene's DNG encodes (cropped, even-sized)."""
  photo, capture_name = _parse_scene(scene)
  capture = _CAPTURES[capture_name]
  image = _load_photo(photo)
  height, width = image.shape[:2]
  top, left, bottom, right = capture.crop
  # Even offsets and sizes keep every crop on the RGGB phase of the sensor.
  rows = slice(2 * round(top * height / 2), 2 * round(bottom * height / 2))
  cols = slice(2 * round(left * width / 2), 2 * round(right * width / 2))
  image = image[rows, cols]
  if capture.mirror:
    image = image[:, ::-1]
  return np.array(image)  # A writable copy; the cached photo stays intact.


def metered_exposure(photo: np.ndarray) -> float:
  """The exposure multiplier that meters a uint8 sRGB photo to 18% grey."""
  luminance = raw_render.srgb_decode(photo / 255.0) @ _LUMINANCE
  return float(METERING_TARGET / max(luminance.mean(), 1e-6))


def scene_dng_bytes(scene: str, *, noise: bool = True, seed: int = 0) -> bytes:
  """A scene's DNG file; the same bytes for the same scene, noise and seed.

  The noise seed combines `seed` with a checksum of the scene name, so each
  scene's noise is independent of which other scenes exist.
  """
  capture = _CAPTURES[_parse_scene(scene)[1]]
  photo = scene_photo(scene)
  return synthetic_raw.photo_to_dng_bytes(
      photo, neutral=capture.neutral, exposure=metered_exposure(photo),
      noise=capture.noise if noise else None,
      seed=[seed, zlib.crc32(scene.encode('ascii'))], iso=capture.iso)


def write_sample_raws(output_dir: str | os.PathLike[str], *,
                      noise: bool = True, seed: int = 0) -> list[pathlib.Path]:
  """Writes `<scene>.dng` for every sample scene into `output_dir`.

  Each file is written under a temporary name and renamed, so an interrupted
  run never leaves a truncated DNG behind.

  Args:
    output_dir: created if missing; existing DNGs of the same names are
      replaced.
    noise: add shot and read noise (False gives noise-free captures).
    seed: seed of the noise.

  Returns:
    The written paths, in SAMPLE_SCENES order.
  """
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for scene in SAMPLE_SCENES:
    path = output_dir / f'{scene}.dng'
    storage.write_bytes(
        path, scene_dng_bytes(scene, noise=noise, seed=seed))
    paths.append(path)
  return paths


def well_exposed_reference(*, scene: str = REFERENCE_SCENE) -> np.ndarray:
  """A well-exposed uint8 HxWx3 image, the default reference for evaluation.

  It is the EV 0 render of the train scene 'astronaut-day' (a daylight
  portrait, evenly lit, ISO 100) as the sample dataset holds it: the DNG is
  written with the default noise and seed and goes through the same decode
  and render as every training image, so its statistics match theirs.
  """
  if sample_split(scene) != 'train':
    raise ValueError(f'The reference must be a train scene, not {scene!r}.')
  with tempfile.TemporaryDirectory() as temp_dir:
    path = os.path.join(temp_dir, f'{scene}.dng')
    storage.write_bytes(path, scene_dng_bytes(scene))
    image = raw_render.decode_raw(path)
  return raw_render.expose(image, 0.0, bits=8)


def main(argv: Sequence[str] | None = None) -> None:
  # argparse, not absl flags: this module is imported by dataset builders, and
  # absl's global flag registry would clash with their own --output_dir.
  parser = argparse.ArgumentParser(
      prog='python -m data_prep.sample_scenes',
      description='Write the embedded sample dataset as DNG files, ready for '
                  'python -m data_prep.render_raw.')
  parser.add_argument('--output_dir', required=True,
                      help='Folder for the <scene>.dng files.')
  parser.add_argument('--noise', action=argparse.BooleanOptionalAction,
                      default=True, help='Add sensor shot and read noise.')
  parser.add_argument('--seed', type=int, default=0, help='Noise seed.')
  args = parser.parse_args(argv)
  paths = write_sample_raws(args.output_dir, noise=args.noise, seed=args.seed)
  for path in paths:
    print(f'{sample_split(path.stem):10s} {path}')
  print(f'Wrote {len(paths)} DNG files to {args.output_dir}.')


if __name__ == '__main__':
  main()
