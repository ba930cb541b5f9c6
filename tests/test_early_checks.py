"""Recipes that fail early and never read the wrong data (issue 22, 2 and 3).

- A dataset records the source it was built from (`data_prep/source_record.py`):
  asking for the same name in the same data_dir with another manual_dir is
  refused at once, naming both, instead of silently reading the first.
- `~` works in every path-valued flag and config field.
- The checkpoint, reference, manual_dir and outputs_dir are checked before
  a dataset is built (the data_dir stays untouched).
"""

import json
import shutil

from absl import app
import numpy as np
import pytest

import checkpoint_writer  # tests/ is on sys.path.
import test_inference
from data_prep import build
from data_prep import image_codec
from data_prep import source_record
from expcorr_jax import evaluate


def _raw_folder(raw, folder, scenes):
  folder.mkdir(parents=True)
  for scene in scenes:
    shutil.copyfile(raw, folder / f'{scene}.kdc')
  return folder


def test_a_dataset_built_from_another_source_is_refused(shared_fixture,
                                                       tmp_path):
  raw = shared_fixture('raw/kodak_dc50.kdc')
  first = _raw_folder(raw, tmp_path / 'first', ('one', 'two', 'three'))
  second = _raw_folder(raw, tmp_path / 'second', ('four', 'five', 'six'))
  data_dir = tmp_path / 'tfds'
  build.ensure_prepared('multi_exposure/raw', data_dir, first)
  version = build.get_builder('multi_exposure/raw', data_dir).data_dir
  recorded = source_record.recorded(version)
  assert recorded.manual_dir == str(first) and recorded.files == 3

  with pytest.raises(source_record.SourceMismatchError) as error:
    build.ensure_prepared('multi_exposure/raw', data_dir, second)
  message = str(error.value)
  assert f'built from {first} (3 files' in message
  assert f'not from the manual_dir given now, {second} (3 files' in message
  assert (f'--dataset=multi_exposure/raw --data_dir=ANOTHER_DATA_DIR '
          f'--manual_dir={second}') in message

  # The same source, moved, is the same source; no manual_dir reads what is
  # there; the other source builds beside it in a data_dir of its own.
  moved = tmp_path / 'moved'
  shutil.copytree(first, moved)
  build.ensure_prepared('multi_exposure/raw', data_dir, moved)
  build.ensure_prepared('multi_exposure/raw', data_dir, None)
  build.ensure_prepared('multi_exposure/raw', tmp_path / 'tfds2', second)
  # A file added to the source changes it.
  shutil.copyfile(raw, first / 'seven.kdc')
  with pytest.raises(source_record.SourceMismatchError, match='4 files'):
    build.ensure_prepared('multi_exposure/raw', data_dir, first)


@pytest.fixture
def home(tmp_path, monkeypatch):
  """A home folder for '~' (HOME), holding a checkpoint and a reference."""
  folder = tmp_path / 'home'
  folder.mkdir()
  monkeypatch.setenv('HOME', str(folder))
  checkpoint_writer.write_params_checkpoint(
      folder / 'run', test_inference.random_uec_params(),
      {'model': 'uec', 'model_encoder_height': test_inference.ENCODER_HEIGHT},
      step=3)
  image_codec.write_png(folder / 'reference.png',
                        np.full((16, 16, 3), 128, np.uint8))
  return folder


def _evaluate(*args: str) -> int:
  return evaluate.run(['--config=configs/uec.py', '--noprogress',
                       '--config.eval.max_images=1',
                       "--config.eval.protocols=('full',)", *args])


def test_tilde_works_in_every_path_flag_and_field(home, sample_data_dir):
  assert _evaluate('--checkpoint=~/run', '--output_dir=~/eval',
                   '--config.eval.reference=~/reference.png',
                   f'--config.data.data_dir={sample_data_dir}') == 0
  report = json.loads(
      (home / 'eval' / 'eval_multi_exposure-sample_validation.json')
      .read_text())
  assert report['checkpoint'] == str(home / 'run')
  assert report['results']['full']['all']['count'] == 1


@pytest.mark.parametrize('flag, message', [
    ('--checkpoint=~/no_such_run', 'No checkpoint at'),
    ('--config.eval.reference=~/no_such.png',
     r'--config.eval.reference=~/no_such.png: no such image file'),
    ('--config.data.manual_dir=~/no_such_folder',
     'manual_dir .*no_such_folder is not a folder'),
])
def test_paths_are_checked_before_the_dataset_is_built(home, flag, message):
  data_dir = home / 'tfds'  # Unbuilt: a check after the build would build.
  args = ['--checkpoint=~/run', '--output_dir=~/eval',
          '--config.eval.reference=~/reference.png',
          f'--config.data.data_dir={data_dir}']
  key = flag.split('=')[0]
  args = [arg for arg in args if not arg.startswith(key + '=')] + [flag]
  if 'manual_dir' in flag:
    args.append('--config.data.name=multi_exposure/raw')
  with pytest.raises(app.UsageError, match=message):
    _evaluate(*args)
  assert not data_dir.exists()


def test_a_missing_outputs_dir_is_named_before_the_build(home):
  data_dir = home / 'tfds'
  with pytest.raises(app.UsageError, match='No folder .*no_outputs'):
    _evaluate('--outputs_dir=~/no_outputs', '--output_dir=~/eval',
              '--config.eval.reference=~/reference.png',
              f'--config.data.data_dir={data_dir}')
  assert not data_dir.exists()
