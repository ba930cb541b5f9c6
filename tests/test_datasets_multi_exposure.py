"""Tests of the `multi_exposure` builder from RAW and rendered folders.

The RAW folders hold copies of the real Kodak DC50 RAW fixture (768x512) and
a truncated copy, which the build must skip. Builds are shared per module to
keep the suite fast.
"""

import logging
import pathlib
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_prep import build
from data_prep import ev_tags
from data_prep import image_codec
from data_prep import raw_render
from data_prep import render_raw
from data_prep import tiled_frames
from data_prep.datasets import multi_exposure
from data_prep.datasets import raw_scenes
from data_prep.datasets import scene_split

KODAK = 'raw/kodak_dc50.kdc'
KODAK_CAMERA = 'Eastman Kodak Company Kodak Digital Science DC50 Zoom Camera'
GOOD_SCENES = ('kodak_one', 'kodak two_2', 'kodak-three')


def copy_raws(fixture: pathlib.Path, folder: pathlib.Path,
              scenes, *, broken: bool = False) -> pathlib.Path:
  """Copies the RAW fixture as `<scene>.kdc`; optionally a truncated one."""
  folder.mkdir(parents=True, exist_ok=True)
  for scene in scenes:
    shutil.copyfile(fixture, folder / f'{scene}.kdc')
  if broken:
    (folder / 'broken.kdc').write_bytes(fixture.read_bytes()[:5000])
    (folder / 'notes.txt').write_text('not a RAW file')
  return folder


def records(source):
  return [source[i] for i in range(len(source))]


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def kodak(shared_fixture):
  return shared_fixture(KODAK)


def test_raw_folder_build(kodak, tmp_path):
  """'raw' from 3 good RAWs, a truncated one and a .txt, read back."""
  manual = copy_raws(kodak, tmp_path / 'raws', GOOD_SCENES, broken=True)
  data_dir = tmp_path / 'data'
  build.ensure_prepared('multi_exposure/raw', data_dir, manual)
  by_split = {split: records(build.data_source('multi_exposure/raw', split,
                                               data_dir))
              for split in ('train', 'validation')}

  # Splits: scene-disjoint, complete (minus the broken RAW), hash-based.
  scenes = {split: [text(r['scene']) for r in split_records]
            for split, split_records in by_split.items()}
  assert set(scenes['train']).isdisjoint(scenes['validation'])
  assert sorted(scenes['train'] + scenes['validation']) == sorted(GOOD_SCENES)
  assert scenes['validation']  # At least one with >= 2 scenes.
  expected = scene_split.assign_splits(
      GOOD_SCENES, multi_exposure.DEFAULT_VALIDATION_FRACTION)
  for split, names in scenes.items():
    assert all(expected[name] == split for name in names)

  # Frames: exactly the renders of the one decode, ascending in EV.
  linear = raw_render.decode_raw(kodak)
  for record in by_split['train'] + by_split['validation']:
    np.testing.assert_array_equal(record['evs'], ev_tags.MSEC_EVS)
    assert record['evs'][0].dtype == np.float32
    assert (record['height'], record['width']) == (512, 768)
    assert text(record['camera']) == KODAK_CAMERA
    assert text(record['source']) == text(record['scene']) + '.kdc'
    frames = [frame.decode() for frame in record['frames']]
    for ev, frame in zip(ev_tags.MSEC_EVS, frames):
      assert frame.shape == (512, 768, 3) and frame.dtype == np.uint8
      np.testing.assert_array_equal(frame, raw_render.expose(linear, ev))
    means = [frame.mean() for frame in frames]
    assert means == sorted(means)


