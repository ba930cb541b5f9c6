"""UEC's training transforms: the project's crops and the released loaders'.

`configs/uec.py:transform=...`: 'crop' (random 448x448 crops, the
default and this project's choice), 'whole' (whole images at batch 1, the
released MSEC loader) and 'resize448' (frames resized to 448x448, aspect
ignored, the released radiometry loader).
"""

import pathlib

import numpy as np
import pytest

from data_prep import build
from expcorr_jax import config_args
from expcorr_jax import input_pipeline
from expcorr_jax import train
from expcorr_jax.tasks import uec as uec_task

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(arg):
  return config_args.load_config(REPO_ROOT / 'configs' / 'uec.py', arg)


def test_transform_arguments_set_the_released_loaders():
  crop, whole, resized = (_config(f'transform={name}')
                          for name in ('crop', 'whole', 'resize448'))
  assert (crop.data.crop_size, crop.data.resize_to) == (448, None)
  assert (whole.data.crop_size, whole.data.resize_to,
          whole.batch_size) == (None, None, 1)
  assert (resized.data.crop_size, resized.data.resize_to) == (None, 448)
  assert _config(None).to_dict() == crop.to_dict()  # 'crop' is the default.
  with pytest.raises(ValueError, match='choose crop .* whole .* resize448'):
    _config('transform=square')


def test_resized_frames_are_the_bilinear_resize_of_whole_frames(
    sample_data_dir):
  source = uec_task.IndexedSource(build.data_source(
      'multi_exposure/sample', 'train', sample_data_dir))
  resized = uec_task.UECSample(source, crop_size=None, flip=False,
                               resize_to=40)
  plain = uec_task.UECSample(source, crop_size=None, flip=False)
  for index in range(3):
    rng_a, rng_b = (np.random.default_rng(index) for _ in range(2))
    sample = resized.random_map(source[index], rng_a)
    whole = plain.random_map(source[index], rng_b)
    # The same frames were drawn (resizing draws no random number)...
    for key in ('input_ev', 'target_ev', 'ref_lo_ev', 'ref_hi_ev'):
      assert sample[key] == whole[key]
    # ...and each is the 40x40 bilinear resize of the whole frame.
    for key in ('input', 'target', 'ref_lo', 'ref_hi'):
      assert sample[key].shape == (40, 40, 3)
      np.testing.assert_array_equal(
          sample[key], input_pipeline.resize_bilinear(whole[key], 40, 40))


def test_a_crop_larger_than_the_resize_is_refused():
  config = _config('transform=resize448')
  config.data.crop_size = 512
  with pytest.raises(ValueError, match='resize_to=448 must be at least 16 '
                     'and at least crop_size=512'):
    train.validate_config(config)
