"""Tests of data_prep.sample_scenes: the embedded, download-free sample data."""

import os

import numpy as np
import pytest

from data_prep import ev_tags
from data_prep import raw_render
from data_prep import sample_scenes as ss

_SCENE = 'chelsea-lamp'  # The smallest scene, with the strongest noise.


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  """The sample DNGs as the CLI writes them with default noise and seed."""
  output_dir = tmp_path_factory.mktemp('sample')
  stale = output_dir / f'{ss.SAMPLE_SCENES[0]}.dng'
  stale.write_bytes(b'left over from an earlier run')
  ss.main([f'--output_dir={output_dir}'])
  return output_dir


def _photo_of(scene: str) -> str:
  return scene.rpartition('-')[0]


def test_scene_names_are_unique_and_parse_as_file_stems():
  assert len(set(ss.SAMPLE_SCENES)) == len(ss.SAMPLE_SCENES) >= 10
  for scene in ss.SAMPLE_SCENES:
    assert '_' not in scene
    assert ev_tags.split_scene_tag(f'{scene}_N1.5') == (scene, 'N1.5')


def test_splits_are_scene_disjoint_and_non_empty():
  splits = {scene: ss.sample_split(scene) for scene in ss.SAMPLE_SCENES}
  assert set(splits.values()) == {'train', 'validation'}
  photos_by_split = {}
  for scene, split in splits.items():
    photos_by_split.setdefault(split, set()).add(_photo_of(scene))
  assert photos_by_split['validation'] == {'coffee', 'rocket'}
  assert not photos_by_split['train'] & photos_by_split['validation']
  assert ss.sample_split(ss.REFERENCE_SCENE) == 'train'
  with pytest.raises(ValueError, match='Unknown sample scene'):
    ss.sample_split('lily-day')


def test_captures_of_one_photo_differ():
  pictures = [ss.scene_photo(f'chelsea-{c}') for c in ('day', 'shade', 'lamp')]
  shapes = {p.shape for p in pictures}
  assert len(shapes) == 3
  for picture in pictures:
    assert picture.dtype == np.uint8 and max(picture.shape) <= ss.MAX_SIDE
    assert picture.shape[0] % 2 == 0 and picture.shape[1] % 2 == 0


def test_dng_bytes_are_deterministic_per_seed_and_noise():
  noisy = ss.scene_dng_bytes(_SCENE)
  assert noisy == ss.scene_dng_bytes(_SCENE, noise=True, seed=0)
  assert noisy != ss.scene_dng_bytes(_SCENE, seed=1)
  clean = ss.scene_dng_bytes(_SCENE, noise=False)
  assert clean != noisy
  assert clean == ss.scene_dng_bytes(_SCENE, noise=False, seed=1)
  assert len(clean) == len(noisy)  # Noise changes values, not the layout.


def test_write_is_atomic_and_complete(written):
  # The stale file was replaced, and no temporary survived.
  assert sorted(os.listdir(written)) == sorted(
      f'{scene}.dng' for scene in ss.SAMPLE_SCENES)
  for scene in ss.SAMPLE_SCENES:
    assert (written / f'{scene}.dng').read_bytes()[:4] == b'II*\0'
  assert (written / f'{_SCENE}.dng').read_bytes() == ss.scene_dng_bytes(_SCENE)


def test_write_returns_paths_in_scene_order(tmp_path):
  paths = ss.write_sample_raws(tmp_path / 'new' / 'dir', noise=False)
  assert [p.stem for p in paths] == list(ss.SAMPLE_SCENES)
  assert all(p.is_file() for p in paths)