def test_unreadable_raws_are_logged_and_skipped(kodak, tmp_path, caplog):
  copy_raws(kodak, tmp_path, ['good'], broken=True)
  scenes = [raw_scenes.RawScene(p.stem, p, p.name)
            for p in sorted(tmp_path.glob('*.kdc'))]
  left_out = []
  with caplog.at_level(logging.WARNING):
    usable = raw_scenes.usable_raws(scenes, left_out)
  assert [s.scene for s in usable] == ['good']
  assert 'broken.kdc' in caplog.text
  assert [scene.scene for scene, _ in left_out] == ['broken']


def test_only_unreadable_raws_fail_clearly(kodak, tmp_path):
  manual = tmp_path / 'raws'
  manual.mkdir()
  (manual / 'broken.kdc').write_bytes(kodak.read_bytes()[:5000])
  with pytest.raises(ValueError, match=r'None of the 1 RAW file\(s\) can be '
                     r'read: broken\.kdc'):
    build.ensure_prepared('multi_exposure/raw', tmp_path / 'data', manual)
  (manual / 'broken.kdc').unlink()
  (manual / 'readme.txt').write_text('no RAWs here')
  with pytest.raises(ValueError, match='No RAW files found'):
    build.ensure_prepared('multi_exposure/raw', tmp_path / 'data', manual)


def test_single_scene_has_only_a_train_split(kodak, tmp_path, caplog):
  manual = copy_raws(kodak, tmp_path / 'raws', ['lonely'])
  with caplog.at_level(logging.WARNING):
    build.ensure_prepared('multi_exposure/raw', tmp_path / 'data', manual)
  assert 'no validation split' in caplog.text
  assert len(build.data_source('multi_exposure/raw', 'train',
                               tmp_path / 'data')) == 1
  with pytest.raises(ValueError, match=r"no split 'validation'.*\['train'\]"):
    build.data_source('multi_exposure/raw', 'validation', tmp_path / 'data')


