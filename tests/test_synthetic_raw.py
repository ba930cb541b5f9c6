"""Tests of data_prep.synthetic_raw: the inverse camera pipeline and DNG writer.

The decisive checks decode the written DNG with LibRaw (through
raw_render.decode_raw, exactly as real RAW files are decoded) and compare with
the photo the DNG was made from.
"""

import os

import numpy as np
import pytest
import rawpy
import skimage.data
import tifffile

from data_prep import raw_render
from data_prep import storage
from data_prep import synthetic_raw as sr

TUNGSTEN_NEUTRAL = (0.72, 1.0, 0.4)


def _smooth_photo(height=96, width=128) -> np.ndarray:
  """Colour ramps: nothing for demosaicing to get wrong but 8-bit steps."""
  y, x = np.mgrid[0:height, 0:width] / np.array(
      [height - 1.0, width - 1.0])[:, None, None]
  rgb = np.stack([30 + 200 * x, 40 + 180 * y, 220 - 150 * x * y], axis=-1)
  return np.round(rgb).astype(np.uint8)


def _decode(tmp_path, data: bytes, name='capture.dng'):
  path = tmp_path / name
  path.write_bytes(data)
  return raw_render.decode_raw(path)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64))**2)
  return 10 * np.log10(255.0**2 / mse)


