"""Tests of the paired builders (msec, sice, lcdp) on tiny fake layouts.

Each test writes a few small random JPEG/PNG files in the dataset's folder
layout (official or renamed), builds it with `data_prep.build` and reads it
back through `tfds.data_source`.
"""

import math
import pathlib

import numpy as np
from PIL import Image
import pytest

from data_prep import build
from data_prep import ev_tags
from data_prep import image_codec

MSEC_TAGS = ('N1.5', 'N1', '0', 'P1', 'P1.5')
JPEG_MAGIC = b'\xff\xd8'
PNG_MAGIC = b'\x89PNG'


def write_image(path: pathlib.Path, seed: int, size=(12, 8)) -> pathlib.Path:
  """A small random image; the format follows the extension."""
  pixels = np.random.default_rng(seed).integers(
      0, 256, (size[1], size[0], 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  image_format = 'JPEG' if path.suffix.lower() in ('.jpg', '.jpeg') else 'PNG'
  Image.fromarray(pixels).save(path, format=image_format)
  return path


def read_split(name, split, data_dir):
  source = build.data_source(name, split, data_dir)
  return [source[i] for i in range(len(source))]


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else value


def make_msec(root: pathlib.Path, *, folders=None, input_ext='.JPG',
              target_ext='.jpg', experts='abcde'):
  """Writes an MSEC layout; returns {split: [scene, ...]}."""
  folders = folders or {'train': 'training', 'validation': 'validation',
                        'test': 'testing'}
  scenes = {'train': ['a0001-jmac_DSC1459', 'a0002'],
            'validation': ['a0003_with_underscores'],
            'test': ['a0004-x_y']}
  seed = 0
  for split, split_scenes in scenes.items():
    split_dir = root / folders[split]
    for scene in split_scenes:
      for tag in MSEC_TAGS:
        seed += 1
        write_image(split_dir / 'INPUT_IMAGES' / f'{scene}_{tag}{input_ext}',
                    seed)
      if split == 'test':
        for expert in experts:
          seed += 1
          write_image(split_dir / f'expert_{expert}_testing_set' /
                      f'{scene}{target_ext}', seed)
      else:
        seed += 1
        write_image(split_dir / 'GT_IMAGES' / f'{scene}{target_ext}', seed)
  return scenes


def test_msec_official_layout(tmp_path):
  manual = tmp_path / 'manual'
  scenes = make_msec(manual)
  data_dir = tmp_path / 'data'
  build.ensure_prepared('msec', data_dir, manual)
  for split, folder in (('train', 'training'), ('validation', 'validation'),
                        ('test', 'testing')):
    records = read_split('msec', split, data_dir)
    assert len(records) == 5 * len(scenes[split])
    seen = set()
    for record in records:
      name, scene, tag = (text(record['name']), text(record['scene']),
                          text(record['ev_tag']))
      assert ev_tags.split_scene_tag(name) == (scene, tag)
      assert record['ev'] == ev_tags.tag_to_ev(tag)
      seen.add((scene, tag))
      split_dir = manual / folder
      stored = (split_dir / 'INPUT_IMAGES' / f'{name}.JPG').read_bytes()
      assert record['input'] == stored  # Original bytes, not re-encoded.
      assert record['input'][:2] == JPEG_MAGIC
      if split == 'test':
        target = split_dir / 'expert_c_testing_set' / f'{scene}.jpg'
        assert [text(n) for n in record['other_target_names']] == [
            'expert_a', 'expert_b', 'expert_d', 'expert_e']
        for expert, data in zip('abde', record['other_targets']):
          assert data == (split_dir / f'expert_{expert}_testing_set' /
                          f'{scene}.jpg').read_bytes()
      else:
        target = split_dir / 'GT_IMAGES' / f'{scene}.jpg'
        assert list(record['other_targets']) == []
        assert list(record['other_target_names']) == []
      assert record['target'] == target.read_bytes()
      assert image_codec.decode_image(record['input']).shape == (8, 12, 3)
    assert seen == {(s, t) for s in scenes[split] for t in MSEC_TAGS}


def test_msec_renamed_folders_one_level_down(tmp_path):
  manual = tmp_path / 'manual'
  root = manual / 'MSEC copy'
  make_msec(root, folders={'train': 'train', 'validation': 'valid',
                           'test': 'Test'},
            input_ext='.jpg', target_ext='.PNG', experts='c')
  (root / 'train' / 'INPUT_IMAGES').rename(root / 'train' / 'input_images')
  build.ensure_prepared('msec', tmp_path / 'data', manual)
  sizes = {split: len(build.data_source('msec', split, tmp_path / 'data'))
           for split in ('train', 'validation', 'test')}
  assert sizes == {'train': 10, 'validation': 5, 'test': 5}
  record = build.data_source('msec', 'test', tmp_path / 'data')[0]
  assert record['target'][:4] == PNG_MAGIC  # Expert C, kept as PNG.
  assert list(record['other_targets']) == []


def test_msec_missing_target_is_named(tmp_path):
  manual = tmp_path / 'manual'
  make_msec(manual)
  (manual / 'training' / 'GT_IMAGES' / 'a0002.jpg').unlink()
  (manual / 'testing' / 'expert_b_testing_set' / 'a0004-x_y.jpg').unlink()
  with pytest.raises(FileNotFoundError) as error:
    build.ensure_prepared('msec', tmp_path / 'data', manual)
  message = str(error.value)
  assert 'training/GT_IMAGES/a0002.*' in message
  assert 'testing/expert_b_testing_set/a0004-x_y.*' in message
  assert '2 target file(s) missing' in message
  assert 'Fix:' in message
  assert not (tmp_path / 'data' / 'msec' / '1.0.0').exists()


def test_msec_rejects_untagged_input_names(tmp_path):
  manual = tmp_path / 'manual'
  make_msec(manual)
  write_image(manual / 'training' / 'INPUT_IMAGES' / 'holiday.JPG', 99)
  with pytest.raises(ValueError, match='INPUT_IMAGES/holiday.JPG'):
    build.ensure_prepared('msec', tmp_path / 'data', manual)


def make_sice(root: pathlib.Path, folders=('train', 'test'),
              tags=('low', 'over', 'mid')):
  ids = {folders[0]: ['1', '2'], folders[1]: ['3']}
  seed = 100
  for split, split_ids in ids.items():
    for image_id in split_ids:
      for tag in tags:
        seed += 1
        write_image(root / split / tag / f'{image_id}.JPG', seed)


def test_sice(tmp_path):
  manual = tmp_path / 'manual'
  make_sice(manual)
  data_dir = tmp_path / 'data'
  build.ensure_prepared('sice', data_dir, manual)
  for split, ids in (('train', ['1', '2']), ('test', ['3'])):
    records = read_split('sice', split, data_dir)
    assert sorted((text(r['name']), text(r['ev_tag'])) for r in records) == (
        sorted((i, t) for i in ids for t in ('low', 'over')))
    for record in records:
      name, tag = text(record['name']), text(record['ev_tag'])
      assert text(record['scene']) == name
      assert math.isnan(record['ev'])
      assert record['input'] == (manual / split / tag /
                                 f'{name}.JPG').read_bytes()
      assert record['target'] == (manual / split / 'mid' /
                                  f'{name}.JPG').read_bytes()


def test_sice_renamed_folders_and_missing_target(tmp_path):
  manual = tmp_path / 'manual'
  make_sice(manual, folders=('Training', 'Testing'),
            tags=('Low', 'Over', 'Mid'))
  (manual / 'Testing' / 'Mid' / '3.JPG').unlink()
  with pytest.raises(FileNotFoundError, match=r'Testing/Mid/3\.\*'):
    build.ensure_prepared('sice', tmp_path / 'data', manual)


def make_lcdp(root: pathlib.Path, validation=('valid-input', 'valid-gt')):
  folders = {('input', 'gt'): ['x_1', 'x_2'], validation: ['v_1'],
             ('test-input', 'test-gt'): ['t_1', 't_2']}
  seed = 200
  for (input_folder, target_folder), names in folders.items():
    for name in names:
      write_image(root / input_folder / f'{name}.png', seed)
      write_image(root / target_folder / f'{name}.png', seed + 1)
      seed += 2


def test_lcdp(tmp_path):
  manual = tmp_path / 'manual'
  make_lcdp(manual / 'LCDP', validation=('Valid_Input', 'VALID-GT'))
  data_dir = tmp_path / 'data'
  build.ensure_prepared('lcdp', data_dir, manual)
  expected = {'train': ['x_1', 'x_2'], 'validation': ['v_1'],
              'test': ['t_1', 't_2']}
  for split, names in expected.items():
    records = read_split('lcdp', split, data_dir)
    assert sorted(text(r['name']) for r in records) == names
    for record in records:
      assert text(record['ev_tag']) == ''
      assert math.isnan(record['ev'])
      assert text(record['scene']) == text(record['name'])
      assert record['input'][:4] == PNG_MAGIC
      assert record['input'] != record['target']
      assert image_codec.decode_image(record['target']).shape == (8, 12, 3)


def test_lcdp_missing_target(tmp_path):
  manual = tmp_path / 'manual'
  make_lcdp(manual)
  (manual / 'test-gt' / 't_2.png').unlink()
  with pytest.raises(FileNotFoundError, match=r'test-gt/t_2\.\*'):
    build.ensure_prepared('lcdp', tmp_path / 'data', manual)


def test_not_prepared_error_names_the_build_command(tmp_path):
  with pytest.raises(build.DatasetNotPreparedError) as error:
    build.data_source('msec', 'train', tmp_path / 'nothing')
  message = str(error.value)
  assert str(tmp_path / 'nothing') in message
  assert 'python -m data_prep.build --dataset=msec' in message
  assert '--manual_dir=' in message


def _make_lol(root: pathlib.Path) -> None:
  """All three LOL layouts; LOL-v2 real names its targets 'normal...'."""
  seed = 100
  for split, names in (('our485', ('2', '5')), ('eval15', ('1',))):
    for name in names:
      for folder in ('low', 'high'):
        seed += 1
        write_image(root / split / folder / f'{name}.png', seed)
  for split, count in (('Train', 2), ('Test', 1)):
    for i in range(count):
      seed += 2
      real = root / 'LOL-v2' / 'Real_captured' / split
      write_image(real / 'Low' / f'low{i:05d}.png', seed)
      write_image(real / 'Normal' / f'normal{i:05d}.png', seed + 1)
      synthetic = root / 'LOL-v2' / 'Synthetic' / split
      write_image(synthetic / 'Low' / f'r{i:03d}.png', seed)
      write_image(synthetic / 'Normal' / f'r{i:03d}.png', seed + 1)


@pytest.mark.parametrize('config,sizes,first_name,first_target', [
    ('v1', {'train': 2, 'test': 1}, '2', 'our485/high/2.png'),
    ('v2_real', {'train': 2, 'test': 1}, 'low00000',
     'LOL-v2/Real_captured/Train/Normal/normal00000.png'),
    ('v2_synthetic', {'train': 2, 'test': 1}, 'r000',
     'LOL-v2/Synthetic/Train/Normal/r000.png'),
])
def test_lol_layouts(tmp_path, config, sizes, first_name, first_target):
  manual = tmp_path / 'manual'
  _make_lol(manual)
  data_dir = tmp_path / 'data'
  build.ensure_prepared(f'lol/{config}', data_dir, manual)
  for split, size in sizes.items():
    records = read_split(f'lol/{config}', split, data_dir)
    assert len(records) == size
    assert all(text(r['ev_tag']) == 'low' and math.isnan(r['ev'])
               for r in records)
  record = {text(r['name']): r for r in read_split(f'lol/{config}', 'train',
                                                   data_dir)}[first_name]
  assert record['target'] == (manual / first_target).read_bytes()


def test_lol_missing_high_image_is_named(tmp_path):
  manual = tmp_path / 'manual'
  _make_lol(manual)
  (manual / 'our485' / 'high' / '5.png').unlink()
  with pytest.raises(FileNotFoundError, match=r'our485/high/5\.\*'):
    build.ensure_prepared('lol/v1', tmp_path / 'data', manual)