def test_custom_config_16bit_radiometry_half_size(kodak, tmp_path):
  manual = copy_raws(kodak, tmp_path / 'raws', ['first', 'second'])
  config = multi_exposure.MultiExposureConfig(
      name='radiometry_16bit_half', source='raw',
      evs=(3, -3, 0, 1, -1, 2, -2), bits=16, half_size=True)
  assert config.evs == multi_exposure.RADIOMETRY_EVS  # Sorted.
  builder = multi_exposure.MultiExposure(
      config=config, data_dir=tmp_path / 'data', file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  linear = raw_render.decode_raw(kodak, half_size=True)
  everything = [record for split in builder.info.splits
                for record in records(tiled_frames.scene_source(
                    builder.as_data_source(split=split),
                    builder.info.metadata, split))]
  assert sorted(text(r['scene']) for r in everything) == ['first', 'second']
  for record in everything:
    np.testing.assert_array_equal(record['evs'], multi_exposure.RADIOMETRY_EVS)
    assert (record['height'], record['width']) == (256, 384)
    for ev, stored in zip(multi_exposure.RADIOMETRY_EVS, record['frames']):
      frame = stored.decode()
      assert frame.dtype == np.uint16
      np.testing.assert_array_equal(
          frame, raw_render.expose(linear, ev, bits=16))


def test_config_validation():
  with pytest.raises(ValueError, match='distinct'):
    multi_exposure.MultiExposureConfig(name='x', evs=(0, 0))
  with pytest.raises(ValueError, match='bits'):
    multi_exposure.MultiExposureConfig(name='x', bits=12)
  with pytest.raises(ValueError, match='source'):
    multi_exposure.MultiExposureConfig(name='x', source='video')


def test_rendered_folder_from_render_raw(kodak, tmp_path):
  raws = copy_raws(kodak, tmp_path / 'raws', ['alpha_1', 'beta'])
  rendered = tmp_path / 'rendered'
  summary = render_raw.render_files([raws], rendered, half_size=True,
                                    workers=1, progress=False)
  assert len(summary.rendered) == 2
  build.ensure_prepared('multi_exposure/rendered', tmp_path / 'data', rendered)
  everything = [r for split in ('train', 'validation') for r in records(
      build.data_source('multi_exposure/rendered', split, tmp_path / 'data'))]
  assert sorted(text(r['scene']) for r in everything) == ['alpha_1', 'beta']
  for record in everything:
    scene = text(record['scene'])
    np.testing.assert_array_equal(record['evs'], ev_tags.MSEC_EVS)
    assert text(record['camera']) == KODAK_CAMERA
    assert text(record['source']) == f'{scene}.kdc'
    assert (record['height'], record['width']) == (256, 384)
    for ev, stored in zip(ev_tags.MSEC_EVS, record['frames']):
      path = rendered / f'{scene}_{ev_tags.ev_to_tag(ev)}.png'
      # Stored as the rendered file decodes.
      np.testing.assert_array_equal(stored.decode(),
                                    image_codec.read_image(path))


def test_rendered_radiometry_layout_skips_incomplete_scenes(tmp_path, caplog):
  root = tmp_path / 'manual' / 'uec'
  rng = np.random.default_rng(0)
  for folder in ('neg1', '0', 'pos1'):
    for name in ('a', 'b_c', 'd'):
      pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
      (root / folder).mkdir(parents=True, exist_ok=True)
      Image.fromarray(pixels).save(root / folder / f'{name}.jpg')
  for folder in ('neg1', '0'):  # 'partial' lacks pos1.
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(
        root / folder / 'partial.png')
  with caplog.at_level(logging.WARNING):
    build.ensure_prepared('multi_exposure/rendered', tmp_path / 'data',
                          tmp_path / 'manual')
  assert 'partial' in caplog.text
  everything = [r for split in ('train', 'validation') for r in records(
      build.data_source('multi_exposure/rendered', split, tmp_path / 'data'))]
  assert sorted(text(r['scene']) for r in everything) == ['a', 'b_c', 'd']
  for record in everything:
    scene = text(record['scene'])
    np.testing.assert_array_equal(record['evs'], (-1.0, 0.0, 1.0))
    assert (record['height'], record['width']) == (6, 10)
    assert text(record['camera']) == ''
    assert text(record['source']) == f'uec/neg1/{scene}.jpg'
    np.testing.assert_array_equal(
        record['frames'][2].decode(),
        image_codec.read_image(root / 'pos1' / f'{scene}.jpg'))


def test_the_radiometry_release_list_decides_the_split(tmp_path):
  """With the release's train_input.txt in the layout root, its scenes are
  the train split and every other scene validation (never a scene the
  official weights trained on); the metadata and reports say which rule."""
  root = tmp_path / 'manual' / 'radiometry'
  rng = np.random.default_rng(1)
  names = ('a0001', 'a0002', 'a0003', 'a0004', 'a0005')
  for folder in ('neg3', '0', 'pos1'):
    for name in names:
      (root / folder).mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)).save(
          root / folder / f'{name}.png')
  (root / 'train_input.txt').write_text(
      '# the release\'s training scenes\na0001.png\nneg3/a0003.png\n\na0004\n')
  build.ensure_prepared('multi_exposure/rendered', tmp_path / 'data',
                        tmp_path / 'manual')
  scenes = {split: sorted(text(r['scene']) for r in records(
      build.data_source('multi_exposure/rendered', split, tmp_path / 'data')))
            for split in ('train', 'validation')}
  assert scenes == {'train': ['a0001', 'a0003', 'a0004'],
                    'validation': ['a0002', 'a0005']}
  source = build.split_source('multi_exposure/rendered', tmp_path / 'data')
  assert source.startswith('train_input.txt (the release\'s list: 3 train')

  # Without the list: the name hash, said so.
  (root / 'train_input.txt').unlink()
  build.ensure_prepared('multi_exposure/rendered', tmp_path / 'hashed',
                        tmp_path / 'manual')
  assert build.split_source('multi_exposure/rendered',
                            tmp_path / 'hashed').startswith('name hash')