def test_camera_model_is_consistent():
  # ColorMatrix1 is calibrated for D65: D65 white (XYZ of linear sRGB white)
  # must land on the daylight neutral, which the DNG spec ties it to.
  d65_white = sr.SRGB_TO_XYZ @ np.ones(3)
  np.testing.assert_allclose(sr.COLOR_MATRIX_1 @ d65_white,
                             sr.DAYLIGHT_NEUTRAL, atol=2e-4)
  # Non-negative, rows summing to one: in-gamut colours stay in range.
  forward = sr.camera_from_linear_srgb()
  assert (forward >= 0).all()
  np.testing.assert_allclose(forward.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(forward, sr.CAMERA_FROM_SRGB, atol=2e-4)


def test_bayer_mosaic_samples_rggb():
  camera = np.zeros((4, 6, 3))
  camera[..., 0], camera[..., 1], camera[..., 2] = 1.0, 2.0, 3.0
  mosaic = sr.bayer_mosaic(camera)
  np.testing.assert_array_equal(mosaic[0::2, 0::2], 1.0)
  np.testing.assert_array_equal(mosaic[0::2, 1::2], 2.0)
  np.testing.assert_array_equal(mosaic[1::2, 0::2], 2.0)
  np.testing.assert_array_equal(mosaic[1::2, 1::2], 3.0)


def test_raw_levels_of_black_and_white_photos():
  photo = np.zeros((4, 4, 3), np.uint8)
  photo[:, 2:] = 255
  raw = sr.photo_to_raw(photo)
  assert raw.dtype == np.uint16
  np.testing.assert_array_equal(raw[:, :2], sr.BLACK_LEVEL)
  # White: green saturates; red and blue sit at their neutral's fraction.
  span = sr.WHITE_LEVEL - sr.BLACK_LEVEL
  np.testing.assert_array_equal(
      raw[0::2, 2::2], round(sr.BLACK_LEVEL + span / 2))
  np.testing.assert_array_equal(raw[0::2, 3::2], sr.WHITE_LEVEL)
  np.testing.assert_array_equal(
      raw[1::2, 3::2], round(sr.BLACK_LEVEL + span * 2 / 3))


@pytest.mark.parametrize('neutral', [(0.5, 0.9, 0.6), (1.2, 1.0, 0.5),
                                     (0.0, 1.0, 0.5)])
def test_neutral_must_have_green_largest(neutral):
  with pytest.raises(ValueError, match='neutral'):
    sr.photo_to_raw(_smooth_photo(8, 8), neutral=neutral)


def test_libraw_reads_the_written_tags(tmp_path):
  photo = skimage.data.chelsea()[100:148, 200:265]  # Odd width on purpose.
  cfa = sr.photo_to_raw(photo, neutral=TUNGSTEN_NEUTRAL)
  path = tmp_path / 'cat.dng'
  sr.write_dng(path, cfa, neutral=TUNGSTEN_NEUTRAL, iso=800)
  with rawpy.imread(str(path)) as raw:
    np.testing.assert_array_equal(raw.raw_image, cfa)  # Bit-exact storage.
    assert (raw.sizes.raw_height, raw.sizes.raw_width) == (48, 65)
    assert raw.sizes.flip == 0
    assert list(raw.black_level_per_channel) == [sr.BLACK_LEVEL] * 4
    assert raw.white_level == sr.WHITE_LEVEL
    colours = raw.color_desc.decode()
    layout = ''.join(colours[c] for c in np.ravel(raw.raw_pattern))
    assert layout == 'RGGB'
    np.testing.assert_allclose(raw.camera_whitebalance[:3],
                               1 / np.array(TUNGSTEN_NEUTRAL), rtol=1e-4)
    # LibRaw's camera -> sRGB matrix inverts our forward model.
    np.testing.assert_allclose(
        np.asarray(raw.color_matrix)[:, :3],
        np.linalg.inv(sr.camera_from_linear_srgb()), atol=1e-3)
    assert raw.other.iso_speed == 800


def test_tiff_structure_reads_back_with_tifffile(tmp_path):
  cfa = sr.photo_to_raw(_smooth_photo(32, 48))
  path = tmp_path / 'ramp.dng'
  sr.write_dng(path, cfa)
  with tifffile.TiffFile(path) as tif:
    page = tif.pages[0]
    tags = {tag.code: tag.value for tag in page.tags.values()}
    np.testing.assert_array_equal(page.asarray(), cfa)
  assert tags[262] == 32803 and tags[254] == 0 and tags[274] == 1
  assert bytes(tags[50706]) == bytes([1, 4, 0, 0])
  assert bytes(tags[33422]) == bytes([0, 1, 1, 2])
  assert tags[50778] == 21
  matrix = np.array(tags[50721], np.float64).reshape(9, 2)
  np.testing.assert_allclose(matrix[:, 0] / matrix[:, 1],
                             sr.COLOR_MATRIX_1.ravel(), atol=1e-9)
  neutral = np.array(tags[50728], np.float64).reshape(3, 2)
  np.testing.assert_allclose(neutral[:, 0] / neutral[:, 1],
                             sr.DAYLIGHT_NEUTRAL, atol=1e-4)


@pytest.mark.parametrize('neutral', [sr.DAYLIGHT_NEUTRAL, TUNGSTEN_NEUTRAL])
def test_smooth_image_round_trips_to_8_bit_precision(tmp_path, neutral):
  # Without edges, demosaicing is nearly exact, so what is left is the colour
  # pipeline: any error in matrix, white balance or levels shows here. The
  # budget is 8-bit rounding: one code step is up to 0.015 in linear light.
  photo = _smooth_photo()
  image = _decode(tmp_path, sr.photo_to_dng_bytes(photo, neutral=neutral))
  linear = image.linear()
  expected = raw_render.srgb_decode(photo / 255.0)
  np.testing.assert_allclose(linear.mean(axis=(0, 1)),
                             expected.mean(axis=(0, 1)), rtol=3e-3)
  assert np.median(np.abs(linear - expected)) < 1e-3
  code_error = np.abs(raw_render.expose(image, 0.0).astype(int) - photo)
  assert np.mean(code_error <= 1) > 0.98
  assert np.mean(code_error) < 0.3


def test_photo_round_trips_through_libraw(tmp_path):
  # A real photo has edges, where demosaicing errs (measured: PSNR 33.0 dB,
  # median linear error 0.003 for the noise-free astronaut), so the bounds
  # are robust statistics with about a factor two of margin; the brightness
  # (means) must still hold closely because errors at edges mostly cancel.
  photo = skimage.data.astronaut()
  image = _decode(tmp_path, sr.photo_to_dng_bytes(photo))
  assert image.rgb16.shape == photo.shape
  linear = image.linear()
  expected = raw_render.srgb_decode(photo / 255.0)
  np.testing.assert_allclose(linear.mean(axis=(0, 1)),
                             expected.mean(axis=(0, 1)), rtol=0.01)
  assert np.median(np.abs(linear - expected)) < 0.006
  assert _psnr(raw_render.expose(image, 0.0), photo) > 30.0


def test_noise_follows_poisson_gaussian_model():
  photo = np.full((200, 200, 3), 128, np.uint8)
  noise = sr.SensorNoise(electrons_at_white=2000.0, read_noise_dn=4.0)
  raw = sr.photo_to_raw(photo, noise=noise, rng=np.random.default_rng(1))
  clean = sr.photo_to_raw(photo)
  span = sr.WHITE_LEVEL - sr.BLACK_LEVEL
  for rows, cols in [(0, 1), (0, 0)]:  # A green site, a red site.
    samples = raw[rows::2, cols::2].astype(np.float64)
    signal = float(clean[rows, cols]) - sr.BLACK_LEVEL
    variance = signal * span / noise.electrons_at_white + noise.read_noise_dn**2
    assert abs(samples.mean() - clean[rows, cols]) < 3 * np.sqrt(
        variance / samples.size)
    assert samples.var() == pytest.approx(variance, rel=0.1)


def test_noise_is_seeded():
  photo = _smooth_photo(32, 32)
  noise = sr.SensorNoise(1000.0, 3.0)
  first = sr.photo_to_dng_bytes(photo, noise=noise, seed=[3, 7])
  assert first == sr.photo_to_dng_bytes(photo, noise=noise, seed=[3, 7])
  assert first != sr.photo_to_dng_bytes(photo, noise=noise, seed=[3, 8])
  assert first != sr.photo_to_dng_bytes(photo, seed=[3, 7])
  assert (sr.photo_to_dng_bytes(photo, seed=1)
          == sr.photo_to_dng_bytes(photo, seed=2))
  with pytest.raises(ValueError, match='rng'):
    sr.photo_to_raw(photo, noise=noise)


def test_atomic_write_leaves_only_the_file(tmp_path):
  # The one atomic writer (data_prep/storage.py), which writes the DNGs.
  target = tmp_path / 'a.dng'
  target.write_bytes(b'old')
  storage.write_bytes(target, b'new')
  assert target.read_bytes() == b'new'
  assert os.listdir(tmp_path) == ['a.dng']
  with pytest.raises(TypeError):
    storage.write_bytes(target, 'not bytes')
  assert target.read_bytes() == b'new'  # Untouched by the failed write.
  assert os.listdir(tmp_path) == ['a.dng']  # The temporary was removed.