def test_every_scene_decodes_at_its_metered_brightness(written):
  # The EV 0 decode must reproduce the photo's linear light times the metered
  # exposure for every capture, whatever its white balance or noise, wherever
  # the sensor did not clip (compared on pixels at most 80% of saturation after
  # metering, with margin for noise). Noise clipped at black biases dark areas
  # a little (measured: at most 0.2 %), hence 1 %. A capture without saturated
  # pixels fails this if LibRaw may lower the white level to the data maximum
  # (rawpy's default adjust_maximum_thr=0.75 brightens by up to 1.33x); the
  # linear decode must turn that off.
  for scene in ss.SAMPLE_SCENES:
    image = raw_render.decode_raw(written / f'{scene}.dng')
    photo = ss.scene_photo(scene)
    assert image.rgb16.shape == photo.shape, scene
    linear = raw_render.srgb_decode(photo / 255.0) * ss.metered_exposure(photo)
    unclipped = linear.max(axis=-1) < 0.8
    assert unclipped.mean() > 0.9, scene
    assert image.linear()[unclipped].mean() == pytest.approx(
        linear[unclipped].mean(), rel=0.01), scene


def test_metering_makes_every_scene_equally_exposed(written):
  # Average metering: each EV 0 decode has a mean luminance of 18% grey, less
  # what the sensor clipped (7% of rocket-day's mean, none elsewhere; the
  # expectation clips in sRGB primaries, an approximation of the camera's
  # clipping, hence 5%), although the source photos' means differ by 2 stops.
  weights = np.array([0.2126, 0.7152, 0.0722])
  for scene in ss.SAMPLE_SCENES:
    image = raw_render.decode_raw(written / f'{scene}.dng')
    photo = ss.scene_photo(scene)
    metered = raw_render.srgb_decode(photo / 255.0) * ss.metered_exposure(photo)
    expected = (np.minimum(metered, 1.0) @ weights).mean()
    assert expected > 0.9 * ss.METERING_TARGET, scene
    assert (image.linear() @ weights).mean() == pytest.approx(
        expected, rel=0.05), scene
  photo_means = [raw_render.srgb_decode(ss.scene_photo(s) / 255.0).mean()
                 for s in ss.SAMPLE_SCENES]
  assert max(photo_means) / min(photo_means) > 3


def test_exposure_doubles_linear_light_after_rendering(written):
  # A loose check of the EV relation on a sample scene: one stop up doubles
  # linear light wherever neither render is clipped or badly quantised.
  image = raw_render.decode_raw(written / 'motorcycle-day.dng')
  renders = raw_render.render_exposures(image, [0.0, 1.0])
  base = raw_render.srgb_decode(renders[0.0] / 255.0)
  up = raw_render.srgb_decode(renders[1.0] / 255.0)
  usable = (renders[0.0] >= 60) & (renders[1.0] <= 240)
  assert usable.mean() > 0.2
  ratio = up[usable] / base[usable]
  assert np.median(ratio) == pytest.approx(2.0, rel=0.01)
  assert np.percentile(np.abs(ratio - 2.0), 95) < 0.1


def test_well_exposed_reference_is_a_rendered_train_scene(written):
  reference = ss.well_exposed_reference()
  photo = ss.scene_photo(ss.REFERENCE_SCENE)
  assert reference.dtype == np.uint8 and reference.shape == photo.shape
  # It is the renderer's EV 0 output of the dataset's own DNG ...
  rendered = raw_render.expose(
      raw_render.decode_raw(written / f'{ss.REFERENCE_SCENE}.dng'), 0.0)
  np.testing.assert_array_equal(reference, rendered)
  # ... which looks like the metered photo but is not a copy of it.
  metered = raw_render.srgb_encode(np.minimum(
      raw_render.srgb_decode(photo / 255.0) * ss.metered_exposure(photo), 1))
  metered = np.round(metered * 255)
  assert not np.array_equal(reference, metered)
  mse = np.mean((reference.astype(float) - metered)**2)
  assert 10 * np.log10(255.0**2 / mse) > 30.0
  with pytest.raises(ValueError, match='train'):
    ss.well_exposed_reference(scene='coffee-day')
